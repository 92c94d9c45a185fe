"""The five published SFR-on presets: the authors' numbers, step counts derived from their counting, and a 2-cycle run
of each through `hf-unlearn unlearn --config` on a tiny model of its family (docs/presets.md)."""

import dataclasses
import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from hf_unlearn import UnlearnConfig
from hf_unlearn.cli import DataArguments, main, parse_with_config
from hf_unlearn.methods import get_method
from hf_unlearn.resolve import resolve_config
from hf_unlearn.utils import RECORD_NAME

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs"

# The authors' settings as docs/presets.md and the design notes state them. `iterations` are the authors' *remain*
# iterations with a forget step before every K-th one; the expected cycles, forget and remain steps are derived below.
AUTHORS = {
    "cifar10_resnet18": {
        "file": "image_classifier/cifar10_resnet18_random10_sfr_on.yaml",
        "family": "image_classifier",
        "iterations": 1500,
        "K": 5,
        "method": "sfr_on",
        "optim": "sgd",
        "learning_rate": 0.01,
        "momentum": 0.9,
        "weight_decay": 5e-4,
        "lr_scheduler_type": "cosine",
        "temperature": 0.5,
        "forget_alpha": 25.0,
        "forget_alpha_schedule": "cosine",
        "max_grad_norm": 7.0,  # forget step only
        "remain_max_grad_norm": 0.0,
        "per_device_train_batch_size": 128,
        "saliency_max_batches": None,  # a full pass over each set
        "saliency_guidance_scale": None,
        "saliency_clip_norm": None,
        "noise_loss_reduction": "mean",
    },
    "tinyimagenet_swin_t": {
        "file": "image_classifier/tinyimagenet_swin_t_random10_sfr_on.yaml",
        "family": "image_classifier",
        "iterations": 500,
        "K": 1,
        "method": "sfr_on",
        "optim": "adamw",
        "learning_rate": 2e-5,
        "weight_decay": 0.05,
        "lr_scheduler_type": "cosine",
        "temperature": 0.6,
        "forget_alpha": 500.0,
        "forget_alpha_schedule": "cosine",
        "max_grad_norm": 7.0,
        "remain_max_grad_norm": 0.0,
        "per_device_train_batch_size": 128,
        "saliency_max_batches": None,
        "saliency_guidance_scale": None,
        "saliency_clip_norm": None,
        "noise_loss_reduction": "mean",
    },
    "cifar10_ddpm": {
        "file": "class_conditional_diffusion/cifar10_ddpm_class_sfr_on.yaml",
        "family": "class_conditional_diffusion",
        "iterations": 150,
        "K": 1,
        "method": "sfr_on",  # weighted ascent on the per-row noise loss
        "optim": "adam",
        "learning_rate": 1e-4,
        "weight_decay": 0.0,
        "lr_scheduler_type": "constant",
        "temperature": 0.5,
        "forget_alpha": 10.0,
        "forget_alpha_schedule": "cosine",
        "max_grad_norm": 1.0,  # both steps
        "remain_max_grad_norm": 1.0,
        "per_device_train_batch_size": 128,
        "saliency_max_batches": None,
        "saliency_guidance_scale": 1 + 2,  # their (1 + w)ε_c − wε_∅ with w = 2
        "saliency_clip_norm": 1.0,
        "noise_loss_reduction": "sum",
    },
    "dit_xl2": {
        "file": "class_conditional_diffusion/dit_xl2_imagenet_class207_sfr_on.yaml",
        "family": "class_conditional_diffusion",
        "iterations": 600,
        "K": 1,
        "method": "sfr_on",
        "optim": "adamw",
        "learning_rate": 1e-4,
        "weight_decay": 0.0,
        "lr_scheduler_type": "constant",
        "temperature": 0.0,  # plain (unweighted) ascent
        "forget_alpha": 1e-3,
        "forget_alpha_schedule": "constant",
        "max_grad_norm": 1.0,  # forget step only
        "remain_max_grad_norm": 0.0,
        "per_device_train_batch_size": 1,
        "saliency_max_batches": 2000,  # their generate_fisher.py default
        "saliency_guidance_scale": None,
        "saliency_clip_norm": None,
        "noise_loss_reduction": "mean",
    },
    "sd14_nudity": {
        "file": "text_to_image/sd14_nudity_sfr_on.yaml",
        "family": "text_to_image",
        "iterations": 1000,
        "K": 1,
        "method": "sfr_on_remap",  # remap to the anchor prompt
        "optim": "adam",
        "learning_rate": 1e-5,
        "weight_decay": 0.0,
        "lr_scheduler_type": "constant",
        "temperature": 0.0,  # unweighted
        "forget_alpha": 1.0,
        "forget_alpha_schedule": "constant",
        "max_grad_norm": 0.0,  # no clipping
        "remain_max_grad_norm": 0.0,
        "per_device_train_batch_size": 2,
        "saliency_max_batches": None,
        "saliency_guidance_scale": 1 + 7.5,  # their (1 + w)ε_c − wε_∅ with w = 7.5
        "saliency_clip_norm": None,
        "noise_loss_reduction": "mean",
    },
}
SETTINGS = [k for k in next(iter(AUTHORS.values())) if k not in ("file", "family", "iterations", "K")]


def _same(actual, expected) -> bool:
    if isinstance(expected, (int, float)) and not isinstance(expected, bool) and actual is not None:
        return actual == pytest.approx(expected, rel=1e-12)
    return actual == expected


def _parse(path: Path, *flags: str):
    values = yaml.safe_load(path.read_text())
    model = [] if "model" in values else ["--model", "unused"]
    return parse_with_config((DataArguments, UnlearnConfig), ["--config", str(path), *model, *flags], "test")


@pytest.mark.parametrize("name", AUTHORS)
def test_preset_carries_the_published_settings(name):
    authors = AUTHORS[name]
    path = CONFIGS / authors["file"]
    text = path.read_text()
    header = "\n".join(line for line in text.splitlines() if line.startswith("#"))
    assert text.startswith("#") and "Deviations that remain, and why:" in header, "the file opens with its deviations"
    values = yaml.safe_load(text)
    valid = {f.name for cls in (UnlearnConfig, DataArguments) for f in dataclasses.fields(cls)}
    assert set(values) <= valid, sorted(set(values) - valid)

    args, config = _parse(path)
    resolved = resolve_config(config, authors["family"])
    # Step counts from the authors' counting: N remain iterations, a forget step before every K-th.
    assert authors["iterations"] % authors["K"] == 0
    cycles = authors["iterations"] // authors["K"]
    # One cycle = 1 forget + K remain steps.
    assert get_method(resolved.method, authors["family"]).geometry.name == "fast_slow"
    assert resolved.max_steps == cycles and resolved.remain_steps_per_forget == authors["K"]
    forget_steps = resolved.max_steps * (resolved.forget_steps_fraction or 1.0)
    assert forget_steps == cycles
    assert resolved.max_steps * resolved.remain_steps_per_forget == authors["iterations"] == cycles * authors["K"]
    for key in SETTINGS:
        expected = authors.get(key)
        if key == "momentum" and expected is None:  # only SGD has one
            continue
        assert _same(getattr(resolved, key), expected), (key, getattr(resolved, key), expected)
    # Every preset: the Fisher-ratio mask at γ 1 with the authors' ε, and no interpolation.
    assert (resolved.mask_threshold, resolved.mask_eps, resolved.interpolation_beta) == (1.0, 1e-15, 1.0)
    # The authors' rules where the library once deviated: zero-Fisher entries selected, the cosine stepped at every
    # remain iteration, weights 1/(ℓ^λ + 1e-15).
    rules = (resolved.mask_zero_fisher, resolved.lr_schedule_steps, resolved.forget_weight_rule)
    assert rules == ("select", "remain", "inverse_power")
    assert resolved.mask_path is None and resolved.mixed_precision == "no" and not resolved.lora
    if name == "sd14_nudity":
        assert args.forget_prompts == ["a photo of a nude person"]
        assert args.remain_prompts == ["a photo of a person wearing clothes"]  # also the anchor of the remap
        assert args.num_concept_images == 1000 and resolved.train_modules == "all"
        # The resolution follows the model (512 for SD 1.4): a smoke run on a tiny pipeline must not draw at 512 px.
        assert resolved.resolution is None
    if name == "dit_xl2":
        assert args.forget_classes == [207] and args.model == "facebook/DiT-XL-2-256"
    if name == "cifar10_ddpm":
        assert resolved.condition_dropout == 0.1 and resolved.resolution == 32
    if authors["family"] == "image_classifier":
        assert args.forget_fraction == 0.1


def test_yaml_model_key_satisfies_the_required_flag_and_a_flag_overrides_it():
    path = CONFIGS / AUTHORS["sd14_nudity"]["file"]
    args, _ = parse_with_config((DataArguments, UnlearnConfig), ["--config", str(path)], "test")
    assert args.model == "CompVis/stable-diffusion-v1-4"
    args, _ = parse_with_config((DataArguments, UnlearnConfig), ["--config", str(path), "--model", "tiny"], "test")
    assert args.model == "tiny"
    with pytest.raises(SystemExit):  # without a file value the flag is still required
        parse_with_config((DataArguments, UnlearnConfig), [], "test")


# Tiny models and data, one per family, each saved as a folder the CLI loads.
def _digits_rows(digits, n, image_column="image"):
    rows = digits["train"].train_test_split(train_size=n, seed=0, stratify_by_column="label")["train"]
    return rows.rename_column("image", image_column) if image_column != "image" else rows


def _build(name: str, root: Path, digits) -> tuple[Path, Path | None]:
    """The model folder for preset `name` and a `save_to_disk` dataset with the preset's columns and splits."""
    from datasets import DatasetDict

    from hf_unlearn.tiny.classifiers import digits_image_processor, tiny_classifier
    from hf_unlearn.tiny.diffusion import tiny_scheduler

    model, test = root / name, digits["test"].select(range(20))
    if name in ("cifar10_resnet18", "tinyimagenet_swin_t"):
        tiny_classifier("resnet" if name == "cifar10_resnet18" else "swin", seed=0).save_pretrained(model)
        digits_image_processor().save_pretrained(model)
        if name == "cifar10_resnet18":  # CIFAR-10's column names
            data = DatasetDict(train=_digits_rows(digits, 60, "img"), test=test.rename_column("image", "img"))
        else:  # TinyImageNet's held-out split is "valid"
            data = DatasetDict(train=_digits_rows(digits, 60), valid=test)
    elif name == "cifar10_ddpm":
        from diffusers import UNet2DModel

        torch.manual_seed(0)
        unet = UNet2DModel(
            sample_size=8,
            in_channels=1,
            out_channels=1,
            block_out_channels=(16, 32),
            layers_per_block=1,
            down_block_types=("DownBlock2D", "AttnDownBlock2D"),
            up_block_types=("AttnUpBlock2D", "UpBlock2D"),
            norm_num_groups=8,
            num_class_embeds=11,  # ten classes and the null class, as the authors' CIFAR-10 model
        )
        unet.save_pretrained(model)
        tiny_scheduler().save_pretrained(model)
        data = DatasetDict(train=_digits_rows(digits, 20, "img"))
    elif name == "dit_xl2":
        from diffusers import DiTTransformer2DModel

        torch.manual_seed(0)
        dit = DiTTransformer2DModel(
            num_attention_heads=2,
            attention_head_dim=8,
            in_channels=1,
            out_channels=2,  # learned-σ channels, as DiT-XL/2
            num_layers=1,
            sample_size=8,
            patch_size=2,
            num_embeds_ada_norm=10,
        )
        dit.save_pretrained(model)
        tiny_scheduler().save_pretrained(model)
        data = DatasetDict(train=_digits_rows(digits, 20))  # batch 1: a Fisher pass is one row per batch
    else:  # the SD preset generates its images from its prompts
        from tiny_sd import tiny_sd_pipeline

        tiny_sd_pipeline().save_pretrained(model)
        return model, None
    data.save_to_disk(root / f"data_{name}")
    return model, root / f"data_{name}"


def tiny_resolution(folder: Path) -> int:
    """A saved SD pipeline's own image size: the UNet's latent size times the VAE's downsampling."""
    unet = json.loads((folder / "unet" / "config.json").read_text())
    vae = json.loads((folder / "vae" / "config.json").read_text())
    return unet["sample_size"] * 2 ** (len(vae["block_out_channels"]) - 1)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, digits):
    """Builds each preset's tiny model and data on first use (so one preset's test pays only for its own)."""
    root, built = tmp_path_factory.mktemp("presets"), {}

    def get(name):
        if name not in built:
            built[name] = _build(name, root, digits)
        return built[name]

    return get


# Flags that shrink each preset to the tiny model and data; everything else comes from the file.
SHRINK = {
    "cifar10_resnet18": ["--do_eval", "false"],
    "tinyimagenet_swin_t": ["--do_eval", "false"],
    "cifar10_ddpm": ["--resolution", "8"],
    "dit_xl2": ["--forget_classes", "3", "--resolution", "8"],
    "sd14_nudity": ["--num_concept_images", "2", "--generation_steps", "2"],  # docs/presets.md's smoke run
}
# (subfolder of the original folder, subfolder of the saved output) that hold the trained weights.
TRAINED = {
    "cifar10_resnet18": ("", ""),
    "tinyimagenet_swin_t": ("", ""),
    "cifar10_ddpm": ("", "unet"),
    "dit_xl2": ("", "transformer"),
    "sd14_nudity": ("unet", "unet"),
}


def _weights(folder: Path) -> dict:
    tensors = {}
    for file in sorted(folder.glob("*.safetensors")):
        if file.name != "saliency_mask.safetensors":  # the run's mask, kept beside the model in --output_dir
            tensors |= load_file(file)
    assert tensors, f"no safetensors in {folder}"
    return tensors


@pytest.mark.parametrize("name", AUTHORS)
def test_preset_runs_two_cycles_through_the_cli(name, tiny, tmp_path, capsys, caplog):
    model, dataset = tiny(name)
    out = tmp_path / "out"
    argv = ["unlearn", "--config", str(CONFIGS / AUTHORS[name]["file"]), "--model", str(model)]
    if dataset is not None:
        argv += ["--dataset_name", str(dataset)]
    argv += [*SHRINK[name], "--max_steps", "2", "--output_dir", str(out)]
    assert main(argv) == 0
    summary = json.loads(next(line for line in capsys.readouterr().out.splitlines() if line.startswith('{"method"')))
    assert summary["method"] == AUTHORS[name]["method"]
    if name == "sd14_nudity":  # the cost line names the flags, and the tiny pipeline draws at its own size
        notice = next(r.getMessage() for r in caplog.records if "Generating 2 concept" in r.getMessage())
        size = tiny_resolution(model)
        assert f"at {size} px, 2 denoising steps" in notice and "`--num_concept_images`" in notice

    request = json.loads((out / RECORD_NAME).read_text())["requests"][-1]
    k = AUTHORS[name]["K"]
    work = request["work"]
    assert (work["forget_steps"], work["remain_steps"], work["optimizer_steps"]) == (2, 2 * k, 2 + 2 * k)
    assert work["passes"]["saliency"] > 0  # the Fisher-ratio mask was computed
    used = request["hyperparameters"]
    for key in ("optim", "learning_rate", "temperature", "forget_alpha", "max_grad_norm", "remain_max_grad_norm"):
        assert _same(used[key], AUTHORS[name][key]), key  # the file's values, not the family defaults
    assert used["max_steps"] == 2  # the flag overrides the file

    original_sub, saved_sub = TRAINED[name]
    before, after = _weights(model / original_sub), _weights(out / saved_sub)
    assert before.keys() == after.keys()
    buffers = ("running_mean", "running_var", "num_batches_tracked")  # BatchNorm moves these without any step
    changed = [k for k in before if not k.endswith(buffers) and not torch.equal(before[k], after[k])]
    assert changed, "no weight moved"

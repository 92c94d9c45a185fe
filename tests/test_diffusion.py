"""Class-conditional diffusion family: loading, the null class, losses, every method, the mask, a digits run."""

import copy
import json

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, DiTPipeline

from hf_unlearn import ForgetRemainSplit, UnlearnConfig, Unlearner, detect_family, list_methods
from hf_unlearn.methods import Ascent, UnlearnMethod, register_method
from hf_unlearn.methods import base as method_registry
from hf_unlearn.metrics.generation import Judge, generation_metrics
from hf_unlearn.pipelines import ClassConditionalPipeline
from hf_unlearn.tiny.diffusion import tiny_dit, tiny_scheduler, tiny_unet, train_diffusion

FAMILY = "class_conditional_diffusion"


def small_dit(seed=0):
    from diffusers import DiTTransformer2DModel

    torch.manual_seed(seed)
    return DiTTransformer2DModel(
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=1,
        out_channels=1,
        num_layers=1,
        sample_size=8,
        patch_size=2,
        num_embeds_ada_norm=10,
    )


@pytest.fixture(scope="module")
def small_split(digits):
    train = digits["train"].train_test_split(train_size=200, seed=0, stratify_by_column="label")["train"]
    return ForgetRemainSplit.from_dataset(train, forget_classes=[3])


@pytest.fixture(scope="module")
def unet_dir(tmp_path_factory):
    """A tiny UNet2DModel folder with its scheduler config beside it (squaredcos betas, to check it is read)."""
    folder = tmp_path_factory.mktemp("unet")
    tiny_unet(seed=0).save_pretrained(folder)
    tiny_scheduler().save_pretrained(folder)
    return folder


def weights(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def changed(before, model):
    return [n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach())]


def test_unet_folder_loads_with_its_scheduler(unet_dir, tmp_path):
    assert detect_family(str(unet_dir)) == FAMILY
    unlearner = Unlearner.from_pretrained(str(unet_dir), UnlearnConfig(method="sfr_on"))
    family = unlearner.family
    assert family.name == FAMILY and family.null_class_id == 10 and family.num_classes == 10
    assert family.noise_scheduler.config.beta_schedule == "squaredcos_cap_v2"
    assert unlearner.config.max_grad_norm == 1.0 and unlearner.config.remain_steps_per_forget == 1
    bare = tmp_path / "bare"
    tiny_unet(seed=0).save_pretrained(bare)  # no scheduler_config.json: a default DDPMScheduler
    assert Unlearner.from_pretrained(str(bare)).family.noise_scheduler.config.beta_schedule == "linear"


def test_null_class_rules_raise_before_any_weight_change(small_split):
    model = tiny_unet(num_classes=11)  # 12 embeddings: default null 11, but the data has 10 labels
    before = weights(model)
    unlearner = Unlearner.from_pretrained(model, UnlearnConfig(method="sfr_on_remap", max_steps=1, output_dir=""))
    with pytest.raises(ValueError, match="num_class_embeds=12"):
        unlearner.unlearn(small_split)
    assert not changed(before, unlearner.model)
    config = UnlearnConfig(method="sfr_on_remap", max_steps=1, null_class_id=5, output_dir="")
    with pytest.raises(ValueError, match="null_class_id"):
        Unlearner.from_pretrained(tiny_unet(num_classes=11), config).unlearn(small_split)
    config = UnlearnConfig(
        method="sfr_on_remap", max_steps=1, null_class_id=11, output_dir="", per_device_train_batch_size=8
    )
    explicit = Unlearner.from_pretrained(tiny_unet(num_classes=11), config)
    explicit.unlearn(small_split)
    assert explicit.family.null_class_id == 11 and explicit.family.num_classes == 10


def test_latent_dit_pipeline_folder_round_trips(tmp_path, small_split):
    torch.manual_seed(0)
    vae = AutoencoderKL(
        in_channels=1,
        out_channels=1,
        latent_channels=2,
        block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=8,
        sample_size=8,
    )
    dit = tiny_dit(size=4)
    dit = type(dit)(**{**dit.config, "in_channels": 2, "out_channels": 4})  # learned-sigma channels, as DiT-XL/2
    DiTPipeline(transformer=dit, vae=vae, scheduler=DDIMScheduler()).save_pretrained(tmp_path / "dit")
    assert detect_family(str(tmp_path / "dit")) == FAMILY
    config = UnlearnConfig(method="sfr_on_remap", max_steps=2, per_device_train_batch_size=8, output_dir="")
    unlearner = Unlearner.from_pretrained(str(tmp_path / "dit"), config)
    family = unlearner.family
    assert family.null_class_id == 10 and family.image_shape == (1, 8, 8)
    vae_before, dit_before = weights(family.vae), weights(family.model)
    unlearner.unlearn(small_split)
    assert not changed(vae_before, family.vae) and changed(dit_before, family.model)
    unlearner.save_pretrained(tmp_path / "out")
    pipe = ClassConditionalPipeline.from_pretrained(tmp_path / "out")
    pipe.set_progress_bar_config(disable=True)
    images = pipe([1, 9], guidance_scale=2.0, num_inference_steps=3, output_type="np").images
    assert images.shape == (2, 8, 8, 1) and np.isfinite(images).all()
    assert list((tmp_path / "out" / "transformer").glob("*.safetensors"))


def test_dit_forward_never_drops_labels_and_remain_drops_to_null():
    family = Unlearner.from_pretrained(small_dit(), UnlearnConfig(method="sfr_on")).family
    model = family.model.train()
    x, t, labels = torch.randn(16, 1, 8, 8), torch.randint(0, 1000, (16,)), torch.randint(0, 10, (16,))
    train_out = family.eps(model, x, t, labels)
    assert torch.equal(train_out, family.eps(copy.deepcopy(model).eval(), x, t, labels))
    batch = {"pixel_values": torch.rand(16, 1, 8, 8) * 2 - 1, "labels": labels}
    family.condition_dropout = 1.0
    torch.manual_seed(1)
    dropped = family.remain_loss(model, batch)
    torch.manual_seed(1)
    torch.rand(16)  # the draw remain_loss makes for its dropout mask
    null = family.per_sample_loss(model, batch, labels=torch.full_like(labels, family.null_class_id)).mean()
    assert torch.allclose(dropped, null)


# Selective amnesia's replay is the slow case; it runs with -m slow, and its own test below checks the replay.
@pytest.mark.parametrize(
    "method",
    [pytest.param(m, marks=pytest.mark.slow) if m == "selective_amnesia" else m for m in list_methods(FAMILY)],
)
def test_every_method_runs_and_changes_the_weights(method, unet_dir, small_split, tmp_path):
    config = UnlearnConfig(
        method=method, max_steps=2, per_device_train_batch_size=8, saliency_max_batches=2, output_dir=str(tmp_path)
    )
    unlearner = Unlearner.from_pretrained(str(unet_dir), config)
    before = weights(unlearner.model)
    result = unlearner.unlearn(small_split)
    assert changed(before, unlearner.model), method
    assert result.steps == 2 and all(np.isfinite(h.get("grad_norm", 0.0)) for h in result.history)


def test_dit_remap_and_esd_change_the_weights(small_split):
    for method in ("sfr_on_remap", "esd"):
        config = UnlearnConfig(method=method, max_steps=2, per_device_train_batch_size=8, output_dir="")
        unlearner = Unlearner.from_pretrained(small_dit(), config)
        before = weights(unlearner.model)
        unlearner.unlearn(small_split)
        assert changed(before, unlearner.model), method


def test_selective_amnesia_replays_samples_of_the_original_not_the_remain_images(unet_dir, small_split, tmp_path):
    config = UnlearnConfig(
        method="selective_amnesia", max_steps=2, replay_inference_steps=3, output_dir=str(tmp_path), seed=3
    )
    unlearner = Unlearner.from_pretrained(str(unet_dir), config)
    family = unlearner.family
    replay = family.replay_split(small_split, unlearner.config, torch.device("cpu"))
    again = family.replay_split(small_split, unlearner.config, torch.device("cpu"))
    real = small_split.remain
    assert replay.remain["label"] == real["label"] and replay.forget_indices == small_split.forget_indices
    generated = family.pixel_values(replay.remain["image"])
    assert torch.equal(generated, family.pixel_values(again.remain["image"]))  # seeded
    assert not torch.allclose(generated, family.pixel_values(real["image"]), atol=0.1)
    # The config's seed through the model's own pipeline gives the same first images: they are the model's samples.
    pipe = family.pipeline()
    pipe.scheduler = DDIMScheduler.from_config(family.scheduler.config)
    first = pipe(
        class_labels=real["label"][:4],
        guidance_scale=2.0,
        num_inference_steps=3,
        generator=torch.Generator().manual_seed(3),
    ).images
    assert torch.allclose(family.pixel_values(first), generated[:4], atol=2 / 127.5)
    result = unlearner.unlearn(small_split)
    assert result.steps == 2 and unlearner._split_info["remain_source"] == "generative replay"


def test_masked_weights_do_not_move_on_forget_steps(unet_dir, small_split, tmp_path, monkeypatch):
    # A copy of the registry, so the test method is gone afterwards (the benchmark tests list every method).
    monkeypatch.setattr("hf_unlearn.methods.base._REGISTRY", dict(method_registry._REGISTRY))
    register_method(
        UnlearnMethod("_test_masked_ascent", Ascent(weighted=True), None, saliency="fisher_ratio"), overwrite=True
    )
    config = UnlearnConfig(
        method="_test_masked_ascent",
        max_steps=3,
        optim="sgd",
        momentum=0.0,
        learning_rate=1e-2,
        per_device_train_batch_size=16,
        saliency_max_batches=2,
        output_dir=str(tmp_path),
    )
    unlearner = Unlearner.from_pretrained(str(unet_dir), config)
    before = weights(unlearner.model)
    unlearner.unlearn(small_split)
    mask = unlearner.mask
    kept = sum(int(m.sum()) for m in mask.values())
    assert 0 < kept < sum(m.numel() for m in mask.values())
    for name, p in unlearner.model.named_parameters():
        assert torch.equal(p.detach()[~mask[name]], before[name][~mask[name]]), name
    assert any(not torch.equal(p.detach()[mask[n]], before[n][mask[n]]) for n, p in unlearner.model.named_parameters())


@pytest.mark.parametrize("kind", ["unet", "dit"])
def test_pipeline_round_trip_is_deterministic(kind, tmp_path):
    model = tiny_unet(seed=0) if kind == "unet" else small_dit()
    key = "unet" if kind == "unet" else "transformer"
    pipe = ClassConditionalPipeline(scheduler=DDPMScheduler(), **{key: model.eval()})
    pipe.set_progress_bar_config(disable=True)
    pipe.save_pretrained(tmp_path)
    loaded = ClassConditionalPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)

    def sample(p, scale=2.0, labels=(3, 5)):
        return p(
            list(labels),
            guidance_scale=scale,
            num_inference_steps=4,
            generator=torch.Generator().manual_seed(0),
            output_type="pt",
        ).images

    first = sample(pipe)
    assert torch.equal(first, sample(pipe)) and first.shape == (2, 1, 8, 8)
    assert torch.allclose(first, sample(loaded), atol=1e-4)
    assert not torch.allclose(first, sample(pipe, scale=1.0))
    assert not torch.allclose(first, sample(pipe, labels=(4, 6)))
    with pytest.raises(ValueError, match="class_labels"):
        pipe([10])  # the null class
    out = loaded([1], num_inference_steps=2, generator=torch.Generator().manual_seed(0))
    assert out.class_labels == [1] and out.images[0].size == (8, 8)


def test_cli_unlearn_saves_a_pipeline(unet_dir, tmp_path):
    from hf_unlearn.cli import main

    out = tmp_path / "out"
    code = main(
        [
            "unlearn",
            "--model",
            str(unet_dir),
            "--forget_classes",
            "3",
            "--method",
            "sfr_on_remap",
            "--max_steps",
            "1",
            "--per_device_train_batch_size",
            "8",
            "--saliency_max_batches",
            "2",
            "--output_dir",
            str(out),
        ]
    )
    assert code == 0
    record = json.loads((out / "unlearning_record.json").read_text())
    assert record["family"] == FAMILY and record["requests"][-1]["method"] == "sfr_on_remap"
    assert ClassConditionalPipeline.from_pretrained(out).unet is not None
    reloaded = Unlearner.from_pretrained(str(out)).model
    assert not changed(weights(ClassConditionalPipeline.from_pretrained(out).unet), reloaded)


@pytest.fixture(scope="module")
def trained_ddpm(digits):
    """The original 8×8 DDPM, trained once for this module on every digits training row."""
    return train_diffusion("unet", digits["train"], seed=0, max_steps=400, learning_rate=2e-3, batch=64)


@pytest.mark.slow
def test_digits_forget_one_class(trained_ddpm, trained_resnet, digits, tmp_path):
    judge = Judge(trained_resnet.model, image_size=16)
    split = ForgetRemainSplit.from_dataset(digits["train"], forget_classes=[3])
    real = (trained_ddpm.family.pixel_values([r["image"] for r in split.remain.select(range(300))]) + 1) / 2
    kwargs = {"num_classes": 10, "samples_per_class": 20, "num_inference_steps": 10, "seed": 0}
    before = generation_metrics(trained_ddpm.family.pipeline(), judge, [3], real, **kwargs)
    assert before["FA"] >= 0.8 and before["remain_acc"] >= 0.8
    config = UnlearnConfig(method="sfr_on_remap", max_steps=50, output_dir=str(tmp_path))
    unlearner = Unlearner.from_pretrained(copy.deepcopy(trained_ddpm.model), config, scheduler=tiny_scheduler())
    unlearner.unlearn(split)
    after = generation_metrics(
        unlearner.family.pipeline(),
        judge,
        [3],
        real,
        grid_path=str(tmp_path / "g.png"),
        reference_histogram=np.array(before["forget_histogram"]),
        **kwargs,
    )
    assert after["FA"] < 0.2, after
    assert after["remain_acc"] >= before["remain_acc"] - 0.10, (before, after)
    assert after["hist_kl"] > 0 and (tmp_path / "g.png").stat().st_size > 0

"""Every run config under configs/ runs through `hf-unlearn unlearn --config FILE` on a tiny model of its family.

The five published presets run in tests/test_presets.py; this file runs the others and checks that none is left out.
"""

import json
from pathlib import Path

import pytest
import yaml
from test_presets import AUTHORS

from hf_unlearn.cli import main
from hf_unlearn.utils import RECORD_NAME

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs"
# Every file under configs/ is a run config except accelerate's launch files (the benchmark's own config ships inside
# the package, hf_unlearn/benchmarks/).
RUN_CONFIGS = sorted(str(p.relative_to(CONFIGS)) for p in CONFIGS.rglob("*.yaml") if "accelerate" not in p.parts)
# The run configs that are not published presets, and the flags that shrink each to a tiny model.
OTHERS = {
    "text_to_image/sd14_nudity_sfr_on_lora.yaml": [
        "--num_concept_images", "2", "--generation_steps", "2", "--resolution", "8", "--mixed_precision", "no",
    ],
    "text_to_image/sd3_medium_nudity_sfr_on_lora.yaml": [
        "--num_concept_images", "2", "--generation_steps", "2", "--resolution", "8", "--mixed_precision", "no",
    ],
    "text_to_image/flux_dev_nudity_esd_lora.yaml": [
        "--num_concept_images", "2", "--generation_steps", "2", "--resolution", "8", "--mixed_precision", "no",
    ],
    "image_classifier/digits_classwise_sfr_on.yaml": [],
    "image_classifier/digits_classwise_sfr_on_lora.yaml": [],
}  # fmt: skip


def test_every_run_config_is_run_by_a_test():
    covered = {AUTHORS[name]["file"] for name in AUTHORS} | set(OTHERS)
    assert set(RUN_CONFIGS) == covered, sorted(set(RUN_CONFIGS) ^ covered)


@pytest.mark.parametrize("path", RUN_CONFIGS)
def test_each_config_holds_what_a_run_needs(path):
    values = yaml.safe_load((CONFIGS / path).read_text())
    assert values.get("method") and values.get("output_dir"), path
    if path.startswith("text_to_image/"):  # the concept and its images: without them the CLI falls back to digits
        assert values["model"] and values["forget_prompts"] and values["remain_prompts"], path
        assert values["num_concept_images"] == 1000, path  # the published recipe: 1000 generated images per set
    else:
        data = ("forget_classes", "forget_ids", "forget_fraction")
        assert sum(values.get(k) is not None for k in data) == 1, path


def test_sd_lora_config_runs_two_cycles_from_the_cli(tmp_path, capsys):
    from tiny_sd import tiny_sd_pipeline

    model, out = tmp_path / "tiny_sd", tmp_path / "out"
    tiny_sd_pipeline().save_pretrained(model)
    path = "text_to_image/sd14_nudity_sfr_on_lora.yaml"
    argv = ["unlearn", "--config", str(CONFIGS / path), "--model", str(model), *OTHERS[path]]
    assert main([*argv, "--max_steps", "2", "--output_dir", str(out)]) == 0
    summary = json.loads(next(line for line in capsys.readouterr().out.splitlines() if line.startswith('{"method"')))
    assert summary["method"] == "sfr_on_remap" and summary["num_forget"] == 2  # the file's prompts, 2 images
    request = json.loads((out / RECORD_NAME).read_text())["requests"][-1]
    assert request["work"]["forget_steps"] == 2 and request["hyperparameters"]["lora_r"] == 8

    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(model, safety_checker=None)
    pipe.load_lora_weights(out)  # the adapter in diffusers' LoRA format
    assert any("lora" in n for n, _ in pipe.unet.named_parameters())


@pytest.mark.parametrize(
    "path, kind",
    [
        ("text_to_image/sd3_medium_nudity_sfr_on_lora.yaml", "sd3"),
        ("text_to_image/flux_dev_nudity_esd_lora.yaml", "flux"),
    ],
)
def test_sd3_and_flux_lora_configs_run_two_cycles_from_the_cli(path, kind, tmp_path, capsys):
    import diffusers
    from tiny_flow import tiny_flux_pipeline, tiny_sd3_pipeline

    model, out = tmp_path / kind, tmp_path / "out"
    pipe = (tiny_sd3_pipeline if kind == "sd3" else tiny_flux_pipeline)()
    pipe.save_pretrained(model)
    argv = ["unlearn", "--config", str(CONFIGS / path), "--model", str(model), *OTHERS[path]]
    argv += ["--sample_prompts", "a photo of a nude person", "--do_eval", "true"]  # the evaluation hooks too
    assert main([*argv, "--max_steps", "2", "--output_dir", str(out)]) == 0
    summary = json.loads(next(line for line in capsys.readouterr().out.splitlines() if line.startswith('{"method"')))
    assert summary["num_forget"] == 2  # the file's prompts, 2 images
    card = (out / "README.md").read_text()
    assert (out / "samples_before_after.png").is_file() and f"{type(pipe).__name__}.from_pretrained" in card
    assert "concept_gap" in json.dumps(json.loads((out / RECORD_NAME).read_text())["requests"][-1])
    request = json.loads((out / RECORD_NAME).read_text())["requests"][-1]
    assert request["work"]["forget_steps"] == 2 and request["hyperparameters"]["lora_r"] == 16
    loaded = getattr(diffusers, type(pipe).__name__).from_pretrained(model)
    loaded.load_lora_weights(out)  # the adapter in diffusers' LoRA format
    assert any("lora" in n for n, _ in loaded.transformer.named_parameters())
    if kind == "flux":  # ESD-x: of the adapters on every projection, only the text side's have trained (B ≠ 0)
        from safetensors.torch import load_file

        trained = {
            k for k, v in load_file(out / "pytorch_lora_weights.safetensors").items() if "lora_B" in k and v.any()
        }
        assert trained and all(".add_" in k or ".to_add_out." in k for k in trained), sorted(trained)
    assert loaded("a photo of a nude person", num_inference_steps=2, height=8, width=8).images[0].size == (8, 8)


@pytest.mark.parametrize("path", [p for p in OTHERS if p.startswith("image_classifier/")])
def test_digits_configs_run_from_the_cli(path, untrained_resnet_dir, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["unlearn", "--config", str(CONFIGS / path), "--model", str(untrained_resnet_dir), "--do_eval", "false"]
    assert main([*argv, "--max_steps", "2", "--output_dir", str(out)]) == 0
    assert json.loads((out / RECORD_NAME).read_text())["requests"][-1]["work"]["forget_steps"] == 2


def test_a_config_key_that_is_not_a_field_stops_the_run_before_any_work(tmp_path, capsys):
    path = tmp_path / "typo.yaml"
    path.write_text("model: some/model\nforget_classes: [3]\nlearnig_rate: 0.1\n")
    out = tmp_path / "out"
    assert main(["unlearn", "--config", str(path), "--output_dir", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: unknown keys ['learnig_rate']") and "\n" not in err
    assert not out.exists()

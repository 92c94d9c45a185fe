"""The CLI: every config field as a flag with its help, YAML overridden by flags, shipped configs, entry points."""

import dataclasses
import json
import re
import runpy
import sys
from pathlib import Path

import pytest
import yaml
from transformers import AutoModelForImageClassification

from hf_unlearn import UnlearnConfig
from hf_unlearn.cli import DataArguments, main, parse_with_config
from hf_unlearn.resolve import resolve_config
from hf_unlearn.utils import RECORD_NAME

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted(
    p
    for p in (ROOT / "configs").rglob("*.yaml")
    if p.parent.name in ("image_classifier", "class_conditional_diffusion", "text_to_image")
)
ACCELERATE = sorted((ROOT / "configs" / "accelerate").glob("*.yaml"))


def _squash(text: str) -> str:
    return re.sub(r"\s+", "", text)


@pytest.mark.parametrize("command", ["unlearn", "evaluate"])
def test_help_lists_every_field_with_its_help_text(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    out = _squash(capsys.readouterr().out)
    for cls in (UnlearnConfig, DataArguments):
        for f in dataclasses.fields(cls):
            assert f"--{f.name}" in out, f.name
            assert _squash(f.metadata["help"]) in out, f.name
    assert "--config" in out


def test_flags_override_the_yaml_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "method": "random_label",
                "learning_rate": 0.05,
                "max_steps": 7,
                "lora": True,
                "lora_target_modules": ["q_proj", "v_proj"],
                "forget_classes": [1, 2],
            }
        )
    )
    args, config = parse_with_config(
        (DataArguments, UnlearnConfig),
        ["--config", str(path), "--model", "m", "--learning_rate", "0.01", "--forget_classes", "4"],
        "test",
    )
    assert config.learning_rate == 0.01 and args.forget_classes == [4]  # the flags win
    assert config.method == "random_label" and config.max_steps == 7 and config.lora is True  # the file's values
    assert config.lora_target_modules == ["q_proj", "v_proj"] and args.model == "m"
    args, config = parse_with_config((DataArguments, UnlearnConfig), ["--config", str(path), "--model", "m"], "test")
    assert config.learning_rate == 0.05 and args.forget_classes == [1, 2]


def test_unknown_yaml_key_names_the_key(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("learning_rat: 0.1\n")
    with pytest.raises(SystemExit) as exit_info:
        parse_with_config((DataArguments, UnlearnConfig), ["--config", str(path), "--model", "m"], "test")
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith("error: unknown keys ['learning_rat']")


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_shipped_example_configs_parse_and_resolve(path):
    args, config = parse_with_config((DataArguments, UnlearnConfig), ["--config", str(path), "--model", "x"], "test")
    family = path.parent.name
    resolved = resolve_config(config, family)
    assert resolved.learning_rate > 0 and resolved.max_steps > 0
    values = yaml.safe_load(path.read_text())
    assert all(getattr(config, k, getattr(args, k, None)) == v for k, v in values.items() if k != "model")


@pytest.mark.parametrize("path", ACCELERATE, ids=lambda p: p.name)
def test_accelerate_configs_load(path):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(path))
    expected = {
        "single_gpu.yaml": ("NO", 1),
        "multi_gpu_ddp.yaml": ("MULTI_GPU", 8),
        "fsdp.yaml": ("FSDP", 8),
        "deepspeed_zero2.yaml": ("DEEPSPEED", 8),
        "cpu_2proc.yaml": ("MULTI_GPU", 2),
        "fsdp2_cpu.yaml": ("FSDP", 2),
    }[path.name]
    assert (str(config.distributed_type).split(".")[-1], config.num_processes) == expected
    if path.name == "fsdp.yaml":
        assert config.fsdp_config["fsdp_sharding_strategy"] == "FULL_SHARD"
    if path.name == "deepspeed_zero2.yaml":
        assert config.deepspeed_config["zero_stage"] == 2
    if path.name in ("cpu_2proc.yaml", "fsdp2_cpu.yaml"):
        assert config.use_cpu


def test_unlearn_and_evaluate_entry_points_end_to_end(tmp_path, trained_resnet_dir, capsys, monkeypatch):
    original = trained_resnet_dir
    yaml_path = tmp_path / "run.yaml"
    yaml_path.write_text(
        yaml.safe_dump(
            {
                "method": "sfr_on",
                "max_steps": 50,
                "forget_classes": [3],
                "remain_steps_per_forget": 1,
                "saliency_max_batches": 2,
            }
        )
    )
    out = tmp_path / "unlearned"
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "scripts/unlearn.py",
            "--config",
            str(yaml_path),
            "--model",
            str(original),
            "--output_dir",
            str(out),
            "--max_steps",
            "2",
            "--per_device_train_batch_size",
            "32",
        ],
    )
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(ROOT / "scripts" / "unlearn.py"), run_name="__main__")
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    summary = json.loads(next(line for line in printed.splitlines() if line.startswith('{"method"')))
    assert summary["method"] == "sfr_on" and summary["num_forget"] > 0
    record = json.loads((out / RECORD_NAME).read_text())
    assert record["requests"][0]["steps"] == 2  # the flag, not the file's 50
    assert "--max_steps 2" in record["requests"][0]["command"]
    AutoModelForImageClassification.from_pretrained(out)

    monkeypatch.setattr(sys, "argv", ["scripts/evaluate.py", "--model", str(out), "--forget_classes", "3"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(ROOT / "scripts" / "evaluate.py"), run_name="__main__")
    assert exit_info.value.code == 0
    evaluated = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| unlearned |"))
    after = next(line for line in printed.splitlines() if line.startswith("| after |"))
    # The saved model, reloaded by the evaluate entry point, scores exactly as the in-memory model did after the run.
    assert evaluated.split("|")[2:] == after.split("|")[2:]

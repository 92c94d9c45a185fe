"""The CLI a person meets: grouped help with one spelling per option, everything under --output_dir, no silent
overwrite of a finished result, and --push_to_hub without network keeping the local result."""

import argparse
import json
import os

import pytest
from transformers import AutoModelForImageClassification

from hf_unlearn import UnlearnConfig
from hf_unlearn.cli import DataArguments, main, parse_with_config
from hf_unlearn.cli_args import GROUPS, LEGACY_ALIASES, UnlearnArgumentParser
from hf_unlearn.utils import RECORD_NAME, file_sha256

QUICK = ["--forget_classes", "3", "--max_steps", "1", "--saliency_max_batches", "1", "--per_device_train_batch_size"]
QUICK += ["32", "--do_eval", "false"]


def test_help_is_grouped_and_every_option_has_one_spelling(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["unlearn", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for title in GROUPS:
        assert f"\n{title}:\n" in out, title
    assert "other options:" not in out  # every option belongs to a named group
    parser = UnlearnArgumentParser((DataArguments, UnlearnConfig), prog="hf-unlearn unlearn")
    shown = [a.option_strings for a in parser._actions if a.help != argparse.SUPPRESS and a.dest != "help"]
    assert [spellings for spellings in shown if len(spellings) != 1] == []
    for name in ("--forget-classes", "--output", "--dataset", "--per-device-train-batch-size"):
        assert f"{name} " not in out and f"{name}," not in out, name  # hidden aliases are not listed
    for name in ("--output_dir", "--push_to_hub", "--hub_model_id", "--hub_private_repo", "--overwrite_output_dir"):
        assert out.count(f"\n  {name} ") == 1, name


def test_readme_spellings_still_work():
    argv = ["--model", "m", "--dataset", "digits", "--forget-classes", "3", "--output", "out/", "--max-steps", "4"]
    args, config = parse_with_config((DataArguments, UnlearnConfig), argv, "test")
    assert (args.dataset_name, args.forget_classes, config.output_dir, config.max_steps) == ("digits", [3], "out/", 4)
    assert set(LEGACY_ALIASES) == {"--output", "--dataset"}


def test_an_old_spelling_together_with_its_new_one_is_refused(capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_with_config((DataArguments, UnlearnConfig), ["--model", "m", "--output", "a", "--output_dir", "b"], "t")
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith("error: --output is the old spelling of --output_dir")


def test_everything_goes_to_output_dir_and_a_finished_result_is_not_overwritten(
    untrained_resnet_dir, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "result"
    argv = ["unlearn", "--model", str(untrained_resnet_dir), *QUICK, "--output_dir", str(out)]
    assert main(argv) == 0
    assert sorted(os.listdir(tmp_path)) == ["result"]  # no ./hf_unlearn_output, nothing else
    assert {"model.safetensors", RECORD_NAME, "README.md", "saliency_mask.safetensors"} <= set(os.listdir(out))
    record = json.loads((out / RECORD_NAME).read_text())
    assert record["requests"][0]["dataset"].startswith("scikit-learn's digits")  # named, not null
    weights = file_sha256(out / "model.safetensors")
    capsys.readouterr()

    assert main([*argv, "--max_steps", "2"]) == 2  # refused before any work
    err = capsys.readouterr().err
    assert err.startswith(f"error: `--output_dir` {out} already holds a finished result") and err.count("\n") == 1
    assert "--overwrite_output_dir" in err and "Traceback" not in err
    assert file_sha256(out / "model.safetensors") == weights

    assert main([*argv, "--max_steps", "2", "--overwrite_output_dir"]) == 0
    (request,) = json.loads((out / RECORD_NAME).read_text())["requests"]
    assert request["steps"] == 2 and file_sha256(out / "model.safetensors") != weights
    assert sorted(os.listdir(tmp_path)) == ["result"]


def test_push_to_hub_offline_keeps_the_local_result_and_prints_the_reason(
    untrained_resnet_dir, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "pushed"
    argv = ["unlearn", "--model", str(untrained_resnet_dir), *QUICK, "--output_dir", str(out)]
    code = main([*argv, "--push_to_hub", "--hub_model_id", "someone/digits-no-3", "--hub_private_repo", "true"])
    assert code == 1  # the run succeeded, the upload did not
    captured = capsys.readouterr()
    assert f"saved to {out}" in captured.out
    (line,) = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert "someone/digits-no-3" in line and str(out) in line
    assert "OfflineModeIsEnabled" in line and "offline mode is enabled" in line  # the reason, not only the class
    AutoModelForImageClassification.from_pretrained(out)  # the complete local result
    assert json.loads((out / RECORD_NAME).read_text())["requests"][0]["method"] == "sfr_on_bound"

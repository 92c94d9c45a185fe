"""A matrix of bad inputs through the CLI and the Python API: each is refused before any work, naming the argument.

CLI: exit code 2, one `error:` line naming the option, no traceback, nothing written (the output folder does not
exist afterwards) and the source folder byte for byte unchanged. API: a `ValueError` or `TypeError` naming the field.
"""

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value
from datasets import Image as ImageFeature

from hf_unlearn import ConceptSplit, ForgetRemainSplit, UnlearnConfig, Unlearner
from hf_unlearn.cli import main
from hf_unlearn.tiny.classifiers import digits_image_processor, tiny_classifier
from hf_unlearn.utils import file_sha256

QUICK = ["--max_steps", "1", "--saliency_max_batches", "1", "--do_eval", "false"]


def _tree_hash(folder) -> dict:
    return {str(p.relative_to(folder)): file_sha256(p) for p in sorted(Path(folder).rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("matrix")


@pytest.fixture(scope="module")
def source(work):
    folder = work / "source"
    tiny_classifier("resnet", seed=0).save_pretrained(folder)
    digits_image_processor().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def rows(digits_small):
    return digits_small["train"].select(range(120))


def _saved(work, name, **splits):
    folder = work / name
    if not folder.exists():
        DatasetDict(splits).save_to_disk(folder)
    return folder


def _relabelled(rows, labels, feature):
    features = Features({"image": ImageFeature(), "label": feature})
    return Dataset.from_dict({"image": rows["image"], "label": labels}, features=features)


def _write(path: Path, content) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
    return path


def _adapter_folder(work, source) -> Path:
    folder = work / "pickle_adapter"
    _write(folder / "adapter_config.json", json.dumps({"base_model_name_or_path": str(source), "peft_type": "LORA"}))
    _write(folder / "adapter_model.bin", b"\x80\x04pickle")
    return folder


def _case_args(name, work, source, rows):  # noqa: C901 (one branch per case)
    """The argv (after `unlearn --model ... --output_dir ...`) of case `name`, and the text the error must name."""
    if name == "empty dataset":  # `save_to_disk` cannot write an empty dataset; a header-only CSV loads as one
        return [
            "--dataset_name",
            str(_write(work / "empty" / "train.csv", "image,label\n").parent),
            "--test_split",
            "",
            "--forget_classes",
            "3",
        ], "--dataset_name"
    if name == "label -1":
        labels = [-1] + rows["label"][1:]
        data = _relabelled(rows, labels, Value("int64"))
        return [
            "--dataset_name",
            str(_saved(work, "minus1", train=data)),
            "--test_split",
            "",
            "--forget_ids",
            "5",
        ], "`label_column`"
    if name == "string labels":
        data = _relabelled(rows, [str(v) for v in rows["label"]], Value("string"))
        return [
            "--dataset_name",
            str(_saved(work, "strings", train=data)),
            "--test_split",
            "",
            "--forget_ids",
            "5",
        ], "`label_column`"
    if name == "missing --split (digits)":
        return ["--split", "validation", "--forget_classes", "3"], "--split"
    if name == "missing --test_split (digits)":
        return ["--test_split", "validation", "--forget_classes", "3"], "--test_split"
    if name == "missing --split (folder)":
        return [
            "--dataset_name",
            str(_saved(work, "plain", train=rows)),
            "--split",
            "nope",
            "--test_split",
            "",
            "--forget_classes",
            "3",
        ], "--split"
    if name == "missing --test_split (folder)":
        return [
            "--dataset_name",
            str(_saved(work, "plain", train=rows)),
            "--test_split",
            "nope",
            "--forget_classes",
            "3",
        ], "--test_split"
    if name == "dataset folder with a loading script":
        folder = work / "scripted"
        _write(folder / "scripted.py", "raise SystemExit('planted code ran')\n")
        return ["--dataset_name", str(folder), "--forget_classes", "3"], "--dataset_name"
    if name == "num_forget_epochs 1e308":
        return ["--num_forget_epochs", "1e308", "--forget_classes", "3"], "num_forget_epochs"
    if name == "malformed YAML":
        return ["--config", str(_write(work / "bad.yaml", "method: [sfr_on\n")), "--forget_classes", "3"], "--config"
    if name == "YAML python tag":
        text = "method: !!python/object/apply:os.system ['touch planted']\n"
        return ["--config", str(_write(work / "tag.yaml", text)), "--forget_classes", "3"], "--config"
    if name == "binary --config":
        return ["--config", str(_write(work / "bin.yaml", bytes(range(256)))), "--forget_classes", "3"], "bin.yaml"
    if name == "YAML that is not a mapping":
        return ["--config", str(_write(work / "list.yaml", "- 1\n- 2\n")), "--forget_classes", "3"], "--config"
    if name == "unknown key in YAML":
        return ["--config", str(_write(work / "key.yaml", "learning_rat: 0.1\n")), "--forget_classes", "3"], (
            "learning_rat"
        )
    if name == "dataset_name left empty by a preset":
        return ["--config", str(_write(work / "dit.yaml", "dataset_name: null\nforget_classes: [3]\n"))], (
            "--dataset_name"
        )
    if name == "forget_classes 3.7":
        return ["--forget_classes", "3.7"], "--forget_classes"
    if name == "forget_ids 1.5":
        return ["--forget_ids", "1.5"], "--forget_ids"
    if name == "forget_classes not among the labels":
        return ["--forget_classes", "42"], "forget_classes"
    if name == "forget_ids out of range":
        return ["--forget_ids", "999999"], "forget_ids"
    if name == "forget_fraction 1.5":
        return ["--forget_fraction", "1.5"], "forget_fraction"
    if name == "two forget selectors":
        return ["--forget_classes", "3", "--forget_ids", "1"], "forget_classes"
    if name == "forget_prompts on an image classifier":
        return ["--forget_prompts", "a cat"], "--forget_prompts"
    if name == "sample_prompts on an image classifier":
        return ["--forget_classes", "3", "--sample_prompts", "a cat"], "--sample_prompts"
    if name == "label_column missing":
        return ["--forget_classes", "3", "--label_column", "digit"], "label_column"
    if name == "image_column missing":
        return ["--forget_ids", "3", "--image_column", "pixels"], "image_column"
    if name == "max_steps -1":
        return ["--forget_classes", "3", "--max_steps", "-1"], "max_steps"
    if name == "learning_rate nan":
        return ["--forget_classes", "3", "--learning_rate", "nan"], "learning_rate"
    if name == "unknown method":
        return ["--forget_classes", "3", "--method", "nope"], "method"
    if name == "unknown optimizer":
        return ["--forget_classes", "3", "--optim", "lbfgs"], "optim"
    if name == "unknown family":
        return ["--forget_classes", "3", "--family", "nope"], "family"
    if name == "unknown divergence_guard":
        return ["--forget_classes", "3", "--divergence_guard", "nope"], "divergence_guard"
    if name == "fp8":
        return ["--forget_classes", "3", "--mixed_precision", "fp8"], "mixed_precision"
    if name == "checkpointing_steps 0":
        return ["--forget_classes", "3", "--checkpointing_steps", "0"], "checkpointing_steps"
    if name == "esd on a classifier":
        return ["--forget_classes", "3", "--method", "esd"], "esd"
    if name == "resume_from_checkpoint not a folder":
        return ["--forget_classes", "3", "--resume_from_checkpoint", str(work / "nothing")], "resume_from_checkpoint"
    if name == "pickle-only checkpoint":
        folder = work / "pickle_ckpt"
        _write(folder / "pytorch_model.bin", b"\x80\x04pickle")
        _write(folder / "engine_state.json", json.dumps({"format": "hf_unlearn/engine-state-v1", "step": 1}))
        return ["--forget_classes", "3", "--resume_from_checkpoint", str(folder)], "resume_from_checkpoint"
    if name == "mask_path of nothing":
        return ["--forget_classes", "3", "--mask_path", str(work / "no_mask.safetensors")], "mask_path"
    if name == "reference that does not exist":
        return ["--forget_classes", "3", "--do_eval", "true", "--reference", str(work / "no_ref")], "--reference"
    if name == "reference with other labels":
        folder = work / "ref5"
        if not folder.exists():
            tiny_classifier("resnet", num_labels=5, seed=0).save_pretrained(folder)
            digits_image_processor().save_pretrained(folder)
        return ["--forget_classes", "3", "--do_eval", "true", "--reference", str(folder)], "--reference"
    if name == "retrain_init an adapter folder":
        return [
            "--forget_classes",
            "3",
            "--method",
            "retrain",
            "--retrain_init",
            str(_adapter_folder(work, source)),
        ], ("retrain_init")
    if name == "lora targets that match nothing":
        return ["--forget_classes", "3", "--lora", "true", "--lora_target_modules", "nothing"], "lora_target_modules"
    raise KeyError(name)


CLI_CASES = [
    "empty dataset",
    "label -1",
    "string labels",
    "missing --split (digits)",
    "missing --test_split (digits)",
    "missing --split (folder)",
    "missing --test_split (folder)",
    "dataset folder with a loading script",
    "num_forget_epochs 1e308",
    "malformed YAML",
    "YAML python tag",
    "binary --config",
    "YAML that is not a mapping",
    "unknown key in YAML",
    "dataset_name left empty by a preset",
    "forget_classes 3.7",
    "forget_ids 1.5",
    "forget_classes not among the labels",
    "forget_ids out of range",
    "forget_fraction 1.5",
    "two forget selectors",
    "forget_prompts on an image classifier",
    "sample_prompts on an image classifier",
    "label_column missing",
    "image_column missing",
    "max_steps -1",
    "learning_rate nan",
    "unknown method",
    "unknown optimizer",
    "unknown family",
    "unknown divergence_guard",
    "fp8",
    "checkpointing_steps 0",
    "esd on a classifier",
    "resume_from_checkpoint not a folder",
    "pickle-only checkpoint",
    "mask_path of nothing",
    "reference that does not exist",
    "reference with other labels",
    "retrain_init an adapter folder",
    "lora targets that match nothing",
]


def _refused(argv, named, out, source, capsys, cwd=None):
    before = _tree_hash(source)
    assert main(["unlearn", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert named in err, err
    assert not out.exists(), f"{out} was written"
    assert _tree_hash(source) == before
    assert not (Path(cwd or os.getcwd()) / "planted").exists()
    return err


@pytest.mark.parametrize("case", CLI_CASES)
def test_cli_refuses_a_bad_input_in_one_line(case, work, source, rows, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    extra, named = _case_args(case, work, source, rows)
    out = tmp_path / "out"
    _refused(["--model", str(source), "--output_dir", str(out), *QUICK, *extra], named, out, source, capsys)


@pytest.mark.parametrize("model_case", ["non-JSON config.json", "pickle-only adapter", "missing folder"])
def test_cli_refuses_a_bad_model_folder(model_case, work, source, tmp_path, capsys):
    if model_case == "non-JSON config.json":
        model = work / "bad_config"
        _write(model / "config.json", "{not json")
        _write(model / "model.safetensors", b"")
        named = "config.json"
    elif model_case == "pickle-only adapter":
        model, named = _adapter_folder(work, source), "pickle"
    else:
        model, named = work / "no_such_model", "no_such_model"
    out = tmp_path / "out"
    argv = ["--model", str(model), "--output_dir", str(out), "--forget_classes", "3", *QUICK]
    _refused(argv, named, out, source, capsys)


@pytest.mark.parametrize("flag", [[], ["--overwrite_output_dir"]])
@pytest.mark.parametrize("where", ["equal", "inside", "containing"])
def test_cli_never_writes_into_the_source(where, flag, source, capsys):
    out = {"equal": source, "inside": source / "sub", "containing": source.parent}[where]
    argv = ["--model", str(source), "--output_dir", str(out), "--forget_classes", "3", *QUICK, *flag]
    before = _tree_hash(source)
    assert main(["unlearn", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: `--output_dir`") and "never writes" in err and err.count("\n") == 1
    assert "--overwrite_output_dir" not in err  # the flag cannot lift it, so it is not suggested
    assert _tree_hash(source) == before and not (source / "sub").exists()


# The Python API: a ValueError / TypeError naming the field
@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"max_steps": 2.5}, "max_steps"),
        ({"seed": "abc"}, "seed"),
        ({"output_dir": 123}, "output_dir"),
        ({"checkpointing_steps": 0.5}, "checkpointing_steps"),
        ({"num_forget_epochs": 1e308}, "num_forget_epochs"),
        ({"learning_rate": True}, "learning_rate"),
        ({"lora_target_modules": "q_proj"}, "lora_target_modules"),
        ({"overwrite_output_dir": "yes"}, "overwrite_output_dir"),
    ],
)
def test_config_checks_types_at_construction(kwargs, field):
    with pytest.raises((TypeError, ValueError), match=f"`{field}`"):
        UnlearnConfig(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"forget_classes": [3.7]}, "forget_classes"),
        ({"forget_classes": ["3"]}, "forget_classes"),
        ({"forget_ids": [1.0, 2.0]}, "forget_ids"),
        ({"forget_ids": [True]}, "forget_ids"),
        ({"forget_ids": np.array([1.5])}, "forget_ids"),
    ],
)
def test_ids_must_be_integers(rows, kwargs, field):
    with pytest.raises(ValueError, match=f"`{field}`"):
        ForgetRemainSplit.from_dataset(rows, **kwargs)


def test_whitespace_prompt_is_refused_like_the_empty_one():
    for prompts in ([""], ["   "], ["a cat", "\t\n"]):
        with pytest.raises(ValueError, match="`forget_prompts`"):
            ConceptSplit(forget_prompts=prompts)


def test_empty_dataset_is_refused(rows):
    with pytest.raises(ValueError, match="`dataset` has no rows"):
        ForgetRemainSplit.from_dataset(rows.select([]), forget_ids=[0])


@pytest.mark.parametrize(
    ("labels", "named"), [("minus one", "`label_column`"), ("strings", "`label_column`"), ("too large", "num_labels")]
)
def test_bad_labels_are_refused_before_any_weight_change(source, rows, labels, named):
    values = list(rows["label"])
    feature = Value("int64")
    if labels == "minus one":
        values[7] = -1
    elif labels == "too large":
        values[7] = 10
    else:
        values, feature = [str(v) for v in values], Value("string")
    data = _relabelled(rows, values, feature)
    unlearner = Unlearner.from_pretrained(str(source), UnlearnConfig(output_dir="", max_steps=1))
    state = {k: v.clone() for k, v in unlearner.model.state_dict().items()}
    with pytest.raises(ValueError, match=named):
        unlearner.unlearn(ForgetRemainSplit.from_dataset(data, forget_ids=[3]))
    assert all((v == state[k]).all() for k, v in unlearner.model.state_dict().items())


def test_class_label_feature_keeps_working(rows):
    data = _relabelled(rows, list(rows["label"]), ClassLabel(names=[str(i) for i in range(10)]))
    assert ForgetRemainSplit.from_dataset(data, forget_classes=[3]).forget_classes == [3]


@pytest.mark.parametrize("overwrite", [False, True])
def test_api_never_writes_into_the_source(source, rows, overwrite):
    before = _tree_hash(source)
    cfg = UnlearnConfig(output_dir=str(source), overwrite_output_dir=overwrite, max_steps=1, saliency_max_batches=1)
    unlearner = Unlearner.from_pretrained(str(source), cfg)
    with pytest.raises(ValueError, match="`output_dir`"):
        unlearner.unlearn(ForgetRemainSplit.from_dataset(rows, forget_classes=[3]))
    unlearner.config = dataclasses.replace(unlearner.config, output_dir="")
    unlearner.unlearn(ForgetRemainSplit.from_dataset(rows, forget_classes=[3]))
    for target in (source, source / "sub", source.parent):
        with pytest.raises(ValueError, match="`save_directory`"):
            unlearner.save_pretrained(target, overwrite=True)
    assert _tree_hash(source) == before and not (source / "sub").exists()


def test_concept_split_on_a_classifier_is_refused(source):
    unlearner = Unlearner.from_pretrained(str(source), UnlearnConfig(output_dir="", max_steps=1))
    with pytest.raises(ValueError, match="forget_prompts"):
        unlearner.unlearn(ConceptSplit(forget_prompts=["a cat"]))


def test_retrain_init_adapter_folder_is_refused_before_the_run(work, source, rows):
    cfg = UnlearnConfig(output_dir="", method="retrain", max_steps=1, retrain_init=str(_adapter_folder(work, source)))
    unlearner = Unlearner.from_pretrained(str(source), cfg)
    with pytest.raises(ValueError, match="`retrain_init`"):
        unlearner.validate(ForgetRemainSplit.from_dataset(rows, forget_classes=[3]))


def test_record_text_from_an_input_folder_is_escaped_in_the_card_body(source, rows, tmp_path):
    first = Unlearner.from_pretrained(str(source), UnlearnConfig(output_dir="", max_steps=1, saliency_max_batches=1))
    first.unlearn(ForgetRemainSplit.from_dataset(rows, forget_classes=[3]))
    first.save_pretrained(tmp_path / "a")
    record_file = tmp_path / "a" / "unlearning_record.json"
    record = json.loads(record_file.read_text())
    planted = "three`\n# Injected heading\n<script>alert(1)</script> [link](javascript:x) | cell"
    record["requests"][0]["forget_set"]["forget_class_names"] = {"3": planted}
    record["requests"][0]["method"] = "sfr_on\n## Fake section"
    record_file.write_text(json.dumps(record))
    second = Unlearner.from_pretrained(str(tmp_path / "a"), UnlearnConfig(output_dir="", max_steps=1))
    second.unlearn(ForgetRemainSplit.from_dataset(rows, forget_classes=[4]))
    second.save_pretrained(tmp_path / "b")
    card = (tmp_path / "b" / "README.md").read_text()
    body = card.split("---", 2)[2]
    assert "Injected heading" in body and "three'" in body  # the text is there, as text
    assert "<script>" not in body and "](javascript" not in body
    assert not any(line.lstrip().startswith(("# Injected", "## Fake")) for line in body.splitlines())
    # Request 1 appears in the history table and in the table of earlier requests measured again; in both the
    # planted "|" did not add a table cell.
    lines = body.splitlines()
    rows = [i for i, line in enumerate(lines) if line.startswith("| 1 |")]
    assert rows
    for i in rows:
        header = next(lines[j] for j in range(i - 1, -1, -1) if lines[j].startswith("|---"))
        assert lines[i].count("|") == header.count("|"), lines[i]


@pytest.fixture(scope="module")
def sd_folder(work):
    from tiny_sd import tiny_sd_pipeline

    folder = work / "tiny_sd"
    tiny_sd_pipeline().save_pretrained(folder)  # untrained: only the family and the options are checked
    return folder


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        (["--forget_classes", "3"], "--forget_classes"),
        (["--forget_prompts", "   "], "`forget_prompts`"),
        (["--forget_prompts", "a nude person", "--reference", "x"], "--reference"),
    ],
)
def test_cli_text_to_image_options_that_do_not_fit(extra, named, sd_folder, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["--model", str(sd_folder), "--output_dir", str(out), *QUICK, *extra]
    _refused(argv, named, out, sd_folder, capsys)

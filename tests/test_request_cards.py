"""The card of every save tells the truth: its before/after numbers are those of the input and output folders as they
reload (full weights and LoRA, on a model with BatchNorm, over two requests), the "before" column is filled without
evaluating first, `base_model` is a Hub id and never a local path, the load section renders, and a LoRA output folder
loads through the Python API in a fresh process."""

import json
import re
import shutil

import pytest
import yaml

from hf_unlearn import ForgetRemainSplit, UnlearnConfig, Unlearner

ROWS = ("FA", "RA", "TA", "TA_forget")


def _config(tmp, name, lora):
    values = dict(method="sfr_on", lora=lora, learning_rate=1e-2 if lora else 3e-3, max_steps=16, seed=0)
    values |= dict(remain_steps_per_forget=1, per_device_train_batch_size=32, saliency_max_batches=2)
    return UnlearnConfig(**values, output_dir=str(tmp / f"{name}_run"))


def _request(source, target, split, config):
    """As a Python API user: no evaluation before the run, one after, then save."""
    unlearner = Unlearner.from_pretrained(str(source), config)
    unlearner.unlearn(split)
    unlearner.evaluate(split)
    unlearner.save_pretrained(target)


def _card_row(card: str, label: str) -> tuple[str, str]:
    match = re.search(rf"^\| {re.escape(label)} \| (\S+) \| (\S+) \|$", card, flags=re.M)
    assert match, label
    return match.group(1), match.group(2)


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_card_numbers_are_those_of_the_folders_as_they_reload(lora, trained_resnet_dir, digits_small, tmp_path):
    train, test = digits_small["train"], digits_small["test"]
    splits = [ForgetRemainSplit.from_dataset(train, forget_classes=[c], test_dataset=test) for c in (3, 5)]
    _request(trained_resnet_dir, tmp_path / "r1", splits[0], _config(tmp_path, "r1", lora))
    # The second request is the one whose frozen BatchNorm statistics drifted under LoRA.
    _request(tmp_path / "r1", tmp_path / "r2", splits[1], _config(tmp_path, "r2", lora))
    request = json.loads((tmp_path / "r2" / "unlearning_record.json").read_text())["requests"][-1]
    card = (tmp_path / "r2" / "README.md").read_text()
    for key, folder in (("metrics_before", "r1"), ("metrics", "r2")):
        reloaded = Unlearner.from_pretrained(str(tmp_path / folder), _config(tmp_path, "eval", lora))
        measured = reloaded.evaluate(splits[1])
        for name in ROWS:
            assert request[key][name] == pytest.approx(measured[name], abs=1e-6), (key, name)
    labels = {"FA": "FA (forget accuracy, %)", "RA": "RA (remain accuracy, %)", "TA": "TA (test accuracy, %)"}
    for name, label in labels.items():
        assert _card_row(card, label) == (f"{request['metrics_before'][name]:.3f}", f"{request['metrics'][name]:.3f}")
    assert request["metrics_before"]["FA"] > 90 and request["metrics"]["FA"] < 20  # a real change, both columns


def test_card_names_the_hub_base_model_and_renders_the_load_section(trained_resnet_dir, digits_small, tmp_path):
    # A local copy of a Hub model, as the Hub cache keeps it: its repo id is in its path.
    local = tmp_path / "hub" / "models--someorg--tiny-resnet" / "snapshots" / "0123abc"
    shutil.copytree(trained_resnet_dir, local)
    split = ForgetRemainSplit.from_dataset(
        digits_small["train"], forget_classes=[3], test_dataset=digits_small["test"]
    )
    _request(local, tmp_path / "r1", split, _config(tmp_path, "r1", True))
    card = (tmp_path / "r1" / "README.md").read_text()
    metadata = yaml.safe_load(card.split("---")[1])
    assert metadata["base_model"] == "someorg/tiny-resnet"
    assert json.loads((tmp_path / "r1" / "unlearning_record.json").read_text())["base_model"] == "someorg/tiny-resnet"
    header = card.split("## Metrics")[0]
    assert (
        str(tmp_path) not in header and "[`someorg/tiny-resnet`](https://huggingface.co/someorg/tiny-resnet)" in header
    )
    assert "\n\n## How to load\n" in card and "</details>## How to load" not in card
    # A local model with no Hub origin: no `base_model` metadata and no absolute path, rather than a wrong one.
    _request(trained_resnet_dir, tmp_path / "r2", split, _config(tmp_path, "r2", False))
    card = (tmp_path / "r2" / "README.md").read_text()
    assert "base_model" not in yaml.safe_load(card.split("---")[1])
    assert str(trained_resnet_dir) not in card.split("## Metrics")[0]
    # The input's own card names its base: a copy of it says so too.
    (tmp_path / "copy").mkdir()
    shutil.copytree(trained_resnet_dir, tmp_path / "copy" / "m")
    (tmp_path / "copy" / "m" / "README.md").write_text("---\nbase_model: otherorg/resnet-digits\n---\n# a model\n")
    _request(tmp_path / "copy" / "m", tmp_path / "r3", split, _config(tmp_path, "r3", False))
    card = (tmp_path / "r3" / "README.md").read_text()
    assert yaml.safe_load(card.split("---")[1])["base_model"] == "otherorg/resnet-digits"


def test_an_adapter_folder_loads_through_the_python_api_before_any_accelerate_state(
    trained_resnet_dir, digits_small, tmp_path
):
    from accelerate.state import AcceleratorState, PartialState

    split = ForgetRemainSplit.from_dataset(digits_small["train"], forget_classes=[3])
    config = _config(tmp_path, "r1", True)
    config.max_steps = 2
    _request(trained_resnet_dir, tmp_path / "r1", split, config)
    # As in a new Python session: no accelerate state yet (the CLI makes one first; a Python user does not).
    AcceleratorState._reset_state(reset_partial_state=True)
    assert not PartialState._shared_state
    unlearner = Unlearner.from_pretrained(str(tmp_path / "r1"))
    assert unlearner.config.lora and len(unlearner.records) == 1

"""Saving with the audit record and model card, sequential deletion requests, and push_to_hub without network."""

import json
import logging
import os

import pytest
import torch
from huggingface_hub import ModelCard
from transformers import AutoModelForImageClassification

from hf_unlearn import ForgetRemainSplit, UnlearnConfig, Unlearner
from hf_unlearn.hub import write_model_card
from hf_unlearn.utils import CONFIG_NAME, RECORD_NAME

SECRET = "hf_NotARealTokenButSecret1234567890"


def _config(tmp, **kw):
    values = dict(
        method="sfr_on",
        max_steps=3,
        remain_steps_per_forget=1,
        per_device_train_batch_size=32,
        saliency_max_batches=2,
        output_dir=str(tmp / "run"),
        seed=0,
    )
    return UnlearnConfig(**(values | kw))


@pytest.fixture(scope="module")
def saved(tmp_path_factory, trained_resnet_dir, digits_small):
    """The original folder, and a first deletion request (class 3) unlearned, evaluated and saved."""
    tmp = tmp_path_factory.mktemp("hub")
    original = trained_resnet_dir
    split = ForgetRemainSplit.from_dataset(
        digits_small["train"], forget_classes=[3], test_dataset=digits_small["test"]
    )
    unlearner = Unlearner.from_pretrained(str(original), _config(tmp))
    unlearner.unlearn(split)
    metrics = unlearner.evaluate(split)
    first = tmp / "first"
    unlearner.save_pretrained(first, dataset_name="someone/digits", command="hf-unlearn unlearn --forget_classes 3")
    return {
        "tmp": tmp,
        "original": original,
        "first": first,
        "unlearner": unlearner,
        "split": split,
        "metrics": metrics,
    }


def test_save_writes_native_model_config_record_and_card(saved):
    first, unlearner, split = saved["first"], saved["unlearner"], saved["split"]
    assert {
        "model.safetensors",
        "config.json",
        "preprocessor_config.json",
        CONFIG_NAME,
        RECORD_NAME,
        "README.md",
    } <= set(os.listdir(first))
    reloaded = AutoModelForImageClassification.from_pretrained(first).eval()
    pixels = torch.randn(4, 1, 16, 16)
    with torch.no_grad():
        assert torch.allclose(reloaded(pixel_values=pixels).logits, unlearner.model(pixel_values=pixels).logits)
    assert UnlearnConfig.from_pretrained(first) == unlearner.config

    record = json.loads((first / RECORD_NAME).read_text())
    (request,) = record["requests"]
    assert request["method"] == "sfr_on" and request["hyperparameters"]["max_steps"] == 3
    assert request["forget_set"]["fingerprint"] == split.fingerprint
    assert request["forget_set"]["num_forget"] == len(split.forget_indices)
    assert request["metrics"]["FA"] == pytest.approx(saved["metrics"]["FA"])
    assert request["runtime_s"] > 0 and request["seed"] == 0
    assert (
        request["library_versions"]["torch"] == torch.__version__.split("+")[0] or request["library_versions"]["torch"]
    )
    assert request["dataset"] == "someone/digits"
    # Never the data: no pixel or label values of the forget rows, only the hash.
    text = (first / RECORD_NAME).read_text()
    assert "pixel" not in text and len(text) < 20_000
    assert str(split.forget_indices[:5])[1:-1] not in text


def test_model_card_metadata_history_and_reproduce_command(saved):
    card = ModelCard.load(saved["first"] / "README.md")
    assert card.data.library_name == "transformers"
    assert {"machine-unlearning", "sfr_on"} <= set(card.data.tags)
    assert card.data.datasets == ["someone/digits"]
    assert "hf-unlearn unlearn --forget_classes 3" in card.text
    assert "AutoModelForImageClassification.from_pretrained" in card.text
    assert f"{saved['metrics']['FA']:.3f}" in card.text

    record = json.loads((saved["first"] / RECORD_NAME).read_text())
    record["base_model"] = "someone/tiny-resnet"
    write_model_card(record, saved["tmp"])
    assert ModelCard.load(saved["tmp"] / "README.md").data.base_model == "someone/tiny-resnet"


def test_second_deletion_request_appends_to_the_history(saved, digits_small):
    tmp = saved["tmp"]
    first_record = (saved["first"] / RECORD_NAME).read_text()
    split = ForgetRemainSplit.from_dataset(
        digits_small["train"], forget_classes=[5], test_dataset=digits_small["test"]
    )
    again = Unlearner.from_pretrained(str(saved["first"]), _config(tmp, method="random_label"))
    again.unlearn(split)
    again.evaluate(split)
    second = tmp / "second"
    again.save_pretrained(second)

    record = json.loads((second / RECORD_NAME).read_text())
    assert [r["method"] for r in record["requests"]] == ["sfr_on", "random_label"]
    assert record["requests"][0]["forget_set"]["fingerprint"] == saved["split"].fingerprint
    assert record["requests"][1]["forget_set"]["fingerprint"] == split.fingerprint != saved["split"].fingerprint
    assert record["requests"][1]["forget_set"]["forget_classes"] == [5]
    # `base_model` is a Hub id or nothing (a local original has none); never a local path.
    assert record["base_model"] is None and record["parent_model"] == str(saved["first"])
    assert (saved["first"] / RECORD_NAME).read_text() == first_record  # the earlier output is untouched
    card = (second / "README.md").read_text()
    assert "| 1 |" in card and "| 2 |" in card and "random_label" in card
    assert {"sfr_on", "random_label"} <= set(ModelCard.load(second / "README.md").data.tags)


def test_push_to_hub_offline_fails_clearly_keeps_folder_and_never_writes_the_token(saved, caplog, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    local = saved["tmp"] / "to_push"
    with caplog.at_level(logging.DEBUG), pytest.raises(RuntimeError) as err:
        saved["unlearner"].push_to_hub("someone/unlearned-digits", private=True, token=SECRET, local_dir=str(local))
    message = str(err.value)
    assert "someone/unlearned-digits" in message and str(local) in message and SECRET not in message
    assert "OfflineModeIsEnabled: Cannot reach" in message  # the reason, not only the exception's class
    assert err.value.__cause__ is None and err.value.__suppress_context__
    assert SECRET not in caplog.text
    assert {"model.safetensors", CONFIG_NAME, RECORD_NAME, "README.md"} <= set(os.listdir(local))
    AutoModelForImageClassification.from_pretrained(local)
    for name in os.listdir(local):
        assert SECRET.encode() not in (local / name).read_bytes(), name


def test_sample_grids_are_saved_beside_the_card(saved):
    from PIL import Image

    grid = Image.new("RGB", (32, 16), (200, 30, 30))
    saved["unlearner"].save_pretrained(saved["tmp"] / "with_grid", images={"samples_forgotten_class": grid})
    folder = saved["tmp"] / "with_grid"
    assert Image.open(folder / "samples_forgotten_class.png").size == (32, 16)
    assert "![samples_forgotten_class](samples_forgotten_class.png)" in (folder / "README.md").read_text()

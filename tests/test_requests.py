"""Several deletion requests on one model: a second request keeps the first forgotten (classes, rows; full weights and
LoRA), unrecognisable earlier rows are refused, earlier forget sets are measured again for the record and the card,
and the card's numbers are those of the folders as they reload."""

import json

import numpy as np
import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForImageClassification

from hf_unlearn import ForgetRemainSplit, UnlearnConfig, Unlearner
from hf_unlearn.requests import ROW_KEY_ENV, row_digests

KEY = "the data owner's secret"


def _config(tmp, name, lora=False, **kw):
    values = dict(
        method="sfr_on",
        lora=lora,
        learning_rate=1e-2 if lora else 3e-3,
        per_device_train_batch_size=32,
        saliency_max_batches=2,
        output_dir=str(tmp / f"{name}_run"),
        seed=0,
    )
    return UnlearnConfig(**(values | kw))


def _request(source, target, split, config, **kw):
    """One deletion request through the public API as a user runs it: load, unlearn, evaluate, save."""
    unlearner = Unlearner.from_pretrained(str(source), config, **kw)
    unlearner.unlearn(split)
    metrics = unlearner.evaluate(split)
    unlearner.save_pretrained(target)
    return unlearner, metrics


def _record(folder):
    return json.loads((folder / "unlearning_record.json").read_text())


def _accuracy(model_folder, rows, base=None):
    """Top-1 accuracy (%) of a saved folder on `rows`, loaded with plain transformers / peft (no hf_unlearn)."""
    from hf_unlearn.tiny.classifiers import digits_image_processor

    if base is None:
        model = AutoModelForImageClassification.from_pretrained(model_folder)
    else:
        model = PeftModel.from_pretrained(AutoModelForImageClassification.from_pretrained(base), model_folder)
    model.eval()
    pixels = digits_image_processor()(list(rows["image"]), return_tensors="pt")
    with torch.no_grad():
        predicted = model(**pixels).logits.argmax(-1)
    return 100.0 * float((predicted == torch.tensor(list(rows["label"]))).float().mean())


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_second_class_request_keeps_the_first_class_forgotten(lora, trained_resnet_dir, digits_small, tmp_path):
    train, test = digits_small["train"], digits_small["test"]
    n3 = train["label"].count(3)
    first = ForgetRemainSplit.from_dataset(train, forget_classes=[3], test_dataset=test)
    second = ForgetRemainSplit.from_dataset(train, forget_classes=[5], test_dataset=test)  # still holds class 3
    _, m1 = _request(trained_resnet_dir, tmp_path / "r1", first, _config(tmp_path, "r1", lora))
    unlearner, m2 = _request(tmp_path / "r1", tmp_path / "r2", second, _config(tmp_path, "r2", lora))
    earlier = unlearner.earlier_metrics[0]
    print(f"lora={lora}: request 1 {m1}; request 2 {m2}; class 3 now {earlier}")
    assert earlier["request"] == 1 and earlier["metrics"]["num_rows"] == n3
    assert earlier["metrics"]["FA"] <= m1["FA"] + 5, "class 3 was learned again by the second request"
    assert m2["FA"] <= 10
    assert abs(m2["RA"] - m1["RA"]) <= 2 and abs(m2["TA"] - m1["TA"]) <= 2
    # The remain set and the test rows of request 2 left class 3 out.
    assert unlearner._request_split.num_excluded_earlier == n3
    assert 3 not in set(unlearner._request_split.remain["label"])
    record = _record(tmp_path / "r2")
    assert record["requests"][1]["earlier_requests"][0]["metrics"]["FA"] == earlier["metrics"]["FA"]
    card = (tmp_path / "r2" / "README.md").read_text()
    assert "## Earlier deletion requests, measured again" in card
    assert f"| 1 | class 3 ({n3} training rows) | FA {earlier['metrics']['FA']:.3f}" in card
    # The saved folder, loaded without hf_unlearn, forgets both classes.
    base = str(trained_resnet_dir) if lora else None
    for label in (3, 5):
        rows = train.select([i for i, y in enumerate(train["label"]) if y == label])
        assert _accuracy(tmp_path / "r2", rows, base) <= max(10, earlier["metrics"]["FA"] + 5), label


def test_earlier_rows_are_recognised_by_their_keyed_digest(trained_resnet_dir, digits_small, tmp_path, monkeypatch):
    train, test = digits_small["train"], digits_small["test"]
    ids = np.random.default_rng(0).choice(len(train), 60, replace=False).tolist()
    first = ForgetRemainSplit.from_dataset(train, forget_ids=ids, test_dataset=test)
    config = _config(tmp_path, "r1", max_steps=24)
    _, m1 = _request(trained_resnet_dir, tmp_path / "r1", first, config, row_key=KEY)
    stored = _record(tmp_path / "r1")["requests"][0]["forget_set"]
    assert stored["row_digests"] == sorted(row_digests(train, KEY.encode(), ids))
    assert stored["row_key_id"] and KEY not in (tmp_path / "r1" / "unlearning_record.json").read_text()
    # Request 2: other rows, from the full dataset again (the first rows are in it); the key from the environment.
    monkeypatch.setenv(ROW_KEY_ENV, KEY)
    others = [i for i in range(len(train)) if i not in set(ids)][:40]
    second = ForgetRemainSplit.from_dataset(train, forget_ids=others, test_dataset=test)
    unlearner, m2 = _request(tmp_path / "r1", tmp_path / "r2", second, _config(tmp_path, "r2", max_steps=24))
    assert unlearner._request_split.num_excluded_earlier == 60 - len(set(ids) & set(others))
    assert not set(ids) & set(unlearner._request_split.remain_indices.tolist())
    earlier = unlearner.earlier_metrics[0]["metrics"]
    print(f"rows: request 1 {m1}; request 2 {m2}; first rows now {earlier}")
    assert earlier["num_rows"] == 60 and abs(earlier["FA"] - m1["FA"]) <= 5
    assert abs(m2["RA"] - m1["RA"]) <= 2 and abs(m2["TA"] - m1["TA"]) <= 2
    assert _record(tmp_path / "r2")["requests"][1]["earlier_requests"][0]["metrics"]["FA"] == earlier["FA"]


@pytest.mark.parametrize("key", [None, "another key"], ids=["no key", "wrong key"])
def test_unrecognisable_earlier_rows_are_refused_before_any_weight_change(
    key, trained_resnet_dir, digits_small, tmp_path, monkeypatch
):
    monkeypatch.delenv(ROW_KEY_ENV, raising=False)
    train = digits_small["train"]
    first = ForgetRemainSplit.from_dataset(train, forget_ids=list(range(20)))
    _request(trained_resnet_dir, tmp_path / "r1", first, _config(tmp_path, "r1", max_steps=2), row_key=KEY)
    second = ForgetRemainSplit.from_dataset(train, forget_classes=[5])
    unlearner = Unlearner.from_pretrained(str(tmp_path / "r1"), _config(tmp_path, "r2", max_steps=2), row_key=key)
    weights = {n: p.detach().clone() for n, p in unlearner.model.named_parameters()}
    refusal = r"^Deletion request 1 of this model forgot 20 rows .* earlier_rows='proceed'"
    with pytest.raises(ValueError, match=refusal):
        unlearner.unlearn(second)
    assert all(torch.equal(p, weights[n]) for n, p in unlearner.model.named_parameters())
    assert unlearner.evaluate(second)["FA"] > 90  # scoring changes no weight: it is not refused
    # Told how to proceed, it runs; the record says the rows were not measured again.
    config = _config(tmp_path, "r2", max_steps=2, earlier_rows="proceed")
    unlearner, _ = _request(tmp_path / "r1", tmp_path / "r2", second, config, row_key=key)
    assert unlearner.earlier_metrics[0]["metrics"] is None
    assert "not measured: its rows cannot be recognised" in (tmp_path / "r2" / "README.md").read_text()


def test_cli_refuses_unrecognisable_earlier_rows_in_one_line(trained_resnet_dir, tmp_path, capsys, monkeypatch):
    from hf_unlearn.cli import unlearn_main

    monkeypatch.delenv(ROW_KEY_ENV, raising=False)
    common = ["--dataset_name", "digits", "--max_steps", "2", "--per_device_train_batch_size", "64", "--lora"]
    assert unlearn_main(["--model", str(trained_resnet_dir), "--forget_ids", "1", "2", "3", *common,
                         "--output_dir", str(tmp_path / "r1")]) == 0  # fmt: skip
    capsys.readouterr()
    argv = ["--model", str(tmp_path / "r1"), "--forget_classes", "5", *common, "--output_dir", str(tmp_path / "r2")]
    assert unlearn_main(argv) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("error: Deletion request 1 of this model forgot 3 rows"), err
    assert not (tmp_path / "r2").exists()
    assert unlearn_main([*argv, "--earlier_rows", "proceed"]) == 0  # an adapter folder as input, through the CLI
    assert len(_record(tmp_path / "r2")["requests"]) == 2
    assert json.loads((tmp_path / "r2" / "adapter_config.json").read_text())["r"] == 16  # both adapters, stacked

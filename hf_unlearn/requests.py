"""Several deletion requests on one model: what a request stores so that later ones keep it forgotten.

A model that hf_unlearn saved carries the record of every request before it (`unlearning_record.json`). The next
request on that model:

- excludes the earlier forget sets from its remain set (and from the test rows it scores): earlier classes by label,
  earlier concept prompts by caption, earlier rows by a keyed digest of their content (see [`row_digests`]);
- refuses, before any weight changes, when an earlier request forgot rows that cannot be recognised (no digests, or no
  key, or another key), unless `earlier_rows="proceed"`;
- measures the earlier forget sets again after its run ([`remeasure_earlier`]), for the record and the card.

Rows are recognised by HMAC-SHA256 over their content with a key that only the data owner holds (`row_key=` or the
`HF_UNLEARN_ROW_KEY` environment variable): the record, which is pushed with the model, then holds digests that say
nothing about the rows to anyone without the key, while the owner can find the deleted rows in any later copy of the
data. Trade-off: whoever holds the key can test whether a given row was deleted, and a row is recognised only when its
content is byte-identical; a lost key makes the earlier rows unrecognisable.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import os
from typing import Any, Optional

import numpy as np
import torch

from .evaluation import predict_logits
from .metrics.concept import _mean

ROW_KEY_ENV = "HF_UNLEARN_ROW_KEY"
DIGEST_SCHEME = "hmac-sha256-128/v1"  # HMAC-SHA256 of the row's canonical JSON, first 128 bits, hex


# Keyed row digests
def resolve_row_key(row_key: Optional[str | bytes] = None) -> Optional[bytes]:
    """The data owner's key: `row_key` if given, else the `HF_UNLEARN_ROW_KEY` environment variable, else `None`."""
    key = row_key if row_key is not None else os.environ.get(ROW_KEY_ENV)
    if key is None or key == "":
        return None
    return key.encode() if isinstance(key, str) else bytes(key)


def key_id(key: bytes) -> str:
    """Names the key without revealing it, so that a later request can tell a wrong key from absent rows."""
    return hmac.new(key, b"hf_unlearn row key id", hashlib.sha256).hexdigest()[:16]


def _canonical(value: Any) -> Any:
    if isinstance(value, dict) and "bytes" in value and "path" in value:  # an undecoded Image / Audio cell
        data = value["bytes"]
        if data is None and value["path"]:
            with open(value["path"], "rb") as fh:
                data = fh.read()
        return None if data is None else data.hex()
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).hex()
    if isinstance(value, dict):
        return {k: _canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    return value


def row_digests(dataset, key: bytes, indices=None, batch_size: int = 1000) -> list[str]:
    """HMAC-SHA256 (first 128 bits, hex) of each row's content: every column, image cells by their encoded bytes."""
    from datasets import Image  # noqa: PLC0415

    data = dataset
    for name, feature in dataset.features.items():  # image cells by their encoded bytes, not decoded pixels
        if isinstance(feature, Image):
            data = data.cast_column(name, Image(decode=False))
    if indices is not None:
        data = data.select([int(i) for i in indices])
    table = data.with_format("arrow")
    out = []
    for start in range(0, len(data), batch_size):
        for row in table[start : start + batch_size].to_pylist():
            text = json.dumps(_canonical(row), sort_keys=True, separators=(",", ":")).encode()
            out.append(hmac.new(key, text, hashlib.sha256).hexdigest()[:32])
    return out


def request_row_digests(split, key: Optional[bytes]) -> dict:
    """What the record keeps so that a later request recognises this request's forgotten rows (row requests only)."""
    if getattr(split, "scenario", None) != "rows":
        return {}
    if key is None:
        return {"row_digests": None, "row_digest_scheme": None, "row_key_id": None}
    digests = row_digests(split.dataset, key, split.forget_indices)
    return {"row_digests": sorted(digests), "row_digest_scheme": DIGEST_SCHEME, "row_key_id": key_id(key)}


# Earlier forget sets
def earlier_forget_sets(records: list[dict]) -> list[dict]:
    """One entry per earlier request that forgot something: its number, classes, prompts/anchors or row digests."""
    out = []
    for i, request in enumerate(records, 1):
        fs = request.get("forget_set") or {}
        if fs.get("scenario") in (None, "train"):
            continue
        out.append({"request": i, **fs})
    return out


def _unidentifiable(earlier: dict, key: Optional[bytes]) -> Optional[str]:
    """Why an earlier row request's rows cannot be recognised now, or `None` when they can."""
    if earlier.get("scenario") != "rows":
        return None
    if not earlier.get("row_digests"):
        return "its record holds no row digests (it ran without a row key)"
    if key is None:
        return f"no row key was given (`row_key=` or the {ROW_KEY_ENV} environment variable)"
    if earlier.get("row_key_id") != key_id(key):
        return "the row key given is not the one it was recorded with"
    return None


def check_earlier(records: list[dict], key: Optional[bytes], policy: str) -> list[dict]:
    """The earlier forget sets; raises `ValueError` (one line) when earlier rows cannot be recognised and `policy` is
    "refuse"."""
    earlier = earlier_forget_sets(records)
    if policy != "refuse":
        return earlier
    for entry in earlier:
        why = _unidentifiable(entry, key)
        if why is not None:
            raise ValueError(
                f"Deletion request {entry['request']} of this model forgot {entry.get('num_forget')} rows that cannot "
                f"be recognised in this dataset: {why}. Give the data owner's key (`row_key=` or {ROW_KEY_ENV}) so "
                "that they stay out of the remain set, or set earlier_rows='proceed' (`--earlier_rows proceed`) to "
                "run anyway (those rows may then be learned again)."
            )
    return earlier


def earlier_rows_of(split, earlier: dict, key: Optional[bytes], digests_cache: dict) -> Optional[np.ndarray]:
    """Row ids of `split.dataset` that belong to the `earlier` forget set; `None` when they cannot be recognised."""
    classes = earlier.get("forget_classes")
    if classes:
        labels = _labels(split.dataset, split.label_column)
        return np.flatnonzero(np.isin(labels, classes))
    if earlier.get("scenario") == "rows" and _unidentifiable(earlier, key) is None:
        # Once per dataset and key: `unlearn`, `evaluate` and the save all look the rows up.
        name = (getattr(split.dataset, "_fingerprint", None) or id(split.dataset), len(split.dataset), key_id(key))
        if name not in digests_cache:
            digests_cache[name] = np.asarray(row_digests(split.dataset, key))
        return np.flatnonzero(np.isin(digests_cache[name], np.asarray(earlier["row_digests"])))
    return None


def _labels(dataset, column: str) -> np.ndarray:
    return np.asarray(dataset.select_columns([column]).with_format("numpy")[:][column])


def accumulate(unlearner, split, refuse: bool = True):
    """`split` with the earlier requests' forget sets out of its remain set (and test rows); the split itself when
    there is nothing earlier. Refuses (see [`check_earlier`]) before any weight changes; with `refuse=False`
    (evaluation, which changes no weight) it leaves out what it can recognise."""
    if getattr(split, "_earlier_excluded", False) or not unlearner.records:
        return split
    key = resolve_row_key(getattr(unlearner, "row_key", None))
    earlier = check_earlier(unlearner.records, key, unlearner.config.earlier_rows if refuse else "proceed")
    if hasattr(split, "remain_indices") and hasattr(split, "dataset"):
        split = _exclude_rows(unlearner, split, earlier, key)
    elif hasattr(split, "forget_prompts"):
        split = _exclude_prompts(split, earlier, unlearner.config.caption_column)
    else:
        return split
    split._earlier_excluded = True
    return split


def _digests_cache(unlearner) -> dict:
    if getattr(unlearner, "_row_digests", None) is None:
        unlearner._row_digests = {}
    return unlearner._row_digests


def _exclude_rows(unlearner, split, earlier: list[dict], key: Optional[bytes]):
    cache, dropped = _digests_cache(unlearner), []
    for entry in earlier:
        rows = earlier_rows_of(split, entry, key, cache)
        if rows is not None:
            dropped.append(rows)
    split = copy.copy(split)
    split._original_test = split.test_dataset  # the earlier classes' held-out rows are measured again from it
    if dropped:
        drop = np.concatenate(dropped).astype(np.int64)
        split.remain_indices = np.setdiff1d(split.remain_indices, drop)
        split.num_excluded_earlier = int(np.setdiff1d(drop, np.asarray(split.forget_indices, np.int64)).size)
    # A class forgotten earlier is no longer part of what is kept; one forgotten again now stays this split's own.
    classes = {int(c) for e in earlier for c in e.get("forget_classes") or []}
    classes = sorted(classes - set(split.forget_classes or []))
    if classes and split.test_dataset is not None:
        labels = _labels(split.test_dataset, split.label_column)
        split.test_dataset = split.test_dataset.select(np.flatnonzero(~np.isin(labels, classes)).tolist())
    return split


def _exclude_prompts(split, earlier: list[dict], caption_column: str):
    prompts = {p for e in earlier for p in e.get("forget_prompts") or []}
    split = copy.copy(split)
    if not prompts:
        return split
    if split.anchor_prompts is None and split.forget_prompts is not None:  # anchors default to the remain prompts
        split.anchor_prompts = dict(split.concepts)
    if split.remain_prompts and prompts & set(split.remain_prompts):
        split.remain_prompts = [p for p in split.remain_prompts if p not in prompts] or None
    data = split.remain_dataset
    if data is not None and caption_column in data.column_names:
        captions = data[caption_column]
        split.remain_dataset = data.select([i for i, c in enumerate(captions) if c not in prompts])
    return split


# Measuring again
@torch.no_grad()
def remeasure_earlier(unlearner, split) -> list[dict]:
    """The earlier forget sets measured on the current model: a classifier's accuracy on the earlier rows (FA) and on
    the held-out rows of earlier classes (TA_forget); a text-to-image model's concept gap of earlier prompts."""
    key = resolve_row_key(getattr(unlearner, "row_key", None))
    cache, out = _digests_cache(unlearner), []
    for entry in earlier_forget_sets(unlearner.records):
        before = unlearner.records[entry["request"] - 1].get("metrics") or {}
        result = {"request": entry["request"], "metrics": None, "metrics_at_request": _scalars(before)}
        if unlearner.family.name == "image_classifier" and hasattr(split, "dataset"):
            result["metrics"], result["note"] = _classifier_now(unlearner, split, entry, key, cache)
        elif unlearner.family.name == "text_to_image" and entry.get("forget_prompts"):
            result["metrics"], result["note"] = _concept_now(unlearner, split, entry), None
        else:
            result["note"] = "not measured: this family's metrics need a judge (record them with record_metrics)"
        out.append(result)
    return out


def _scalars(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _classifier_now(unlearner, split, entry, key, cache):
    rows = earlier_rows_of(split, entry, key, cache)
    if rows is None:
        return None, "not measured: its rows cannot be recognised in this dataset"
    family, model, bs = unlearner.family, unlearner.model, unlearner.config.eval_batch_size
    metrics = {"num_rows": int(len(rows))}
    if len(rows):
        logits, labels = predict_logits(family, model, split.dataset.select(rows.tolist()), bs, desc="earlier")
        metrics["FA"] = 100.0 * float((logits.argmax(-1) == labels).float().mean())
    test = getattr(split, "_original_test", split.test_dataset)
    classes = entry.get("forget_classes")
    if classes and test is not None:
        held = np.flatnonzero(np.isin(_labels(test, split.label_column), classes))
        if len(held):
            logits, labels = predict_logits(family, model, test.select(held.tolist()), bs, desc="earlier test")
            metrics["TA_forget"] = 100.0 * float((logits.argmax(-1) == labels).float().mean())
    return metrics, None


def _concept_now(unlearner, split, entry) -> Optional[dict]:
    """The concept gap of each earlier prompt to its anchor, on this request's concept images at fixed noise."""
    family, model = unlearner.family, unlearner.model
    images = split.forget
    prompts, anchors = entry["forget_prompts"], entry.get("anchor_prompts") or [""] * len(entry["forget_prompts"])
    device = next(model.parameters()).device
    caption = family.caption_column
    base = images.select_columns([family.image_column])
    training = model.training
    model.eval()
    gaps = []
    try:
        for prompt, anchor in dict(zip(prompts, anchors)).items():
            rows = base.add_column(caption, [prompt] * len(base)).add_column("anchor", [anchor] * len(base))
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                torch.manual_seed(0)
                gap, _ = _mean(family, rows, 32, 8, device, lambda b: family.remap_loss(model, b, None))
            gaps.append(gap)
    finally:
        model.train(training)
    return {"concept_gap": float(np.mean(gaps)), "concept_images": min(32, len(base))}


# The model a request started from
class StartState:
    """A CPU copy of what a run changes (its trainable weights and every buffer), so that metrics of the model the
    request started from can be taken after the run (the card's "before" column) when nobody measured them before."""

    def __init__(self, model: torch.nn.Module, params: list[torch.Tensor]):
        self.tensors = list(params) + [b for _, b in model.named_buffers()]
        self.saved = [t.detach().to("cpu", copy=True) for t in self.tensors]

    @torch.no_grad()
    def measure(self, fn):
        """`fn()` with the starting weights in place; the current weights are put back afterwards."""
        current = [t.detach().clone() for t in self.tensors]
        try:
            for t, s in zip(self.tensors, self.saved):
                t.copy_(s.to(t.device))
            return fn()
        finally:
            for t, c in zip(self.tensors, current):
                t.copy_(c)


def keep_start(unlearner, method, params: list[torch.Tensor]) -> Optional[StartState]:
    """The starting weights, kept when nobody measured the model before the run and `Unlearner.evaluate` can measure
    it after (classifiers, text-to-image); costs a CPU copy of the trainable weights (the adapters alone under LoRA).
    A method that starts from fresh weights (retrain) has no "before" of its own."""
    evaluable = unlearner.family.name in ("image_classifier", "text_to_image")
    if unlearner.metrics_before is not None or method.reinit or not evaluable:
        return None
    return StartState(unlearner.family.model, params)


def measure_after_run(unlearner, split, measure) -> None:
    """After a run: the "before" metrics from the starting weights when none were taken, and the earlier forget sets
    measured again (kept for the record and the card)."""
    if unlearner.result is None:
        return
    start = getattr(unlearner, "_start_state", None)
    if unlearner.metrics_before is None and start is not None:
        unlearner.metrics_before = start.measure(measure)
    if unlearner.records:
        unlearner.earlier_metrics = remeasure_earlier(unlearner, split)

"""The cost of a run in passes: counts derived by hand from the config and the split sizes, in the result and in
`unlearning_record.json`; the forward counter; the benchmark table's passes/RT column."""

import json
import math

import pytest

from hf_unlearn import ForgetRemainSplit, UnlearnConfig, Unlearner
from hf_unlearn.passes import KINDS, PassCounter, planned_work, training_rows
from hf_unlearn.tiny.classifiers import DIGITS_SIZE, digits_image_processor, tiny_classifier


@pytest.fixture(scope="module")
def split(digits):
    return ForgetRemainSplit.from_dataset(digits["train"].select(range(300)), forget_classes=[3])


def _run(model, split, **kwargs):
    config = UnlearnConfig(output_dir="", seed=1, **kwargs)
    unlearner = Unlearner.from_pretrained(model, config, image_processor=digits_image_processor())
    return unlearner, unlearner.unlearn(split)


def _loader_rows(num_rows, batch, count):
    """Rows in the first `count` batches of a loader that runs epoch after epoch, the last batch of each short."""
    sizes = [min(batch, num_rows - start) for start in range(0, num_rows, batch)]
    return sum(sizes[i % len(sizes)] for i in range(count))


def test_sfr_on_passes_by_hand(split, tmp_path):
    cycles, k, batch = 3, 2, 16
    unlearner, result = _run(
        tiny_classifier("resnet", seed=0),
        split,
        method="sfr_on",
        max_steps=cycles,
        remain_steps_per_forget=k,
        per_device_train_batch_size=batch,
    )
    nf, nr = len(split.forget), len(split.remain)
    work = result.work
    # Fast-slow: a cycle is 1 forget step + K remain steps; the mask reads every forget and remain row once.
    assert (work["optimizer_steps"], work["forget_steps"], work["remain_steps"]) == (
        cycles * (1 + k),
        cycles,
        cycles * k,
    )
    assert work["passes"] == {
        "saliency": math.ceil(nf / batch) + math.ceil(nr / batch),
        "geometry": 0,
        "forget": cycles,
        "remain": cycles * k,
        "replay": 0,
    }
    assert work["rows"] == {
        "saliency": nf + nr,
        "geometry": 0,
        "forget": _loader_rows(nf, batch, cycles),
        "remain": _loader_rows(nr, batch, cycles * k),
        "replay": 0,
    }
    assert work["forward"] == work["passes"]  # no frozen model: one forward per backward
    assert training_rows(work) == nf + nr + _loader_rows(nf, batch, cycles) + _loader_rows(nr, batch, cycles * k)
    # The planner that benchmarks/pass_ratio.py uses for the published presets gives the same counts without running.
    assert planned_work(unlearner.config, unlearner.method, nf, nr) == work
    # The record carries the same counts.
    unlearner.save_pretrained(tmp_path / "out")
    record = json.loads((tmp_path / "out" / "unlearning_record.json").read_text())
    assert record["requests"][-1]["work"] == work


def test_counter_hooks_are_removed_and_kinds_checked():
    model = tiny_classifier("resnet", seed=0)
    counter = PassCounter()
    counter.watch(model, model)  # watched once
    with pytest.raises(ValueError, match="pass kind"):
        with counter.counting("warmup"):
            pass
    import torch

    x = torch.zeros(1, 1, DIGITS_SIZE, DIGITS_SIZE)
    with counter.counting("remain"):
        model(pixel_values=x)
    model(pixel_values=x)  # outside any kind: not counted
    counter.close()
    with counter.counting("remain"):
        model(pixel_values=x)
    assert counter.work["forward"] == {**dict.fromkeys(KINDS, 0), "remain": 1}


def _fake_record(method, seed, work=None, **extra):
    metrics = dict.fromkeys(("FA", "RA", "TA", "TA_forget", "MIA", "MIA_svc", "KL", "JS", "avg_d"), 1.0)
    return {
        "method": method,
        "model": "resnet",
        "scenario": "class",
        "seed": seed,
        "config": "tuned",
        "config_hash": "x",
        "status": "ok",
        "rte_s": 1.0,
        "cpu_s": 1.0,
        "work": work,
        "resolved": {"per_device_train_batch_size": 64},
        **metrics,
        **extra,
    }


def test_report_has_passes_per_rt(tmp_path):
    from hf_unlearn.benchmarks.report import write_outputs

    rows = dict.fromkeys(KINDS, 0)
    new = {
        "passes": {**rows, "saliency": 22, "forget": 20, "remain": 40},
        "rows": {**rows, "saliency": 1000, "forget": 1280, "remain": 2560},
    }
    old = {"passes": {"saliency": 22, "forget": 20, "remain": 40}}  # a run file from before rows were counted
    records = [_fake_record(m, s) for s in (0, 1) for m in ("original", "retrain", "retrain_seed2")]
    records += [_fake_record("sfr_on", 0, new, rt_rows=300 * 64), _fake_record("sfr_on", 1, old)]
    cfg = {"recipes": {"resnet": {"max_steps": 300, "batch_size": 64}}}
    write_outputs(tmp_path, records, cfg, "resnet-class-c3")
    table = (tmp_path / "results.md").read_text()
    head = next(line for line in table.splitlines() if line.startswith("| row"))
    cells = {line.split("|")[1].strip(): line.split("|")[1:-1] for line in table.splitlines() if line.startswith("| ")}
    column = [c.strip() for c in head.split("|")[1:-1]].index("passes/RT")
    ratios = [(1000 + 1280 + 2560) / (300 * 64), 82 * 64 / (300 * 64)]
    mean, std = sum(ratios) / 2, abs(ratios[0] - ratios[1]) / 2**0.5
    assert cells["sfr_on"][column].strip() == f"{mean:.3f} ± {std:.3f}"
    assert cells["retrain"][column].strip() == "1.000 ± 0.000" and cells["original"][column].strip() == "–"
    saved = {(r["method"], r["seed"]): r for r in json.loads((tmp_path / "results.json").read_text())}
    assert saved[("sfr_on", 0)]["train_rows"] == 4840 and saved[("sfr_on", 1)]["rt_rows"] == 300 * 64

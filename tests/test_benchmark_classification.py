"""The digits benchmark end to end in quick mode, its resume/shard logic, and the hyperparameter selection."""

import json
import struct

import pytest

from hf_unlearn.benchmarks.classification import (
    _shard_of,
    classifier_methods,
    load_config,
    main,
    make_context,
    parse_args,
    plan,
)
from hf_unlearn.benchmarks.report import RECORD_KEYS, select_tuned
from hf_unlearn.benchmarks.runner import config_hash
from hf_unlearn.methods import list_methods


@pytest.fixture(scope="module")
def quick_output(tmp_path_factory):
    import torch

    threads = torch.get_num_threads()
    out = tmp_path_factory.mktemp("bench")
    try:
        # One thread: these tiny models gain nothing from two, and busy-waiting threads slow a shared CI machine.
        assert main(["--quick", "--output", str(out), "--threads", "1"]) == 0
    finally:
        torch.set_num_threads(threads)  # `main` sets the thread count of the whole process
    return out


def test_quick_mode_writes_records_tables_and_chart(quick_output):
    records = json.loads((quick_output / "results.json").read_text())
    assert {r["method"] for r in records} == {"original", "retrain", "retrain_seed2", "sfr_on_kl", "random_label"}
    for record in records:
        assert set(RECORD_KEYS) <= set(record)
    by_method = {r["method"]: r for r in records}
    # RT is its own reference; the original still knows the forgotten class, so it is far from RT.
    assert by_method["retrain"]["avg_d"] == pytest.approx(0.0) and by_method["retrain"]["KL"] == pytest.approx(0.0)
    assert by_method["original"]["FA"] > by_method["retrain"]["FA"] + 50
    assert by_method["original"]["avg_d"] > by_method["retrain_seed2"]["avg_d"]
    assert by_method["retrain"]["rte_s"] > 0 and by_method["sfr_on_kl"]["rte_s"] > 0
    table = (quick_output / "results.md").read_text()
    rows = [line.split("|")[1].strip() for line in table.splitlines() if line.startswith("| ") and "---" not in line]
    assert rows[:4] == ["row", "original", "retrain", "retrain_seed2"]
    png = (quick_output / "results.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", png[16:24])[0] > 400


def test_resume_skips_finished_runs(quick_output):
    runs = sorted((quick_output / "runs").glob("*.json"))
    stamps = {p: p.stat().st_mtime_ns for p in runs}
    import torch

    threads = torch.get_num_threads()
    try:
        assert main(["--quick", "--output", str(quick_output), "--resume", "--threads", "1"]) == 0
    finally:
        torch.set_num_threads(threads)
    assert sorted((quick_output / "runs").glob("*.json")) == runs
    assert all(p.stat().st_mtime_ns == stamps[p] for p in runs)


def test_shards_partition_the_runs():
    cfg = load_config(parse_args([]).config)
    args = parse_args(["--phase", "search"])
    all_tasks = plan(args, cfg, make_context(args, cfg), "search")
    tasks = {i: [t for t in all_tasks if _shard_of(t, all_tasks, 3) == i] for i in range(3)}
    assert all(tasks.values())
    flat = [t for i in range(3) for t in tasks[i]]
    assert len(flat) == len(all_tasks) and sorted(map(repr, flat)) == sorted(map(repr, all_tasks))
    # Same search budget for every method: as many grid points each, on every validation seed.
    per_method = {m: sum(1 for t in all_tasks if t[2] == m) for m in classifier_methods()}
    assert len(set(per_method.values())) == 1 and min(per_method.values()) >= 3 * len(cfg["validation_seeds"])


def test_every_classifier_method_has_a_grid_and_sfr_variants_are_registered():
    cfg = load_config(parse_args([]).config)
    assert set(classifier_methods()) <= set(cfg["grids"])
    assert {"sfr_on", "sfr_on_kl", "sfr_on_rl", "sfr_on_bound"} <= set(list_methods("image_classifier"))
    assert not set(cfg["validation_seeds"]) & set(cfg["report_seeds"])


def test_select_picks_lowest_mean_and_reports_sensitivity():
    grids = {"m": [{"learning_rate": 0.1}, {"learning_rate": 0.2}]}
    records = []
    for seed, (a, b) in enumerate([(1.0, 3.0), (5.0, 3.0), (0.0, 3.0)]):
        for point, value in zip(grids["m"], (a, b)):
            records.append(
                {
                    "phase": "search",
                    "tag": "t",
                    "method": "m",
                    "seed": seed,
                    "avg_d": value,
                    "config_hash": config_hash(point),
                }
            )
    chosen = select_tuned(records, "t", grids, ["m"])["m"]
    assert chosen["overrides"] == {"learning_rate": 0.1}  # mean 2.0 beats 3.0
    assert chosen["val_avg_d"] == pytest.approx(2.0)
    assert chosen["sensitivity"] == pytest.approx(2.5)


def test_bad_arguments_are_named():
    with pytest.raises(SystemExit):
        parse_args(["--shard", "2/2"])
    with pytest.raises(SystemExit, match="not_a_method"):
        main(["--quick", "--methods", "not_a_method", "--output", "/nonexistent"])


def test_update_docs_replaces_only_the_marked_block(tmp_path):
    from hf_unlearn.benchmarks.report import DOCS_END, DOCS_START, update_docs

    docs = tmp_path / "bench.md"
    docs.write_text(f"intro\n{DOCS_START}\nold table\n{DOCS_END}\nreading\n")
    results = tmp_path / "results.md"
    results.write_text("# title\n\n## table\n| a |\n")
    update_docs(docs, results)
    assert docs.read_text() == f"intro\n{DOCS_START}\n## table\n| a |\n{DOCS_END}\nreading\n"
    docs.write_text("no markers")
    with pytest.raises(ValueError, match="results:start"):
        update_docs(docs, results)

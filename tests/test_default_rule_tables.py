"""The default budget rule's committed tables (`benchmarks/default_rule.py`, `benchmarks/default_rule_variants.py`)
rebuild from their run files: a number edited by hand in a table, or a run file changed without its table, fails."""

import importlib
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDER = ROOT / "benchmark_results" / "default_rule"


@pytest.fixture
def scripts(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    return importlib.import_module("default_rule"), importlib.import_module("default_rule_variants")


def test_the_report_table_rebuilds_from_its_runs(scripts):
    default_rule, _ = scripts
    committed = (FOLDER / "results-all.md").read_text()
    order = list(dict.fromkeys(line.split(" | ")[0].strip("| ") for line in committed.splitlines()[2:] if line))
    records = [json.loads(p.read_text()) for p in sorted((FOLDER / "runs").glob("*.json"))]
    records.sort(key=lambda r: order.index(r["tag"]))
    assert {r["row"] for r in records} == set(default_rule.ROWS), "every row of the table has run files"
    assert default_rule.table(records) + "\n" == committed


def test_the_variant_summary_rebuilds_from_its_runs(scripts):
    _, variants = scripts
    folder = FOLDER / "validation_10seeds"
    assert variants.summary(folder) == (folder / "summary.md").read_text()
    runs = [json.loads(p.read_text()) for p in (folder / "default" / "runs").glob("*.json")]
    assert {r["seed"] for r in runs} == set(range(100, 110)), "the variants are chosen on validation seeds only"

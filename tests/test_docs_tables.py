"""Every results table in the docs rebuilds from its committed run files, and every table pasted from an output file
is that file's table, unchanged: a number edited by hand, or a run file changed without its table, fails here."""

import json
import re
from pathlib import Path

import pytest
import yaml

from hf_unlearn.benchmarks.classification import DEFAULT_CONFIG, load_config, make_context, parse_args, plan
from hf_unlearn.benchmarks.report import DOCS_END, DOCS_START, render_results, table_records, validation_table
from hf_unlearn.benchmarks.runner import run_one

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmark_results"
SETTINGS = [("resnet", "class"), ("resnet", "random"), ("vit", "class"), ("vit", "random")]
# Docs pages and the committed output files whose tables they show.
PASTED = {
    "docs/benchmarks.md": [
        "benchmark_results/results.md",
        "benchmark_results/default_rule/results-all.md",
        "benchmark_results/default_rule/validation_10seeds/summary.md",
        *sorted(f"benchmark_results/validation/{p.name}" for p in (RESULTS / "validation").glob("*.md")),
    ],
    "docs/attacks.md": ["benchmark_results/world_attacks/report.md", "benchmark_results/ddpm_attacks/report.md"],
    "docs/benchmarks_diffusion.md": ["benchmark_results/diffusion/report.md"],
    "docs/budget.md": ["benchmark_results/budget_unit/results.md"],
    "docs/lora.md": ["benchmark_results/lora_vs_full/results.md"],
    "docs/performance.md": ["benchmark_results/performance/pass_ratio.md"],
    "docs/privacy_audit.md": [
        "benchmark_results/privacy_audit/results-cheap-8-4.md",
        "benchmark_results/privacy_audit/results-full-32-16.md",
    ],
    "docs/robustness.md": ["benchmark_results/robustness/results.md"],
    "docs/stable_diffusion.md": [
        "benchmark_results/world_t2i/report.md",
        "benchmark_results/world_t2i/ten_seeds/report.md",
        "benchmark_results/text_to_image/report.md",
        "benchmark_results/flow_memory/summary.md",
    ],
    "docs/world.md": ["benchmark_results/world_t2i/report.md", "benchmark_results/world_t2i/ten_seeds/report.md"],
}


def tables(text: str) -> list[str]:
    """The markdown tables of `text`, each as its lines joined."""
    return [block.strip() for block in re.findall(r"(?:^\|.*\n?)+", text, flags=re.M)]


def _key(record: dict) -> str:
    return json.dumps(record, sort_keys=True)


def test_classification_results_rebuild_from_the_run_files():
    cfg = load_config(DEFAULT_CONFIG)
    rebuilt = []
    for model, scenario in SETTINGS:
        args = parse_args(["--model", model, "--scenario", scenario, "--phase", "tables", "--output", str(RESULTS)])
        ctx = make_context(args, cfg)
        tasks = plan(args, cfg, ctx, "report")
        found = [{**run_one(ctx, *t[:4], resume=True, run_missing=False), "config": t[4]} for t in tasks]
        missing = [t[:4] for t, r in zip(tasks, found) if not r.get("method")]
        assert not missing, f"{ctx.tag}: report runs without a run file: {missing[:3]}"
        rebuilt += table_records(found, cfg, ctx.tag)
    committed = json.loads((RESULTS / "results.json").read_text())
    assert sorted(map(_key, rebuilt)) == sorted(map(_key, committed))
    text, _ = render_results(committed, cfg)
    assert text == (RESULTS / "results.md").read_text()
    docs = (ROOT / "docs/benchmarks.md").read_text()
    block = docs.split(DOCS_START, 1)[1].split(DOCS_END, 1)[0].strip()
    assert block == text.split("\n", 2)[2].strip()


@pytest.mark.parametrize("model,scenario", SETTINGS)
def test_validation_tables_rebuild_from_the_search_runs(model, scenario):
    cfg = yaml.safe_load(DEFAULT_CONFIG.read_text())
    args = parse_args(["--model", model, "--scenario", scenario, "--phase", "tables", "--output", str(RESULTS)])
    tag = make_context(args, cfg).tag
    table = validation_table(tag, RESULTS, cfg["tuned"][tag])
    assert (RESULTS / "validation" / f"{tag}.md").read_text() == table


@pytest.mark.parametrize("page", sorted(PASTED))
def test_pasted_tables_are_their_output_files_tables(page):
    """A docs table whose header is a header of one of its output files must be one of that file's tables exactly."""
    sources = [t for path in PASTED[page] for t in tables((ROOT / path).read_text())]
    headers = {t.splitlines()[0] for t in sources}
    shown = [t for t in tables((ROOT / page).read_text()) if t.splitlines()[0] in headers]
    assert shown, f"{page} shows none of the tables of {PASTED[page]}"
    for table in shown:
        assert table in sources, f"{page}: a table differs from its output file:\n{table[:400]}"

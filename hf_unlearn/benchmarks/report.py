"""Tables, chart and hyperparameter selection of the classification benchmark, from its per-run JSON records."""

from __future__ import annotations

import json
import math
import os
import statistics
from pathlib import Path
from typing import Optional

import numpy as np

from ..utils import atomic_write_json, atomic_write_text
from .runner import REFERENCE_ROWS, config_hash

TABLE_KEYS = ("FA", "RA", "TA", "TA_forget", "MIA", "MIA_svc", "KL", "JS", "avg_d")
RECORD_KEYS = (
    "method",
    "model",
    "scenario",
    "seed",
    *TABLE_KEYS[:-1],
    "avg_d",
    "rte_s",
    "cpu_s",
    "train_rows",
    "rt_rows",
)
GAP_KEYS = ("FA", "RA", "TA", "MIA")


def load_records(output: str | os.PathLike, phase: Optional[str] = None) -> list[dict]:
    """Every run record under `output/runs` (optionally of one phase)."""
    runs = Path(output) / "runs"
    records = [json.loads(p.read_text()) for p in sorted(runs.glob("*.json"))] if runs.exists() else []
    return [r for r in records if phase is None or r.get("phase") == phase]


def _mean(values) -> float:
    values = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    return float(np.mean(values)) if values else float("nan")


def _std(values) -> float:
    values = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def select_tuned(records: list[dict], tag: str, grids: dict, methods: list[str]) -> dict[str, dict]:
    """Per method, the grid point with the lowest mean Avg.D over the validation seeds, and the method's sensitivity.

    Sensitivity is the mean Avg.D over the whole grid: how much a user who does not tune loses on average.
    """
    chosen = {}
    for method in methods:
        scores = []
        for index, point in enumerate(grids.get(method) or []):
            key = config_hash(dict(point))
            runs = [
                r
                for r in records
                if r.get("phase") == "search"
                and r.get("tag") == tag
                and r["method"] == method
                and r["config_hash"] == key
            ]
            if runs:
                avg = [r["avg_d"] for r in runs]
                scores.append((_mean(avg), _std(avg), index, dict(point), len(runs)))
        if not scores:
            continue
        best = min(scores, key=lambda s: (s[0], s[1]))
        chosen[method] = {
            "overrides": best[3],
            "grid_index": best[2],
            "val_avg_d": round(best[0], 3),
            "val_avg_d_std": round(best[1], 3),
            "val_seeds": best[4],
            "sensitivity": round(_mean([s[0] for s in scores]), 3),
            "grid_points": len(scores),
        }
    return chosen


def rt_rows(cfg: dict, model: str) -> Optional[int]:
    """Rows RT runs forward and backward: its recipe's steps × batch size (`recipes` of the benchmark config)."""
    recipe = (cfg.get("recipes") or {}).get(model)
    return None if not recipe else int(recipe["max_steps"]) * int(recipe["batch_size"])


def training_rows(record: dict, rt: Optional[int] = None) -> Optional[float]:
    """Rows a run passed forward and backward through the trained model, all kinds (saliency, forget, remain, ...).

    From the run's `work["rows"]`; run files written before rows were counted have only `work["passes"]`, read as
    passes × batch size (an upper bound by at most one short batch per pass over a set). RT's rows (`rt`) for the
    retrain rows, none for `original`.
    """
    if record["method"] in ("retrain", "retrain_seed2"):
        return None if rt is None else float(rt)
    work = record.get("work") or {}
    if work.get("rows"):
        return float(sum(work["rows"].values()))
    batch = (record.get("resolved") or {}).get("per_device_train_batch_size")
    if not work.get("passes") or not batch:
        return None
    return float(sum(work["passes"].values()) * batch)


def _row_name(record: dict) -> str:
    return f"{record['method']} (defaults)" if record.get("config") == "default" else record["method"]


def aggregate(records: list[dict], tuned: Optional[dict] = None) -> list[dict]:
    """Mean and std per table row (reference rows first), with RTE relative to RT of the same seed."""
    rt_cpu = {r["seed"]: r["cpu_s"] for r in records if r["method"] == "retrain" and r.get("cpu_s")}
    order = list(REFERENCE_ROWS)
    for r in records:
        if _row_name(r) not in order:
            order.append(_row_name(r))
    rows = []
    for name in order:
        group = [r for r in records if _row_name(r) == name]
        if not group:
            continue
        row = {"row": name, "method": group[0]["method"], "config": group[0].get("config"), "n": len(group)}
        for key in (*TABLE_KEYS, "rte_s", "cpu_s"):
            row[key] = (_mean([r.get(key) for r in group]), _std([r.get(key) for r in group]))
        ratios = [r["cpu_s"] / rt_cpu[r["seed"]] for r in group if r.get("cpu_s") and rt_cpu.get(r["seed"])]
        row["rte_ratio"] = (_mean(ratios), _std(ratios))
        passes = [r["train_rows"] / r["rt_rows"] for r in group if r.get("train_rows") and r.get("rt_rows")]
        row["pass_ratio"] = (_mean(passes), _std(passes))
        entry = (tuned or {}).get(group[0]["method"]) if group[0].get("config") == "tuned" else None
        row["sensitivity"] = None if entry is None else entry.get("sensitivity")
        row["failed"] = sum(1 for r in group if r.get("status", "ok") != "ok")
        # What identifies the runs: their seeds and results (the aggregated records carry no config hash, so a hash
        # would make every defaults row look like the tuned row of its method and drop it from the chart).
        row["runs"] = sorted({repr((r["seed"], *(r.get(k) for k in TABLE_KEYS))) for r in group})
        rows.append(row)
    return rows


def _cell(pair, digits=2) -> str:
    mean, std = pair
    return "–" if mean is None or math.isnan(mean) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def markdown_table(rows: list[dict]) -> str:
    head = [
        "row",
        "n",
        "FA",
        "RA",
        "TA",
        "TA_forget",
        "MIA",
        "MIA_svc",
        "KL",
        "JS",
        "Avg.D",
        "RTE s",
        "RTE/RT",
        "passes/RT",
        "sens.",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [row["row"] + (f" ({row['failed']} diverged)" if row["failed"] else ""), str(row["n"])]
        cells += [_cell(row[k]) for k in TABLE_KEYS]
        cells += [_cell(row["rte_s"], 1), _cell(row["rte_ratio"], 2), _cell(row.get("pass_ratio", (None, 0)), 3)]
        cells.append("–" if row["sensitivity"] is None else f"{row['sensitivity']:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def table_records(records: list[dict], cfg: dict, tag: str) -> list[dict]:
    """The entries of `results.json` for one table: each run's metrics, the rows it trained and its row config."""
    # Run files record RT's rows from the recipe that trained RT; older ones get it from the config's recipe.
    rt = rt_rows(cfg, records[0]["model"]) if records else None
    return [
        {
            **{k: r.get(k) for k in RECORD_KEYS},
            "train_rows": training_rows(r, r.get("rt_rows") or rt),
            "rt_rows": r.get("rt_rows") or rt,
            "tag": tag,
            "config": r.get("config"),
            "status": r.get("status"),
            "overrides": r.get("overrides"),
        }
        for r in records
    ]


def render_results(everything: list[dict], cfg: dict) -> tuple[str, dict]:
    """`results.md` (every table of `results.json`) and the aggregated rows per table (for the chart)."""
    sections, tables = [], {}
    for table_tag in sorted({r["tag"] for r in everything}):
        group = [r for r in everything if r["tag"] == table_tag]
        tuned = (cfg.get("tuned") or {}).get(table_tag)
        rows = aggregate(group, tuned)
        tables[table_tag] = rows
        seeds = sorted({r["seed"] for r in group})
        sections.append(f"## {table_tag} (seeds {', '.join(map(str, seeds))})\n\n{markdown_table(rows)}\n")
    intro = (
        "Mean ± std over seeds. Accuracies and MIA in %, KL/JS in nats on the forget set against RT, Avg.D = mean "
        "|Δ| to RT over FA, RA, TA, MIA. `retrain_seed2` is the noise floor. RTE/RT: method time over RT's time "
        "on the same seed, both measured as the CPU time of a 1-thread process (wall time `RTE s` depends on "
        "how busy the machine was). passes/RT: rows the method passed forward and backward through the model "
        "(saliency, forget and remain passes together) over the rows of RT's recipe (steps × batch size), a cost "
        "independent of the hardware and of the load. sens.: mean Avg.D over the method's whole grid on the "
        "validation seeds.\n\n"
    )
    return "# Digits classification benchmark\n\n" + intro + "\n".join(sections), tables


def write_outputs(output: str | os.PathLike, records: list[dict], cfg: dict, tag: str) -> None:
    """Merges this table's records into `results.json` and rewrites `results.md` and `results.png`."""
    output = Path(output)
    path = output / "results.json"
    kept = [r for r in json.loads(path.read_text()) if r.get("tag") != tag] if path.exists() else []
    everything = kept + table_records(records, cfg, tag)
    atomic_write_json(path, everything)
    text, tables = render_results(everything, cfg)
    atomic_write_text(output / "results.md", text)
    plot(tables, output / "results.png")


def plot(tables: dict[str, list[dict]], path: Path) -> None:
    """Per table, per metric: each row's gap to RT (bars, std as whiskers), the noise floor and `original` as lines."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    metrics = [
        ("FA", "|ΔFA| to RT"),
        ("RA", "|ΔRA| to RT"),
        ("TA", "|ΔTA| to RT"),
        ("MIA", "|ΔMIA| to RT"),
        ("KL", "KL(RT ‖ model) on D_f"),
        ("avg_d", "Avg.D to RT"),
    ]
    fig, axes = plt.subplots(
        len(tables), len(metrics), figsize=(3.3 * len(metrics), 0.32 * 16 * len(tables) + 1), squeeze=False
    )
    for r, (tag, rows) in enumerate(tables.items()):
        ref = next((row for row in rows if row["row"] == "retrain"), None)
        floor = next((row for row in rows if row["row"] == "retrain_seed2"), None)
        original = next((row for row in rows if row["row"] == "original"), None)
        tuned_runs = {row["method"]: row["runs"] for row in rows if row["config"] == "tuned"}
        # A defaults row that is the very same runs as the tuned row adds nothing to the chart (the table keeps it).
        bars = [
            row
            for row in rows
            if row["row"] not in REFERENCE_ROWS
            and not (row["config"] == "default" and tuned_runs.get(row["method"]) == row["runs"])
        ]
        for c, (key, title) in enumerate(metrics):
            ax = axes[r][c]
            values, errors = [], []
            for row in bars:
                mean, std = row[key]
                if key in GAP_KEYS and ref is not None:
                    mean = abs(mean - ref[key][0])
                values.append(0.0 if math.isnan(mean) else mean)
                errors.append(std)
            colors = [
                ("tab:green" if row["method"].startswith("sfr_on") else "tab:blue")
                if row["config"] != "default"
                else ("lightgreen" if row["method"].startswith("sfr_on") else "lightsteelblue")
                for row in bars
            ]
            ax.barh(range(len(bars)), values, xerr=errors, color=colors, capsize=2)
            ax.set_yticks(range(len(bars)))
            ax.set_yticklabels([row["row"] for row in bars] if c == 0 else [], fontsize=7)
            ax.invert_yaxis()
            limit = max([v + e for v, e in zip(values, errors)] + [1e-3]) * 1.3
            for line, style, label in [(floor, "--", "noise floor (retrain_seed2)"), (original, ":", "original")]:
                if line is None:
                    continue
                value = line[key][0]
                value = abs(value - ref[key][0]) if key in GAP_KEYS and ref is not None else value
                if math.isnan(value):
                    continue
                if value <= limit:
                    ax.axvline(value, color="red" if style == "--" else "black", linestyle=style, label=label)
                else:  # keep the bars readable: the original is often far off the scale of the methods
                    ax.text(0.98, 0.01, f"original: {value:.2f} →", transform=ax.transAxes, ha="right", fontsize=7)
            ax.set_xlim(0, limit)
            ax.set_title(f"{tag}\n{title}" if c == 0 else title, fontsize=8)
            ax.tick_params(axis="x", labelsize=7)
            if r == 0 and c == len(metrics) - 1:
                ax.legend(fontsize=6, loc="lower right")
    fig.suptitle(
        "Gap to retraining (lower is better; green: SFR-on variants, blue: baselines; pale: library defaults)",
        fontsize=10,
    )
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


DOCS_START, DOCS_END = "<!-- results:start -->", "<!-- results:end -->"


def update_docs(docs_path: str | os.PathLike, results_md: str | os.PathLike) -> None:
    """Replaces the block between the results markers of `docs_path` with the tables of `results_md`."""
    text = Path(docs_path).read_text()
    if DOCS_START not in text or DOCS_END not in text:
        raise ValueError(f"{docs_path} has no '{DOCS_START}' ... '{DOCS_END}' block; add the two markers first.")
    tables = Path(results_md).read_text().split("\n", 2)[2].strip()  # drop the file's own title
    head, rest = text.split(DOCS_START, 1)
    atomic_write_text(docs_path, f"{head}{DOCS_START}\n{tables}\n{DOCS_END}{rest.split(DOCS_END, 1)[1]}")


def validation_table(tag: str, output: str | os.PathLike, tuned: dict) -> str:
    """The validation-search table of one benchmark tag as markdown: per method, the grid point frozen by
    `--phase select --freeze` (`tuned`, the config's `tuned:` entry of the tag), its mean ± std Avg.D and D_KL over
    the validation seeds, the sensitivity (mean Avg.D over the whole grid) and when its search runs finished."""
    runs = [json.loads(f.read_text()) for f in Path(output, "runs").glob(f"search-{tag}-*.json")]
    lines = [
        "| method | chosen on validation | val. Avg.D | val. D_KL | sensitivity (grid mean) | search runs from |",
        "|---|---|---|---|---|---|",
    ]
    for method, entry in sorted(tuned.items(), key=lambda kv: kv[1]["val_avg_d"]):
        mine = [r for r in runs if r["method"] == method and r["overrides"] == entry["overrides"]]
        kl = [r["KL"] for r in mine]
        kl_text = f"{statistics.mean(kl):.2f} ± {statistics.pstdev(kl):.2f}" if kl else "–"
        dates = sorted({r.get("finished_at", "")[:10] for r in mine})
        point = ", ".join(f"{k}={v}" for k, v in entry["overrides"].items())
        lines.append(
            f"| {method} | {point} | {entry['val_avg_d']:.2f} ± {entry['val_avg_d_std']:.2f} | {kl_text} | "
            f"{entry['sensitivity']:.2f} | {', '.join(dates)} |"
        )
    return "\n".join(lines) + "\n"

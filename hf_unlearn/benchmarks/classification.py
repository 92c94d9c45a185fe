"""`hf-unlearn benchmark`: the digits classification benchmark against retraining, resumable and shardable.

Phases (``--phase``):

- ``search``: every method × its grid (``benchmark_classification.yaml`` beside this file) on the validation seeds;
- ``select``: per method, the grid point with the lowest mean Avg.D on the validation seeds (``--freeze`` writes it
  into the config file's ``tuned`` section, which is what ``report`` reads);
- ``report``: the three reference rows, every method with its frozen tuned config and with the library defaults, on
  the report seeds; then ``results.json``, ``results.md`` and ``results.png`` in ``--output``;
- ``all``: the three in order (the selection is used without being frozen into the config file).

Each run is one JSON file under ``OUTPUT/runs``; ``--resume`` skips finished ones and ``--shard i/n`` runs every n-th
run, so several processes (or machines sharing a folder) can split the work. ``--quick`` runs a shortened recipe, one
seed and two methods (under a minute) and exists to test the pipeline: its numbers are not results.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Optional

import yaml
from accelerate.logging import get_logger

from ..config import UnlearnConfig
from ..methods import list_methods
from ..resolve import resolve_config
from ..tiny.classifiers import TrainingRecipe
from ..utils import atomic_write_text
from .report import load_records, select_tuned, update_docs, write_outputs
from .runner import REFERENCE_ROWS, BenchmarkContext, config_hash, run_one

logger = get_logger(__name__)

DEFAULT_CONFIG = Path(__file__).resolve().parent / "benchmark_classification.yaml"  # ships in the wheel
QUICK_METHODS = ("sfr_on_kl", "random_label")
QUICK_RECIPE = TrainingRecipe(max_steps=50, learning_rate=3e-3)
QUICK_TRAIN_ROWS = 600


def classifier_methods() -> list[str]:
    """Every registered classifier method except `retrain` (it is a reference row)."""
    return [m for m in list_methods("image_classifier") if m != "retrain"]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="hf-unlearn benchmark", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--model", default="resnet", choices=["resnet", "vit"], help="Tiny classifier to train and unlearn."
    )
    p.add_argument("--scenario", default="class", choices=["class", "random"], help="Class-wise or random rows.")
    p.add_argument("--forget-class", type=int, default=None, help="Class forgotten in the class scenario.")
    p.add_argument("--forget-fraction", type=float, default=None, help="Share of rows forgotten in the random one.")
    p.add_argument("--methods", default=None, help="Comma-separated methods (default: every classifier method).")
    p.add_argument("--seeds", default=None, help="Comma-separated seeds (default: the phase's seeds in the config).")
    p.add_argument(
        "--phase",
        default="all",
        choices=["search", "select", "report", "all", "tables"],
        help="What to run ('tables': rewrite the outputs from the report runs already on disk, run nothing).",
    )
    p.add_argument("--output", default="benchmark_results", help="Folder for runs, models and results.")
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="Grids, seeds, recipes and frozen tuned configs.")
    p.add_argument("--freeze", action="store_true", help="With --phase select: write the choice into --config.")
    p.add_argument("--resume", action="store_true", help="Skip runs whose result file exists.")
    p.add_argument("--shard", default="0/1", help="'i/n': run only every n-th run, starting at the i-th.")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process (same for every method).")
    p.add_argument("--no-defaults", action="store_true", help="Report: skip the library-default rows.")
    p.add_argument("--references-only", action="store_true", help="Report: only original, retrain, retrain_seed2.")
    p.add_argument("--quick", action="store_true", help="Pipeline check: short recipe, 1 seed, 2 methods.")
    p.add_argument(
        "--update-docs",
        default=None,
        help="With the tables: also replace the marked results block of this markdown file (docs/benchmarks.md).",
    )
    args = p.parse_args(argv)
    index, _, count = args.shard.partition("/")
    try:
        args.shard_index, args.shard_count = int(index), int(count or 1)
    except ValueError:
        p.error(f"--shard is '{args.shard}'; give it as i/n, e.g. 0/2.")
    if not 0 <= args.shard_index < args.shard_count:
        p.error(f"--shard is '{args.shard}'; i must be in 0..n-1.")
    return args


def load_config(path: str | os.PathLike) -> dict[str, Any]:
    if not os.path.exists(path):
        raise FileNotFoundError(f"--config {path} does not exist; pass the benchmark config (see docs/benchmarks.md).")
    with open(path) as fh:
        return yaml.safe_load(fh) or {}


def _ints(text: Optional[str]) -> Optional[list[int]]:
    return None if text is None else [int(s) for s in text.split(",") if s.strip()]


def _methods(args) -> list[str]:
    known = classifier_methods()
    if args.methods is None:
        return list(QUICK_METHODS) if args.quick else known
    chosen = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in chosen if m not in known]
    if unknown:
        raise SystemExit(f"error: --methods has {unknown}, not classifier methods; choose from {', '.join(known)}.")
    return chosen


def make_context(args, cfg) -> BenchmarkContext:
    recipe = QUICK_RECIPE if args.quick else TrainingRecipe(**cfg["recipes"][args.model])
    return BenchmarkContext(
        args.output,
        args.model,
        args.scenario,
        recipe,
        forget_class=args.forget_class if args.forget_class is not None else cfg.get("forget_class", 3),
        forget_fraction=args.forget_fraction if args.forget_fraction is not None else cfg.get("forget_fraction", 0.5),
        train_rows=QUICK_TRAIN_ROWS if args.quick else None,
    )


def tuned_entry(cfg, ctx, method) -> Optional[dict]:
    return ((cfg.get("tuned") or {}).get(ctx.tag) or {}).get(method)


def plan(args, cfg, ctx, phase: str, tuned: Optional[dict] = None) -> list[tuple]:
    """The runs of a phase, as (phase, seed, method, overrides, label) tuples, in a fixed order."""
    methods = _methods(args)
    tasks = []
    if phase == "search":
        for seed in _ints(args.seeds) or cfg["validation_seeds"]:
            for method in methods:
                grid = cfg["grids"].get(method)
                if not grid:
                    raise SystemExit(f"error: no grid for '{method}' in {args.config}; add one under `grids`.")
                tasks += [("search", seed, method, dict(point), f"grid{i}") for i, point in enumerate(grid)]
        return tasks
    seeds = ([0] if args.quick else None) or _ints(args.seeds) or cfg["report_seeds"]
    for seed in seeds:
        tasks += [("report", seed, name, {}, "reference") for name in REFERENCE_ROWS]
        rows = len(ctx.split(seed).forget_indices)
        for method in [] if args.references_only else methods:
            entry = (tuned or {}).get(method) or tuned_entry(cfg, ctx, method)
            if entry is not None:
                tasks.append(("report", seed, method, dict(entry["overrides"]), "tuned"))
            elif args.quick:
                # Quick mode checks the pipeline, not the methods: the smallest grid point keeps it under a minute.
                tasks.append(("report", seed, method, dict(cfg["grids"][method][0]), "tuned"))
            else:
                logger.warning(f"No frozen tuned config for {method} on {ctx.tag}; only its default row is run.")
            if not (args.no_defaults or args.quick):
                same = entry is not None and _resolved(method, entry["overrides"], rows) == _resolved(method, {}, rows)
                # Defaults that resolve to the tuned values are the same run: reuse it instead of running it twice.
                tasks.append(("report", seed, method, dict(entry["overrides"]) if same else {}, "default"))
    return tasks


def _resolved(method: str, overrides: dict, num_forget_rows: int) -> dict:
    """What a run would use on a forget set of `num_forget_rows` rows: the budget in cycles, whatever its unit."""
    config = resolve_config(UnlearnConfig(method=method, output_dir="", **overrides), "image_classifier")
    values = config.resolve_budget(num_forget_rows, config.per_device_train_batch_size).to_dict()
    return {k: v for k, v in values.items() if k not in ("output_dir", "seed", "num_forget_epochs")}


def _shard_of(task, tasks, count: int) -> int:
    """Shard of a run: counted over distinct runs, so two labels of one run (tuned = default) share a shard."""
    keys = list(dict.fromkeys((t[0], t[1], t[2], config_hash(t[3])) for t in tasks))
    return keys.index((task[0], task[1], task[2], config_hash(task[3]))) % count


def execute(tasks, args, ctx) -> list[dict]:
    records, done = [], {}
    mine = [t for t in tasks if _shard_of(t, tasks, args.shard_count) == args.shard_index]
    for n, (phase, seed, method, overrides, label) in enumerate(mine):
        key = (phase, seed, method, config_hash(overrides))
        if key not in done:
            done[key] = run_one(ctx, phase, seed, method, overrides, resume=args.resume)
        record = done[key]
        print(
            f"[{n + 1}/{len(mine)}] {phase} {ctx.tag} seed={seed} {method} {label} {overrides} "
            f"avg_d={record.get('avg_d')} rte={record.get('rte_s')}",
            flush=True,
        )
        records.append({**record, "config": label})
    return records


def freeze(path, cfg, tag: str, tuned: dict) -> None:
    """Writes the selection into the config file's `tuned` section (atomically).

    Methods not in `tuned` (not searched in this call, e.g. `--methods` named a subset) keep their frozen entries.
    """
    cfg = dict(cfg)
    cfg["tuned"] = dict(cfg.get("tuned") or {})
    cfg["tuned"][tag] = {**(cfg["tuned"].get(tag) or {}), **tuned}
    atomic_write_text(path, yaml.safe_dump(cfg, sort_keys=False, width=118))


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch  # noqa: PLC0415
    from accelerate import PartialState  # noqa: PLC0415

    torch.set_num_threads(args.threads)
    PartialState()  # the accelerate logger needs the state before the first warning
    os.environ.setdefault("TQDM_DISABLE", "1")
    cfg = load_config(args.config)
    ctx = make_context(args, cfg)
    tuned = None
    if args.phase in ("search", "all") and not args.quick:
        execute(plan(args, cfg, ctx, "search"), args, ctx)
    if args.phase in ("select", "all") and not args.quick:
        tuned = select_tuned(load_records(args.output), ctx.tag, cfg["grids"], _methods(args))
        for method, entry in tuned.items():
            print(f"select {ctx.tag} {method}: {entry}")
        if args.freeze:
            freeze(args.config, cfg, ctx.tag, tuned)
            print(f"froze the selection for {ctx.tag} into {args.config}")
        cfg.setdefault("tuned", {})
        cfg["tuned"] = {**(cfg["tuned"] or {}), ctx.tag: tuned}
    if args.phase == "tables":
        tasks = plan(args, cfg, ctx, "report")
        found = [{**run_one(ctx, *t[:4], resume=True, run_missing=False), "config": t[4]} for t in tasks]
        found = [r for r in found if r.get("method")]
        write_outputs(args.output, found, cfg, ctx.tag)
        print(f"{ctx.tag}: tables from {len(found)} of {len(tasks)} report records in {args.output}")
        if args.update_docs:
            update_docs(args.update_docs, Path(args.output) / "results.md")
            print(f"updated the results block of {args.update_docs}")
    if args.phase in ("report", "all"):
        frozen = tuned if args.phase == "all" else None
        records = execute(plan(args, cfg, ctx, "report", frozen), args, ctx)
        if args.shard_count == 1:
            write_outputs(args.output, records, cfg, ctx.tag)
        else:
            print("Sharded run: once every shard is done, write the tables with `--phase tables` (no --shard).")
    return 0


if __name__ == "__main__":
    sys.exit(main())

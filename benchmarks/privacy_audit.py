"""The per-example privacy audit (U-LiRA) of every classifier method on the digits benchmark.

    OMP_NUM_THREADS=1 python benchmarks/privacy_audit.py [--model resnet] [--seed 0] [--num-shadows 8]
        [--num-rt-shadows 4] [--memorised-rows 50] [--output benchmark_results/privacy_audit]

Three forget sets of the benchmark's `original` (benchmark_results/models): class 3, a random half of the rows (the
benchmark's scenarios, with their RT and RT-seed-2 models) and the rows the halves shadows find most memorised (RT
and RT-seed-2 trained here with the benchmark's recipe). Each method runs at its frozen tuned setting
(hf_unlearn/benchmarks/benchmark_classification.yaml; the memorised set uses the random-rows one) and is audited
against the same shadows. One JSON per row under `OUTPUT/runs/MODE-HALVES-RT` (rerunning skips finished rows; the
shadows resume too, and a larger run reuses a smaller one's), then `OUTPUT/results-MODE-HALVES-RT.{json,md}`.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
import yaml

from hf_unlearn import UnlearnConfig, Unlearner
from hf_unlearn.audit import AuditConfig, memorisation, most_memorised, privacy_audit
from hf_unlearn.benchmarks.classification import DEFAULT_CONFIG, classifier_methods
from hf_unlearn.benchmarks.runner import SEED2_OFFSET, BenchmarkContext
from hf_unlearn.data import ForgetRemainSplit
from hf_unlearn.evaluation import predict_logits
from hf_unlearn.tiny.classifiers import TrainingRecipe, digits_image_processor, tiny_classifier, train_classifier
from hf_unlearn.utils import atomic_directory, atomic_write_json, atomic_write_text

ROWS = ("original", "retrain", "retrain_seed2")
COLUMNS = ("tpr_at_1pct_fpr", "tpr_at_0.1pct_fpr", "auc", "distinguishable")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="resnet", choices=["resnet", "vit"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-shadows", type=int, default=8)
    p.add_argument("--num-rt-shadows", type=int, default=4)
    p.add_argument("--mode", default="cheap", choices=["cheap", "full"])
    p.add_argument("--memorised-rows", type=int, default=50)
    p.add_argument("--methods", default=None, help="Comma-separated (default: every classifier method).")
    p.add_argument("--models", default="benchmark_results", help="Folder holding the benchmark's models/.")
    p.add_argument("--output", default="benchmark_results/privacy_audit")
    return p.parse_args(argv)


def load(folder) -> Unlearner:
    return Unlearner.from_pretrained(
        str(folder), UnlearnConfig(output_dir=""), image_processor=digits_image_processor()
    )


def memorised_rt(args, recipe, split, name: str) -> Unlearner:
    """RT (or RT-seed-2) of the memorised forget set, trained with the benchmark's recipe and kept on disk."""
    # The memorised rows depend on the shadows (their number): one pair of models per mode.
    tag = f"{args.model}-memorised{args.memorised_rows}-{args.mode}{args.num_shadows}-s{args.seed}"
    folder = Path(args.output) / "models" / tag / name
    if not (folder / "config.json").exists():
        seed = args.seed + (SEED2_OFFSET if name == "retrain_seed2" else 0)
        trained = train_classifier(tiny_classifier(args.model, seed=seed), split.remain, recipe, seed=seed)
        with atomic_directory(folder) as tmp:
            trained.model.save_pretrained(tmp, safe_serialization=True)
    return load(folder)


def forget_sets(args, cfg, recipe, original, audit_config):
    """(name, split, tuned tag, {row: model}) for the class, random and memorised forget sets."""
    sets = []
    for scenario in ("class", "random"):
        ctx = BenchmarkContext(args.models, args.model, scenario, recipe)
        split = ctx.split(args.seed)
        refs = {name: ctx.reference_model(args.seed, name)[1] for name in ROWS[1:]}
        sets.append((scenario, split, ctx.tag, {name: load(f) for name, f in refs.items()}))
    train = sets[1][1].dataset
    scores = memorisation(original, train, audit_config)
    ids = most_memorised(scores, args.memorised_rows)
    split = ForgetRemainSplit.from_dataset(train, forget_ids=ids, test_dataset=sets[1][1].test_dataset)
    refs = {name: memorised_rt(args, recipe, split, name) for name in ROWS[1:]}
    sets.append((f"memorised{args.memorised_rows}", split, f"{args.model}-random-f0.5", refs))
    return sets


def forget_accuracy(unlearner, split) -> float:
    logits, labels = predict_logits(unlearner.family, unlearner.model, split.forget)
    return float(100 * (logits.argmax(1) == labels).float().mean())


def run_tag(args) -> str:
    return f"{args.mode}-{args.num_shadows}-{args.num_rt_shadows}"


def audit_row(args, cfg, name, split, tag, model_of, audit_config) -> dict:
    path = Path(args.output) / "runs" / run_tag(args) / f"{args.model}-s{args.seed}-{name}-{model_of[0]}.json"
    if path.exists():
        return json.loads(path.read_text())
    row, make = model_of
    start = time.process_time()
    unlearner, overrides = make()
    result = privacy_audit(unlearner, split, audit_config)
    record = {
        "forget_set": name,
        "row": row,
        "overrides": overrides,
        "num_forget": len(split.forget_indices),
        "FA": forget_accuracy(unlearner, split),
        **result.to_dict(rows=True),
        "cpu_s": time.process_time() - start,
    }
    atomic_write_json(path, record)
    return record


def rows_of(args, cfg, original_dir, split, tag, refs):
    tuned = cfg["tuned"][tag]
    yield "original", lambda: (load(original_dir), None)
    for name, model in refs.items():
        yield name, (lambda m=model: (m, None))
    methods = args.methods.split(",") if args.methods else classifier_methods()
    for method in methods:
        overrides = dict(tuned[method]["overrides"])

        def make(method=method, overrides=overrides):
            config = UnlearnConfig(method=method, seed=args.seed, output_dir="", **overrides)
            unlearner = Unlearner.from_pretrained(str(original_dir), config, image_processor=digits_image_processor())
            unlearner.unlearn(split)
            return unlearner, overrides

        yield method, make


def table(records: list[dict]) -> str:
    lines = []
    for name in dict.fromkeys(r["forget_set"] for r in records):
        mine = [r for r in records if r["forget_set"] == name]
        lines += [f"**{name}** ({mine[0]['num_forget']} forget rows, {mine[0]['num_negatives']} negatives)", ""]
        lines += ["| model | FA | TPR@1%FPR | TPR@0.1%FPR | AUC | distinguishable from RT | mean log LR |"]
        lines += ["|---|---|---|---|---|---|---|"]
        for r in mine:
            m = r["model"]
            cells = [f"{r['FA']:.1f}", *(f"{100 * m[k]:.1f}" for k in ("tpr_at_1pct_fpr", "tpr_at_0.1pct_fpr"))]
            cells += [f"{m['auc']:.3f}", f"{100 * m['distinguishable']:.1f}", f"{m['mean_lr']:.2f}"]
            lines.append(f"| {r['row']} | " + " | ".join(cells) + " |")
        f = mine[0]["floor"]
        lines.append(
            f"| (floor: {mine[0]['floor_source']}) | – | {100 * f['tpr_at_1pct_fpr']:.1f} | "
            f"{100 * f['tpr_at_0.1pct_fpr']:.1f} | {f['auc']:.3f} | {100 * f['distinguishable']:.1f} | "
            f"{f['mean_lr']:.2f} |"
        )
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    os.environ.setdefault("TQDM_DISABLE", "1")
    cfg = yaml.safe_load(Path(DEFAULT_CONFIG).read_text())
    recipe = TrainingRecipe(**cfg["recipes"][args.model])
    audit_config = AuditConfig(
        shadows_dir=str(Path(args.output) / "shadows" / args.model),
        mode=args.mode,
        num_shadows=args.num_shadows,
        num_rt_shadows=args.num_rt_shadows,
        shadow_max_steps=recipe.max_steps,
        shadow_learning_rate=recipe.learning_rate,
        shadow_batch_size=recipe.batch_size,
    )
    original_dir = Path(args.models) / "models" / f"{args.model}-s{args.seed}" / "original"
    original = load(original_dir)
    records = []
    for name, split, tag, refs in forget_sets(args, cfg, recipe, original, audit_config):
        for row, make in rows_of(args, cfg, original_dir, split, tag, refs):
            record = audit_row(args, cfg, name, split, tag, (row, make), audit_config)
            m = record["model"]
            print(f"{name} {row}: FA {record['FA']:.1f} " + " ".join(f"{k}={m[k]:.3f}" for k in COLUMNS), flush=True)
            records.append(record)
    name = f"results-{run_tag(args)}"
    atomic_write_json(Path(args.output) / f"{name}.json", [{**r, "per_row": None} for r in records])
    atomic_write_text(Path(args.output) / f"{name}.md", table(records) + "\n")
    print(table(records))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

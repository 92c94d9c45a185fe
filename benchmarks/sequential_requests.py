"""Two deletion requests on the README demo's model: forget class 3, then class 5 on the saved output.

For full weights and LoRA, with the family's default method and settings (as `hf-unlearn demo` runs them), it reports
class 3's forget accuracy after each request (the second request's value is the record's re-measurement), class 5's,
and the remain / test accuracy. For LoRA it also runs the alternative that docs/lora.md weighs: the second request
training the first adapter itself (loaded trainable with plain peft) instead of a fresh adapter on the merged one.

    python benchmarks/sequential_requests.py --output benchmark_results/sequential_requests  # results.json, results.md
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from hf_unlearn import ForgetRemainSplit, UnlearnConfig, Unlearner, load_digits_dataset  # noqa: E402
from hf_unlearn.tiny.classifiers import RECIPES, digits_image_processor, tiny_classifier, train_classifier  # noqa: E402

KEYS = ("FA", "RA", "TA")


def _round(metrics: dict) -> dict:
    return {k: round(float(metrics[k]), 2) for k in KEYS}


# The family's defaults (what `hf-unlearn demo` runs), and the shorter, larger-step setting of tests/test_requests.py.
SETTINGS = {
    "default": lambda lora: {},
    "short": lambda lora: dict(
        method="sfr_on", learning_rate=1e-2 if lora else 3e-3, max_steps=16, remain_steps_per_forget=1,
        per_device_train_batch_size=32, saliency_max_batches=2,
    ),
}  # fmt: skip


def request(source, target: Path, split, lora: bool, seed: int, setting: str) -> dict:
    config = UnlearnConfig(
        lora=lora, seed=seed, output_dir=str(target) + "_run", overwrite_output_dir=True, **SETTINGS[setting](lora)
    )
    unlearner = Unlearner.from_pretrained(source, config, image_processor=digits_image_processor())
    unlearner.unlearn(split)
    metrics = unlearner.evaluate(split)
    if isinstance(source, (str, Path)):
        unlearner.save_pretrained(target, overwrite=True)
    earlier = {e["request"]: e["metrics"] for e in unlearner.earlier_metrics or []}
    if not isinstance(source, (str, Path)):  # no record to re-measure from: class 3's rows measured directly
        class3 = ForgetRemainSplit.from_dataset(split.dataset, forget_classes=[3], test_dataset=split.test_dataset)
        earlier = {1: unlearner.evaluate(class3)}
    return {"metrics": _round(metrics), "earlier_FA": {k: round(v["FA"], 2) for k, v in earlier.items()}}


def continued_adapter(original: Path, first: Path, split, seed: int, setting: str) -> dict:
    """The second request on the first adapter itself (trainable), as a PeftModel object: no merge, no stacking.
    The remain set leaves class 3 out as in the stacked run, so only the adapter handling differs."""
    from peft import PeftModel  # noqa: PLC0415
    from transformers import AutoModelForImageClassification  # noqa: PLC0415

    base = AutoModelForImageClassification.from_pretrained(original)
    model = PeftModel.from_pretrained(base, str(first), is_trainable=True)
    kept = ForgetRemainSplit.from_dataset(split.dataset, forget_classes=[5], test_dataset=split.test_dataset)
    labels = np.asarray(split.dataset["label"])
    kept.remain_indices = kept.remain_indices[labels[kept.remain_indices] != 3]
    kept.test_dataset = kept.test_dataset.select(np.flatnonzero(np.asarray(kept.test_dataset["label"]) != 3))
    return request(model, first.parent / "unused", kept, True, seed, setting)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="benchmark_results/sequential_requests")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--models", default=None, help="Where the models go (default: a temporary folder).")
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    models = Path(args.models or tempfile.mkdtemp(prefix="sequential_requests_"))
    ds = load_digits_dataset()
    original = models / "original"
    trained = train_classifier(
        tiny_classifier("resnet", seed=args.seed), ds["train"], RECIPES["resnet"], seed=args.seed
    )
    trained.model.save_pretrained(original)
    digits_image_processor().save_pretrained(original)
    splits = [ForgetRemainSplit.from_dataset(ds["train"], forget_classes=[c], test_dataset=ds["test"]) for c in (3, 5)]
    results, lines = {}, []
    for setting in SETTINGS:
        header = "| run | class 3 FA after request 1 | after request 2 | class 5 FA | RA | TA |"
        lines += [f"Setting `{setting}`:", "", header]
        lines.append("|---" * 6 + "|")
        for lora in (False, True):
            name = "lora" if lora else "full"
            first = models / f"{setting}_{name}_class3"
            second = models / f"{setting}_{name}_class3_class5"
            r1 = request(str(original), first, splits[0], lora, args.seed, setting)
            r2 = request(str(first), second, splits[1], lora, args.seed, setting)
            runs = {name: {"request_1": r1, "request_2": r2}}
            if lora:
                continued = continued_adapter(original, first, splits[1], args.seed, setting)
                runs["lora, first adapter trained on"] = {"request_1": r1, "request_2": continued}
            for run, res in runs.items():
                r1, r2 = res["request_1"], res["request_2"]
                lines.append(
                    f"| {run} | {r1['metrics']['FA']} | {r2['earlier_FA'].get(1, '–')} | {r2['metrics']['FA']} | "
                    f"{r2['metrics']['RA']} | {r2['metrics']['TA']} |"
                )
            results[setting] = results.get(setting, {}) | runs
        lines.append("")
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "results.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()

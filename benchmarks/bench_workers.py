"""Data-loading workers: wall time of one digits unlearning run with `dataloader_num_workers` 0, 1 and 2, in one
process, alternating, and whether the weights are bit-identical (they must be).

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python benchmarks/bench_workers.py --repeats 3 \
        --output benchmark_results/performance/workers.md

A ratio against the inline run (workers 0) in the same command; on a 2-core CPU the workers compete with the model for
the same cores, so this measures the cost of the option where it cannot help as much as its gain.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

import torch  # noqa: E402

from hf_unlearn import ForgetRemainSplit, UnlearnConfig, Unlearner, load_digits_dataset  # noqa: E402
from hf_unlearn.tiny.classifiers import RECIPES, digits_image_processor, tiny_classifier, train_classifier  # noqa: E402
from hf_unlearn.utils import atomic_write_text  # noqa: E402


def _digest(model) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode() + tensor.detach().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", default="0,1,2")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--cycles", type=int, default=60)
    p.add_argument("--output", default=None, help="Markdown file for the table (printed either way).")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    ds = load_digits_dataset()
    split = ForgetRemainSplit.from_dataset(ds["train"], forget_classes=[3], test_dataset=ds["test"])
    original = train_classifier(tiny_classifier("resnet", seed=0), split.dataset, RECIPES["resnet"], seed=0).model
    processor = digits_image_processor()
    workers = [int(w) for w in args.workers.split(",")]
    times, digests = {w: [] for w in workers}, {}
    for _ in range(args.repeats):
        for w in workers:
            config = UnlearnConfig(
                method="sfr_on", max_steps=args.cycles, dataloader_num_workers=w, seed=0, output_dir=""
            )
            unlearner = Unlearner.from_pretrained(copy.deepcopy(original), config, image_processor=processor)
            start = time.perf_counter()
            unlearner.unlearn(split)
            times[w].append(time.perf_counter() - start)
            digests.setdefault(w, set()).add(_digest(unlearner.model))
    base = statistics.median(times[workers[0]])
    lines = [
        f"<!-- written by: python benchmarks/bench_workers.py --repeats {args.repeats} --cycles {args.cycles} -->",
        "",
        f"Digits ResNet, `sfr_on`, {args.cycles} cycles, class 3 forgotten, 1 torch thread, {os.cpu_count()} CPUs.",
        "",
        "| dataloader_num_workers | median wall (s) | runs | ratio to 0 | weights digest |",
        "|---:|---:|---|---:|---|",
    ]
    for w in workers:
        med = statistics.median(times[w])
        runs = ", ".join(f"{t:.2f}" for t in times[w])
        lines.append(f"| {w} | {med:.2f} | {runs} | {med / base:.2f} | {', '.join(sorted(digests[w]))} |")
    same = len(set().union(*digests.values())) == 1
    lines += ["", f"Weights bit-identical across worker counts and repeats: {'yes' if same else 'NO'}."]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.output:
        os.makedirs(os.path.dirname(args.output) or ".", exist_ok=True)
        atomic_write_text(args.output, text)
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())

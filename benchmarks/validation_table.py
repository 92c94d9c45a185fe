"""Prints (or writes) the validation-search table of one benchmark tag as markdown, from the run files and the frozen
selection.

    python benchmarks/validation_table.py resnet-class-c3 [--output benchmark_results] [--write]
        [--config hf_unlearn/benchmarks/benchmark_classification.yaml]

One row per method: the grid point frozen by `hf-unlearn benchmark --phase select --freeze`, its mean ± std Avg.D and
D_KL over the validation seeds, the sensitivity (mean Avg.D over the whole grid), and when its search runs finished.
`--write` saves it as `<output>/validation/<tag>.md`, the file docs/benchmarks.md shows (tests/test_docs_tables.py).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from hf_unlearn.benchmarks.report import validation_table
from hf_unlearn.utils import atomic_write_text


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("tag")
    p.add_argument("--output", default="benchmark_results")
    p.add_argument("--config", default="hf_unlearn/benchmarks/benchmark_classification.yaml")
    p.add_argument("--write", action="store_true", help="Write <output>/validation/<tag>.md instead of printing.")
    args = p.parse_args()
    tuned = yaml.safe_load(Path(args.config).read_text())["tuned"][args.tag]
    table = validation_table(args.tag, args.output, tuned)
    if args.write:
        path = Path(args.output, "validation", f"{args.tag}.md")
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, table)
    else:
        print(table, end="")


if __name__ == "__main__":
    main()

"""The digits classification benchmark as a script, for `accelerate launch` (same flags as `hf-unlearn benchmark`).

python scripts/benchmark_classification.py --model resnet --scenario class --phase all --resume
accelerate launch --num_processes 2 scripts/benchmark_classification.py --quick --output /tmp/bench
"""

import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from hf_unlearn.benchmarks.classification import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())

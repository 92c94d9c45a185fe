"""`accelerate launch scripts/evaluate.py --model PATH --forget_classes 3 [--reference RT_PATH]` (same flags as
`hf-unlearn evaluate`: every `UnlearnConfig` field, `--config file.yaml`, flags overriding the file). Under several
processes each rank scores a shard and the metrics are computed once over all gathered rows."""

import sys

from hf_unlearn.cli import evaluate_main

if __name__ == "__main__":
    sys.exit(evaluate_main(sys.argv[1:]))

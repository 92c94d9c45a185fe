"""`python scripts/benchmark_diffusion.py [--quick] [--output DIR] [--report docs/benchmarks_diffusion.md]`: the digits
class-conditional diffusion benchmark (same flags as `hf-unlearn benchmark-diffusion`)."""

import sys

from hf_unlearn.benchmarks.diffusion import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""`accelerate launch scripts/unlearn.py --model PATH --forget_classes 3 --method sfr_on --output_dir out/` (same flags
as `hf-unlearn unlearn`; only the main process prints and saves)."""

import sys

from hf_unlearn.cli import unlearn_main

if __name__ == "__main__":
    sys.exit(unlearn_main(sys.argv[1:]))

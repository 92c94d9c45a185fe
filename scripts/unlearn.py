"""`accelerate launch scripts/unlearn.py --model PATH --forget-classes 3 --method sfr_on --output out/` (same flags as
`hf-unlearn unlearn`)."""

import sys

from hf_unlearn.cli import unlearn_main

if __name__ == "__main__":
    sys.exit(unlearn_main(sys.argv[1:]))

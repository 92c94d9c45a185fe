"""A small checkpointed unlearning run, used by tests/test_resume.py in a subprocess that the test kills with SIGKILL.

Usage: `python tests/resume_worker.py MODEL_DIR OUTPUT_DIR [--resume] [--final FILE]`. The same `run` is called
in-process by the test for the uninterrupted reference and for the resumed run, so all three share every setting.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

import torch  # noqa: E402

TOTAL_CYCLES = 16
THREADS = 1  # the thread count changes CPU reduction order (hence the last bits); 1 is fastest on a busy CPU


def make_split():
    from hf_unlearn import ForgetRemainSplit, load_digits_dataset

    train = load_digits_dataset()["train"].select(range(240))
    return ForgetRemainSplit.from_dataset(train, forget_classes=[3])


def run(model_dir: str, output_dir: str, resume: bool = False, total: int = TOTAL_CYCLES):
    """Unlearns class 3 with SFR-on (random-label forget step: draws from the step generator); saves every cycle."""
    from hf_unlearn import UnlearnConfig, Unlearner
    from hf_unlearn.tiny.classifiers import digits_image_processor

    torch.set_num_threads(THREADS)
    config = UnlearnConfig(
        method="sfr_on_rl",
        seed=7,
        max_steps=total,
        remain_steps_per_forget=2,
        per_device_train_batch_size=16,
        learning_rate=1e-2,
        saliency_max_batches=2,
        output_dir=output_dir,
        checkpointing_steps=1,
        checkpoints_total_limit=2,
        resume_from_checkpoint="latest" if resume else None,
        logging_steps=100,
    )
    unlearner = Unlearner.from_pretrained(model_dir, config, image_processor=digits_image_processor())
    unlearner.unlearn(make_split())
    return unlearner


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("model_dir")
    parser.add_argument("output_dir")
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()
    run(args.model_dir, args.output_dir, resume=args.resume)


if __name__ == "__main__":
    main()

"""Runs that a test kills with SIGKILL at a chosen point, in a subprocess (tests/test_one_writer.py).

Usage: `python tests/kill_worker.py MODE MODEL_DIR OUTPUT_DIR`, MODE one of
- `hold`: take the lock of OUTPUT_DIR as a run does, print `held`, then wait to be killed;
- `mask`: run SFR-on; SIGKILL itself halfway through writing the saliency mask (its temporary file is on disk);
- `save`: run SFR-on with checkpoints, then save into OUTPUT_DIR; SIGKILL itself inside the final save, after the
  complete new copy was written and the run's checkpoints were moved into it, before it replaced OUTPUT_DIR.
"""

from __future__ import annotations

import os
import signal
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")


def config(output_dir: str, **kwargs):
    from hf_unlearn import UnlearnConfig

    values = dict(method="sfr_on", max_steps=2, saliency_max_batches=1, per_device_train_batch_size=32)
    return UnlearnConfig(output_dir=output_dir, **(values | kwargs))


def split():
    from hf_unlearn import ForgetRemainSplit, load_digits_dataset

    return ForgetRemainSplit.from_dataset(load_digits_dataset()["train"].select(range(200)), forget_classes=[3])


def run(model_dir: str, output_dir: str, **kwargs):
    from hf_unlearn import Unlearner

    unlearner = Unlearner.from_pretrained(model_dir, config(output_dir, **kwargs))
    unlearner.unlearn(split())
    return unlearner


def _die():
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def main(mode: str, model_dir: str, output_dir: str) -> None:
    import torch

    torch.set_num_threads(1)
    if mode == "hold":
        from hf_unlearn.run_lock import claim_output_dir

        claim_output_dir(output_dir)
        print("held", flush=True)
        time.sleep(600)
    elif mode == "mask":
        import hf_unlearn.parts.saliency as saliency

        def half_written(tensors, path, metadata=None):
            with open(path, "wb") as fh:
                fh.write(b"\x00" * 64)  # a partial temporary file, as a kill mid-write leaves it
            _die()

        saliency.save_file = half_written
        run(model_dir, output_dir)
    elif mode == "save":
        import hf_unlearn.hub as hub

        unlearner = run(model_dir, output_dir, checkpointing_steps=1, checkpoints_total_limit=2)
        real = hub._carry_run_artifacts

        def carry_then_die(target, tmp):
            real(target, tmp)
            _die()

        hub._carry_run_artifacts = carry_then_die
        unlearner.save_pretrained(output_dir)
    raise SystemExit(f"{mode}: not killed")


if __name__ == "__main__":
    main(*sys.argv[1:4])

"""One `sfr_on` run of the engine, used by tests/test_fsdp2_engine.py as one process, under `accelerate launch` with
configs/accelerate/cpu_2proc.yaml (DDP on 2 CPU ranks) or with configs/accelerate/fsdp2_cpu.yaml (FSDP2 shards).

`python tests/fsdp2_engine_worker.py KIND OUT [--resume]`: KIND is "classifier" (a tiny ViT on the bundled digits) or
"diffusion" (the class-conditional UNet2DModel of the diffusion benchmark); the global batch is 8 rows whatever the
number of processes. The run writes into OUT/run (saliency mask, a checkpoint every cycle) and saves the unlearned
model with `save_pretrained` into OUT/model; rank 0 writes OUT/result.json (world size, mask fraction, per-cycle
losses, the names of the trainable parameters as the run saw them).
"""

import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

CYCLES, GLOBAL_BATCH = 6, 8


def make_unlearner(kind: str, out: str, world: int, resume: bool):
    from hf_unlearn import UnlearnConfig, Unlearner

    config = UnlearnConfig(
        method="sfr_on",
        max_steps=CYCLES,
        per_device_train_batch_size=GLOBAL_BATCH // world,
        remain_steps_per_forget=2,
        # SGD (momentum 0.9): Adam would turn float noise in a gradient that is zero up to rounding (a ViT's attention
        # key bias, which softmax ignores) into full-size steps, hiding what is compared.
        optim="sgd",
        learning_rate=0.05,
        saliency_max_batches=4,
        seed=0,
        output_dir=os.path.join(out, "run"),
        checkpointing_steps=1,
        resume_from_checkpoint="latest" if resume else None,
        logging_steps=100,
        stop_rule="none",  # the fixed budget: the comparison is of the steps, not of a stopping decision
    )
    if kind == "classifier":
        from hf_unlearn.tiny.classifiers import digits_image_processor, tiny_classifier

        return Unlearner.from_pretrained(
            tiny_classifier("vit", seed=0), config, image_processor=digits_image_processor()
        )
    from hf_unlearn.tiny.diffusion import tiny_scheduler, tiny_unet

    return Unlearner.from_pretrained(tiny_unet(seed=0), config, scheduler=tiny_scheduler())


def main(kind: str, out: str, resume: bool = False) -> None:
    import torch

    from hf_unlearn import ForgetRemainSplit, load_digits_dataset
    from hf_unlearn.parts.sharded import is_sharded
    from hf_unlearn.training import partial_state

    torch.set_num_threads(1)
    state = partial_state()
    unlearner = make_unlearner(kind, out, state.num_processes, resume)
    data = load_digits_dataset()["train"].select(range(160))
    result = unlearner.unlearn(ForgetRemainSplit.from_dataset(data, forget_classes=[3]))
    unlearner.save_pretrained(os.path.join(out, "model"))
    if state.is_main_process:
        summary = {
            "world": state.num_processes,
            "mask_fraction": result.mask_fraction,
            "history": [{k: v for k, v in h.items() if k.endswith("loss")} for h in result.history],
            # What the run leaves in memory: a plain model and a whole mask, as an unsharded run does.
            "sharded_left": [is_sharded(t) for t in [*unlearner.model.parameters(), *(unlearner.mask or {}).values()]],
        }
        with open(os.path.join(out, "result.json"), "w") as fh:
            json.dump(summary, fh)
    state.wait_for_everyone()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], resume="--resume" in sys.argv[3:])

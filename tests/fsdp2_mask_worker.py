"""Saliency masks on FSDP2-sharded parameters, run by tests/test_fsdp2_masks.py under `torchrun` (gloo, CPU).

`torchrun --nproc_per_node N tests/fsdp2_mask_worker.py KIND MODE OUT` builds a tiny model of KIND ("classifier": a
ViT on the bundled digits; "diffusion": the class-conditional UNet2DModel of the diffusion benchmark), takes its
trainable parameters either as they are ("plain") or sharded with `torch.distributed.fsdp.fully_shard` ("fsdp": every
child module with parameters, then the root), and computes through the library's own code (`pass_statistic`,
`FisherRatio`, `TopK`, `save_mask`, `load_mask`) the SFR-on Fisher-ratio mask and SalUn's top-k mask. It saves the
gathered masks, reloads them into the parameters' layout (a resumed run's `mask_path`) and checks them equal to the
computed ones, then takes STEPS masked steps (ascent on the forget rows, descent on the remain rows, SGD) and saves the
gathered weights before and after. Plain runs with several ranks average gradients over ranks as DDP does.
"""

import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

STEPS, GLOBAL_ROWS = 2, 8


def build(kind, world):
    from hf_unlearn import ForgetRemainSplit, UnlearnConfig, Unlearner, load_digits_dataset

    data = load_digits_dataset()["train"].select(range(200))
    split = ForgetRemainSplit.from_dataset(data, forget_classes=[3])
    # Global saliency batches of 8 rows whatever the number of ranks (as the engine's 1- vs 2-process test).
    # Clipping each batch-mean gradient (as the authors' DDPM passes) makes the Fisher ratio depend on the gradients'
    # absolute size, which the sharded sum over ranks must then get right.
    config = UnlearnConfig(
        method="sfr_on", per_device_train_batch_size=8 // world, seed=0, output_dir="", saliency_clip_norm=0.05
    )
    if kind == "classifier":
        from hf_unlearn.tiny.classifiers import digits_image_processor, tiny_classifier

        model = tiny_classifier("vit", seed=0)
        unlearner = Unlearner.from_pretrained(model, config, image_processor=digits_image_processor())
    else:
        from hf_unlearn.tiny.diffusion import tiny_scheduler, tiny_unet

        unlearner = Unlearner.from_pretrained(tiny_unet(seed=0), config, scheduler=tiny_scheduler())
    family = unlearner.family
    return family, unlearner.config, family.prepare_split(split, unlearner.config)


def shard(model):
    """Every module with parameters that is a child of the root or of a child container (a `ModuleList` has no
    forward of its own, so its items are the units), then the root."""
    from torch import nn
    from torch.distributed.fsdp import fully_shard

    for child in model.children():
        units = child.children() if isinstance(child, (nn.ModuleList, nn.ModuleDict)) else [child]
        for unit in units:
            if any(True for _ in unit.parameters()):
                fully_shard(unit)
    fully_shard(model)


def sync_plain_grads(named, world):
    import torch.distributed as dist

    for _, p in named:  # what DDP does: the mean gradient over ranks
        if p.grad is not None and world > 1:
            dist.all_reduce(p.grad)
            p.grad /= world


def main(kind, mode, out):
    import torch
    import torch.distributed as dist
    from accelerate import Accelerator
    from safetensors.torch import save_file

    from hf_unlearn.parts.saliency import (
        SaliencyInputs,
        get_saliency,
        load_mask,
        mask_fraction,
        pass_statistic,
        save_mask,
    )
    from hf_unlearn.parts.sharded import full_mask, local

    accelerator = Accelerator(cpu=True)
    rank, world = accelerator.process_index, accelerator.num_processes
    torch.manual_seed(0)
    family, config, split = build(kind, world)
    model = family.model
    if mode == "fsdp":
        shard(model)
    model.eval()  # the saliency passes at θ0 and the steps in eval mode: no dropout, same maths on every layout
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert (mode == "fsdp") == all(type(p).__name__ == "DTensor" for _, p in named)

    def statistic(dataset, rows, clip_norm=None, square=True):
        return pass_statistic(family, config, accelerator, named, dataset, rows, clip_norm, square)

    inputs = SaliencyInputs(family, config, model, named, split, statistic)
    torch.manual_seed(1 + rank)  # the diffusion losses' noise: per rank, the same in both modes
    masks = {"fisher_ratio": get_saliency("fisher_ratio").compute(inputs)}
    torch.manual_seed(2 + rank)
    masks["topk"] = get_saliency("topk").compute(inputs)
    fractions = {name: mask_fraction(mask) for name, mask in masks.items()}
    torch.manual_seed(3 + rank)  # the forget set's Fisher itself, unclipped: its scale, not only the ratio's
    fisher = full_mask(statistic(split.forget, lambda batch: family.per_sample_loss(model, batch)))
    for name, mask in masks.items():  # saved gathered, reloaded into the shards: a resumed run's `mask_path`
        whole = full_mask(mask)
        path = os.path.join(out, f"{name}.safetensors")
        if rank == 0:
            save_mask(whole, path)
        dist.barrier()
        reloaded = load_mask(path, named)
        assert all(torch.equal(local(reloaded[n]), local(mask[n])) for n in mask), name

    mask = masks["fisher_ratio"]
    initial = {n: p.full_tensor() if mode == "fsdp" else p.detach().clone() for n, p in named}
    # SGD: Adam would turn float noise in near-zero gradients into full-size steps, hiding what is compared.
    optimizer = torch.optim.SGD([p for _, p in named], lr=0.05)
    forget, remain = (family.make_dataloader(ds, batch_size=GLOBAL_ROWS, shuffle=False, seed=0)
                      for ds in (split.forget, split.remain))  # fmt: skip
    rows = GLOBAL_ROWS // world
    for step, (f_batch, r_batch) in enumerate(zip(forget, remain)):
        if step == STEPS:
            break
        for sign, batch in ((-1.0, f_batch), (1.0, r_batch)):
            own = {k: v[rank * rows : (rank + 1) * rows] for k, v in batch.items()}
            torch.manual_seed(100 * step + rank + (sign > 0))
            optimizer.zero_grad()
            (sign * family.per_sample_loss(model, own).mean()).backward()
            if mode == "plain":
                sync_plain_grads(named, world)
            for name, p in named:  # the mask on each rank's shard of the gradient, as the engine's `_apply_mask`
                p.grad.mul_(mask[name].to(p.grad.dtype))
            optimizer.step()
    weights = {n: p.full_tensor() if mode == "fsdp" else p.detach() for n, p in named}
    if rank == 0:
        save_file({n: w.contiguous() for n, w in weights.items()}, os.path.join(out, "weights.safetensors"))
        save_file({n: w.contiguous() for n, w in initial.items()}, os.path.join(out, "initial.safetensors"))
        save_file({n: f.contiguous() for n, f in fisher.items()}, os.path.join(out, "fisher_forget.safetensors"))
        with open(os.path.join(out, "result.json"), "w") as fh:
            json.dump({"world": world, "fractions": fractions}, fh)
    dist.barrier()


if __name__ == "__main__":
    main(*sys.argv[1:4])

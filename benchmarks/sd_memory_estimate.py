"""Parameter counts and the memory they imply for an SD-1.x-size UNet, full fine-tuning vs LoRA (docs/scaling.md).

    python benchmarks/sd_memory_estimate.py [--lora-r 8]

Builds `UNet2DConditionModel` with Stable Diffusion 1.4's architecture on the meta device (no weights, no download),
counts its parameters and those LoRA adds on the attention projections (to_q, to_k, to_v, to_out.0, the library's
default), and prints the bytes of weights, gradients and Adam state per GPU for DDP, FSDP and ZeRO-2 over N GPUs.
Activations come on top and depend on resolution, batch and gradient checkpointing; they are not estimated here.
"""

from __future__ import annotations

import argparse

GIB = 2**30
SD14_UNET = {"sample_size": 64, "cross_attention_dim": 768, "attention_head_dim": 8}


def counts(lora_r: int) -> tuple[int, int]:
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel
    from peft import LoraConfig

    with init_empty_weights():
        unet = UNet2DConditionModel(**SD14_UNET)
        total = sum(p.numel() for p in unet.parameters())
        unet.add_adapter(LoraConfig(r=lora_r, lora_alpha=lora_r, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
        lora = sum(p.numel() for n, p in unet.named_parameters() if "lora_" in n)
    return total, lora


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lora-r", type=int, default=8)
    parser.add_argument("--gpus", type=int, default=8, help="GPUs for the sharded rows.")
    args = parser.parse_args(argv)
    total, lora = counts(args.lora_r)
    print(
        f"UNet (SD 1.4 architecture): {total:,} parameters; LoRA r={args.lora_r} on attention: {lora:,} "
        f"({total / lora:.0f}x fewer trainable)\n"
    )
    print("| setup | weights | grads | Adam state | total per GPU (GiB, activations excluded) |")
    print("|---|---|---|---|---|")
    n = args.gpus
    rows = [
        ("full, fp32, 1 GPU or DDP", 4 * total, 4 * total, 8 * total),
        ("full, bf16 autocast (fp32 master weights), DDP", 4 * total, 4 * total, 8 * total),
        (f"full, ZeRO-2 over {n} GPUs", 4 * total, 4 * total / n, 8 * total / n),
        (f"full, FSDP FULL_SHARD over {n} GPUs", 4 * total / n, 4 * total / n, 8 * total / n),
        (f"LoRA r={args.lora_r}, frozen base in fp32", 4 * (total + lora), 4 * lora, 8 * lora),
    ]
    for name, w, g, a in rows:
        print(f"| {name} | {w / GIB:.2f} | {g / GIB:.2f} | {a / GIB:.2f} | {(w + g + a) / GIB:.2f} |")
    print("\nMethods that keep a frozen copy of the original (SCRUB, BT, ESD, SA) add one more set of weights.")
    for name, k in (("full", total), (f"LoRA r={args.lora_r}", lora)):
        print(
            f"SFR-on saliency, {name}: the two Fisher sums while the mask is built {8 * k / GIB:.2f} GiB (freed "
            f"after), the boolean mask kept during the run {k / GIB:.2f} GiB."
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

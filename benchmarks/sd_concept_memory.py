"""Parameter counts of Stable Diffusion 1.4's components and the memory each text-to-image training setup implies.

    python benchmarks/sd_concept_memory.py [--lora-r 8]

Builds the UNet, VAE and CLIP text encoder from SD 1.4's published architecture on the meta device (random init, no
weights, no download), counts the parameters of every trainable subset of `hf_unlearn`'s text-to-image family
(`train_modules`: all, cross_attention = ESD-x, non_cross_attention = ESD-u; LoRA on the attention projections), and
prints the bytes of weights, gradients and Adam state they imply. Counts are exact; bytes are arithmetic
(fp32 4 B per value, Adam keeps two fp32 moments); activations are not included.
"""

from __future__ import annotations

import argparse

from hf_unlearn.families.text_to_image import is_trainable

GIB = 2**30
SD14_UNET = {"sample_size": 64, "cross_attention_dim": 768, "attention_head_dim": 8}
SD14_VAE = {
    "block_out_channels": (128, 256, 512, 512),
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "layers_per_block": 2,
    "latent_channels": 4,
    "sample_size": 512,
}
SD14_TEXT = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "vocab_size": 49408,
    "hidden_act": "quick_gelu",
    "projection_dim": 768,
}


def component_counts(lora_r: int) -> dict[str, int]:
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from peft import LoraConfig
    from transformers import CLIPTextConfig, CLIPTextModel

    with init_empty_weights():
        unet = UNet2DConditionModel(**SD14_UNET)
        vae = AutoencoderKL(**SD14_VAE)
        text = CLIPTextModel(CLIPTextConfig(**SD14_TEXT))
        names = {n: p.numel() for n, p in unet.named_parameters()}
        unet.add_adapter(LoraConfig(r=lora_r, lora_alpha=lora_r, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
        lora = sum(p.numel() for n, p in unet.named_parameters() if "lora_" in n)
    counts = {
        "unet": sum(names.values()),
        "vae": sum(p.numel() for p in vae.parameters()),
        "text_encoder": sum(p.numel() for p in text.parameters()),
        "lora": lora,
    }
    for subset in ("cross_attention", "non_cross_attention"):
        counts[subset] = sum(n for name, n in names.items() if is_trainable(name, subset))
    return counts


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lora-r", type=int, default=8)
    args = parser.parse_args(argv)
    c = component_counts(args.lora_r)
    print("| component | parameters |\n|---|---|")
    for key in ("unet", "vae", "text_encoder"):
        print(f"| {key} | {c[key]:,} |")
    frozen = c["vae"] + c["text_encoder"]
    print(
        "\n| trainable subset | trainable parameters | UNet weights | grads | Adam | frozen VAE+text | total (GiB) |"
    )
    print("|---|---|---|---|---|---|---|")
    subsets = [
        ("all (full UNet)", c["unet"]),
        ("cross_attention (ESD-x)", c["cross_attention"]),
        ("non_cross_attention (ESD-u)", c["non_cross_attention"]),
        (f"LoRA r={args.lora_r}", c["lora"]),
    ]
    for name, k in subsets:
        # Every weight stays fp32 (accelerate's bf16 is autocast: it shrinks activations, not weights or Adam state).
        weights = 4 * (c["unet"] + (k if name.startswith("LoRA") else 0))
        g, a, fz = 4 * k, 8 * k, 4 * frozen
        total = weights + g + a + fz
        print(
            f"| {name} | {k:,} | {weights / GIB:.2f} | {g / GIB:.2f} | {a / GIB:.2f} | {fz / GIB:.2f} | "
            f"{total / GIB:.2f} |"
        )
    print(
        f"\nESD keeps a frozen copy of the UNet: +{4 * c['unet'] / GIB:.2f} GiB. SFR-on's Fisher sums while the mask "
        f"is built: "
        f"{8 * c['unet'] / GIB:.2f} GiB (full) / {8 * c['lora'] / GIB:.4f} GiB (LoRA), freed after; the boolean mask "
        f"kept during the run: {c['unet'] / GIB:.2f} GiB (full)."
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

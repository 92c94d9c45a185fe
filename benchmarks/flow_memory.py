"""Memory plan for SD3-medium and FLUX.1-dev unlearning: exact parameter counts, measured activations, per-GPU bytes.

    python benchmarks/flow_memory.py --output benchmark_results/flow_memory

1. Parameter counts (exact): each model's transformer, text encoders and VAE built from their published configs
   (written inline) on the meta device, no weights, no download; LoRA r=16 on the family's default targets.
2. Activations (measured on CPU, at reduced width, extrapolated): one transformer block of each kind at the real token
   count (1024×1024 px: 4,096 image tokens; SD3 333 text tokens, FLUX 512) and batch 1, its width cut to 1/8 and 1/4
   of the real one (fewer heads, the real head size), in fp32 and under bf16 autocast; a forward pass with
   `saved_tensors_hooks` adds up the bytes of every distinct tensor autograd keeps for the backward pass. The two
   widths check that the bytes grow linearly with width; the 1/4 point times 4 is the full-width estimate, times the
   number of blocks the model's. With activation checkpointing a block keeps only its inputs (image and text hidden
   states), and one block's full activations live during its recomputation.
3. Per-GPU bytes (arithmetic): weights, gradients and Adam state of what trains, the frozen parts, the activations
   above, for LoRA on one GPU (fp32 or bf16 frozen base), full fine-tuning on one GPU, and full fine-tuning with FSDP
   FULL_SHARD over N GPUs. Attention here is PyTorch's SDPA, whose CPU and GPU flash kernels keep no tokens×tokens
   matrix; a GPU run adds the CUDA context and allocator cache (a few GiB) on top.
"""

from __future__ import annotations

import argparse
import json
import os

GIB = 2**30
RES = 1024
CLIP_L = dict(
    hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, projection_dim=768
)
CLIP_G = dict(
    hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20, projection_dim=1280
)
T5_XXL = dict(d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64, feed_forward_proj="gated-gelu")
VAE16 = dict(
    block_out_channels=(128, 256, 512, 512),
    latent_channels=16,
    layers_per_block=2,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    use_quant_conv=False,
    use_post_quant_conv=False,
)
MODELS = {
    "sd3-medium": dict(
        transformer="SD3Transformer2DModel",
        config=dict(sample_size=128, patch_size=2, in_channels=16, num_layers=24, attention_head_dim=64,
                    num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536,
                    pooled_projection_dim=2048, out_channels=16, pos_embed_max_size=192),
        encoders=(("clip_l", CLIP_L, True), ("clip_g", CLIP_G, True), ("t5_xxl", T5_XXL, None)),
        text_tokens=77 + 256,
    ),
    "flux-dev": dict(
        transformer="FluxTransformer2DModel",
        config=dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                    num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
                    axes_dims_rope=(16, 56, 56)),
        encoders=(("clip_l", CLIP_L, False), ("t5_xxl", T5_XXL, None)),
        text_tokens=512,
    ),
}  # fmt: skip


def _encoder(spec, projection):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    if projection is None:
        return T5EncoderModel(T5Config(vocab_size=32128, **spec))
    cls = CLIPTextModelWithProjection if projection else CLIPTextModel
    return cls(CLIPTextConfig(vocab_size=49408, max_position_embeddings=77, **spec))


def counts(name: str, lora_r: int) -> dict:
    import diffusers
    from accelerate import init_empty_weights
    from peft import LoraConfig

    from hf_unlearn.families.text_to_image_flow import _TEXT_ATTENTION, LORA_TARGETS

    spec = MODELS[name]
    out = {}
    with init_empty_weights():
        model = getattr(diffusers, spec["transformer"])(**spec["config"])
        out["transformer"] = sum(p.numel() for p in model.parameters())
        out["transformer_text_attention"] = sum(
            p.numel() for n, p in model.named_parameters() if any(f".{part}." in n for part in _TEXT_ATTENTION)
        )
        model.add_adapter(LoraConfig(r=lora_r, lora_alpha=lora_r, target_modules=LORA_TARGETS))
        out[f"lora_r{lora_r}"] = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
        for key, encoder_spec, projection in spec["encoders"]:
            named = dict(_encoder(encoder_spec, projection).named_parameters())
            if "shared.weight" in named:  # T5's input embedding is `shared`, tied to encoder.embed_tokens on the Hub
                named.pop("encoder.embed_tokens.weight", None)
            out[key] = sum(p.numel() for p in named.values())
        out["vae"] = sum(p.numel() for p in diffusers.AutoencoderKL(**VAE16).parameters())
    return out


def saved_bytes(name: str, fraction: int, autocast: bool) -> dict:
    """Bytes autograd keeps for backward in one block of each kind, at width 1/`fraction`, batch 1, RES px."""
    import diffusers
    import torch

    spec = MODELS[name]
    config = dict(spec["config"], num_attention_heads=spec["config"]["num_attention_heads"] // fraction)
    width = config["num_attention_heads"] * config["attention_head_dim"]
    tokens = (RES // 8 // 2) ** 2  # VAE factor 8, then 2×2 patches (SD3's patch_size 2, FLUX's packing)
    torch.manual_seed(0)
    model = getattr(diffusers, spec["transformer"])(**dict(config, num_layers=1, **(
        {"num_single_layers": 1} if name == "flux-dev" else {})))  # fmt: skip
    image = torch.randn(1, tokens, width, requires_grad=True)
    text = torch.randn(1, spec["text_tokens"], width, requires_grad=True)
    temb = torch.randn(1, width, requires_grad=True)
    blocks = {"double": model.transformer_blocks[0]}
    if name == "flux-dev":
        blocks["single"] = model.single_transformer_blocks[0]
        ids = torch.cat([torch.zeros(spec["text_tokens"], 3), torch.zeros(tokens, 3)])
        rotary = model.pos_embed(ids)
    out = {"width": width}
    for kind, block in blocks.items():
        seen: dict = {}

        def pack(t, seen=seen):
            seen[(t.untyped_storage().data_ptr(), t.dtype)] = t.untyped_storage().nbytes()
            return t

        with (
            torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t),
            torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast),
        ):
            if name == "sd3-medium":
                block(image, text, temb)
            elif kind == "double":
                block(image, text, temb, image_rotary_emb=rotary)
            else:
                block(image, text, temb, image_rotary_emb=rotary)
        out[kind] = sum(seen.values())
    out["block_inputs"] = 4 * (tokens + spec["text_tokens"]) * width  # what a checkpointed block keeps (fp32)
    return out


def measure(name: str) -> dict:
    spec = MODELS[name]
    heads = spec["config"]["num_attention_heads"]
    rows = {}
    for autocast in (False, True):
        points = {f: saved_bytes(name, f, autocast) for f in (8, 4) if heads % f == 0}
        rows["bf16" if autocast else "fp32"] = {str(f): v for f, v in points.items()}
    return rows


def plan(name: str, count: dict, acts: dict, lora_r: int, gpus: int) -> list[dict]:
    """Per-GPU GiB for each setup at RES px, batch 1."""
    spec, total, lora = MODELS[name], count["transformer"], count[f"lora_r{lora_r}"]
    frozen = sum(v for k, v in count.items() if k in ("clip_l", "clip_g", "t5_xxl", "vae"))
    layers = {"double": spec["config"]["num_layers"], "single": spec["config"].get("num_single_layers", 0)}
    rows = []
    for precision in ("fp32", "bf16"):
        quarter = acts[precision]["4"]
        full_block = {k: 4 * quarter[k] for k in layers if k in quarter}
        no_ckpt = sum(layers[k] * full_block[k] for k in full_block)
        ckpt = sum(layers.values()) * 4 * quarter["block_inputs"] + max(full_block.values())
        for checkpointing, act in (("no", no_ckpt), ("yes", ckpt)):
            setups = [
                ("LoRA, base + encoders fp32, 1 GPU", 4 * (total + frozen), 16 * lora),
                ("LoRA, base + encoders bf16 (torch_dtype), 1 GPU", 2 * (total + frozen), 16 * lora),
                ("full, fp32 weights + Adam, 1 GPU", 16 * total + 4 * frozen, 0),
                (f"full, FSDP FULL_SHARD over {gpus} GPUs, encoders fp32", 16 * total / gpus + 4 * frozen, 0),
                (f"full, FSDP FULL_SHARD over {gpus} GPUs, encoders bf16", 16 * total / gpus + 2 * frozen, 0),
            ]
            for setup, weights, trainable in setups:
                trained = lora if setup.startswith("LoRA") else total
                share = gpus if "FSDP" in setup else 1
                base_bytes = 2 if "bf16 (torch_dtype)" in setup else 4
                rows.append({
                    "model": name, "setup": setup, "autocast": precision, "checkpointing": checkpointing,
                    "weights_grads_adam_gib": round((weights + trainable) / GIB, 2),
                    "activations_gib": round(act / GIB, 2),
                    "total_gib": round((weights + trainable + act) / GIB, 2),
                    # SFR-on's two Fisher sums while the mask is built (freed after) and the boolean mask kept.
                    "sfr_on_mask_build_gib": round(8 * trained / share / GIB, 2),
                    "sfr_on_mask_gib": round(trained / share / GIB, 2),
                    # ESD's frozen copy of the original transformer (the divergence guard's "check" adds none).
                    "esd_frozen_copy_gib": round(base_bytes * total / share / GIB, 2),
                })  # fmt: skip
    return rows


def summary(result: dict) -> str:
    """The docs' two tables: parameter counts, and per-GPU GiB under bf16 autocast without and with checkpointing."""
    keys = ("transformer", "transformer_text_attention", f"lora_r{result['lora_r']}", "clip_l", "clip_g", "t5_xxl",
            "vae")  # fmt: skip
    lines = ["| model | " + " | ".join(keys) + " |", "|---|" + "---:|" * len(keys)]
    for name, model in result["models"].items():
        lines.append(f"| {name} | " + " | ".join(f"{model['parameters'].get(k, 0):,}" for k in keys) + " |")
    lines += ["", "| model | setup | weights + grads + Adam | activations, no checkpointing | total | activations, "
              "checkpointing | total |", "|---|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    for name, model in result["models"].items():
        rows = [r for r in model["plan"] if r["autocast"] == "bf16" and "FSDP" not in r["setup"] or
                r["autocast"] == "bf16" and r["setup"].endswith("encoders bf16")]  # fmt: skip
        for setup in dict.fromkeys(r["setup"] for r in rows):
            no, yes = (next(r for r in rows if r["setup"] == setup and r["checkpointing"] == c) for c in ("no", "yes"))
            lines.append(f"| {name} | {setup} | {no['weights_grads_adam_gib']} | {no['activations_gib']} | "
                         f"{no['total_gib']} | {yes['activations_gib']} | {yes['total_gib']} |")  # fmt: skip
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="benchmark_results/flow_memory")
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    args = parser.parse_args(argv)
    os.makedirs(args.output, exist_ok=True)
    result = {"resolution": RES, "batch": 1, "lora_r": args.lora_r, "gpus": args.gpus, "models": {}}
    for name in args.models:
        count, acts = counts(name, args.lora_r), measure(name)
        result["models"][name] = {"parameters": count, "saved_bytes": acts,
                                  "plan": plan(name, count, acts, args.lora_r, args.gpus)}  # fmt: skip
        print(json.dumps({name: {"parameters": count, "saved_bytes": acts}}), flush=True)
    with open(os.path.join(args.output, "flow_memory.json"), "w") as fh:
        json.dump(result, fh, indent=1)
    lines = ["| model | setup | autocast | checkpointing | weights+grads+Adam | activations | total | + SFR-on mask "
             "build (transient) / mask | + ESD frozen copy |", "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for model in result["models"].values():
        for r in model["plan"]:
            lines.append(f"| {r['model']} | {r['setup']} | {r['autocast']} | {r['checkpointing']} | "
                         f"{r['weights_grads_adam_gib']} | {r['activations_gib']} | {r['total_gib']} | "
                         f"{r['sfr_on_mask_build_gib']} / {r['sfr_on_mask_gib']} | "
                         f"{r['esd_frozen_copy_gib']} |")  # fmt: skip
    with open(os.path.join(args.output, "flow_memory.md"), "w") as fh:
        fh.write("\n".join(lines) + "\n")
    with open(os.path.join(args.output, "summary.md"), "w") as fh:
        fh.write(summary(result) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

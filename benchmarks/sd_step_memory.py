"""Peak memory and time of real `hf_unlearn` unlearning steps on Stable Diffusion 1.4's architecture (random weights).

    python benchmarks/sd_step_memory.py [--resolution 512] [--batch-size 1] [--threads 2]

For each setup (full UNet, full UNet with gradient checkpointing and either divergence guard, ESD-x, LoRA r=8) a fresh
process builds SD 1.4's UNet, VAE and CLIP text encoder from their published configs with random weights (no download;
the tokenizer is a small word-level one built in memory, padding to 77 tokens like SD's), runs `Unlearner.unlearn`
with `sfr_on_remap` for one cycle (Fisher-ratio saliency over the forget and remain rows, one forget step, one remain
step, Adam, the divergence guard: everything a real run does per cycle) on random 512×512 images, and reports the
process's peak resident memory (VmHWM) and the wall time. This is CPU memory in fp32: weights, gradients, Adam state
and activations are the same tensors a GPU run holds in fp32, but a GPU run adds the CUDA context and allocator
caching, and bf16 autocast shrinks activations; treat the numbers as a measured estimate, not a GPU reading.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

# The divergence guard is named in every setup: "copy" keeps one more copy of the trainable weights, "check" none.
SETUPS = {
    "full": {"divergence_guard": "check"},
    "full + gradient checkpointing": {"gradient_checkpointing": True, "divergence_guard": "copy"},
    "full + gradient checkpointing, guard check": {"gradient_checkpointing": True, "divergence_guard": "check"},
    "ESD-x (cross-attention only)": {"train_modules": "cross_attention", "divergence_guard": "check"},
    "LoRA r=8": {"lora": True, "lora_r": 8, "divergence_guard": "copy"},
}
GIB = 2**30
WORDS = ["a", "photo", "of", "nude", "person", "wearing", "clothes"]


def _peak_rss_bytes() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("VmHWM not found in /proc/self/status (Linux only).")


def _pipeline():
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    sys.path.insert(0, os.path.dirname(__file__))
    from sd_concept_memory import SD14_TEXT, SD14_UNET, SD14_VAE

    torch.manual_seed(0)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, **{w + "</w>": i + 2 for i, w in enumerate(WORDS)}}
    vocab.update({c: len(vocab) + i for i, c in enumerate("abcdefghijklmnopqrstuvwxyz")})
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)
    scheduler = PNDMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True, steps_offset=1
    )
    return StableDiffusionPipeline(
        vae=AutoencoderKL(**SD14_VAE),
        text_encoder=CLIPTextModel(CLIPTextConfig(**SD14_TEXT)),
        tokenizer=tokenizer,
        unet=UNet2DConditionModel(**SD14_UNET),
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def _dataset(caption: str, n: int, resolution: int):
    import numpy as np
    from datasets import Dataset, Features, Image, Value
    from PIL import Image as PILImage

    rng = np.random.default_rng(0)
    images = [PILImage.fromarray(rng.integers(0, 256, (resolution, resolution, 3), dtype=np.uint8)) for _ in range(n)]
    features = Features({"image": Image(), "text": Value("string")})
    return Dataset.from_dict({"image": images, "text": [caption] * n}, features=features)


def child(setup: str, resolution: int, batch_size: int, threads: int) -> dict:
    import torch

    from hf_unlearn import ConceptSplit, UnlearnConfig, Unlearner

    torch.set_num_threads(threads)
    pipe = _pipeline()
    built = _peak_rss_bytes()
    split = ConceptSplit(
        forget_dataset=_dataset("a photo of a nude person", batch_size, resolution),
        remain_dataset=_dataset("a photo of a person wearing clothes", batch_size, resolution),
    )
    with tempfile.TemporaryDirectory() as tmp:
        config = UnlearnConfig(
            method="sfr_on_remap",
            max_steps=1,
            remain_steps_per_forget=1,
            per_device_train_batch_size=batch_size,
            resolution=resolution,
            output_dir=tmp,
            **SETUPS[setup],
        )
        unlearner = Unlearner.from_pretrained(pipe, config)
        start = time.perf_counter()
        result = unlearner.unlearn(split)
        seconds = time.perf_counter() - start
    trainable = sum(p.numel() for p in unlearner.model.parameters() if p.requires_grad)
    return {
        "setup": setup,
        "trainable": trainable,
        "after_build_gib": built / GIB,
        "peak_gib": _peak_rss_bytes() / GIB,
        "seconds": seconds,
        "saliency_s": result.saliency_runtime_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--setups", default=";".join(SETUPS), help="Names from SETUPS, separated by ';'.")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.resolution, args.batch_size, args.threads)))
        return
    print(f"SD 1.4 architecture, random weights, fp32 on CPU, {args.resolution}px, batch {args.batch_size}, one cycle")
    header = "setup | guard | trainable parameters | after building the pipeline (GiB) | peak (GiB) | cycle time (s)"
    print(f"| {header} |")
    print("|---|---|---|---|---|---|")
    for setup in args.setups.split(";"):
        command = [sys.executable, __file__, "--child", setup, "--resolution", str(args.resolution)]
        command += ["--batch-size", str(args.batch_size), "--threads", str(args.threads)]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            print(f"| {setup} | failed (exit {done.returncode}): {done.stderr.strip().splitlines()[-1:]} | | | | |")
            continue
        row = json.loads(done.stdout.strip().splitlines()[-1])
        print(
            f"| {setup} | {SETUPS[setup]['divergence_guard']} | {row['trainable']:,} | {row['after_build_gib']:.2f} | "
            f"{row['peak_gib']:.2f} | {row['seconds']:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()

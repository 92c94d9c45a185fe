"""Device suite: throughput and peak memory of real-size models through `Unlearner`, one command, JSON out.

Two models, built from their configs with random weights and fed synthetic data (no download, any machine):

- `vit`: ViT-B/16 at 224 px (`ViTForImageClassification`, 86M parameters, 10 classes), method `sfr_on`;
- `unet`: a Stable Diffusion 1.4-size pipeline (its UNet's and VAE's config values written inline, 860M trained UNet
  parameters; its CLIP text encoder's widths with a 1,000-token vocabulary, as the tokenizer is a small word-level
  one built here) at 512 px, method `sfr_on_remap`.

Every setting is one combination of precision (`fp32`, `bf16` through `mixed_precision`), trained weights (`full`;
`lora`; `xattn`, the UNet's cross-attention only through `train_modules="cross_attention"`) and
`gradient_checkpointing` on or off. Each runs in its own process (one `Accelerator` per process and mixed precision;
a clean peak-memory counter) and reports cycles per second, samples per second (rows through forward+backward passes
per second, from the run's pass counts), the mask's time, peak device memory (`torch.cuda.max_memory_allocated` on a
GPU; the process's peak RSS on a CPU) and the run's `work` (passes by kind). Times exclude a warm-up run of the same
setting. For full training without checkpointing it also times a hand-written PyTorch loop that makes the same
passes with the same mask (`engine_hand_ratio`: engine cycle time over the hand loop's; the issue's target on a GPU
is within 10% for the SD UNet in bf16).

On a GPU machine (every setting; `--only unet bf16` keeps the settings whose name holds both words):

    HF_HUB_OFFLINE=1 python benchmarks/device_suite.py --output benchmark_results/performance/device_suite_gpu.json

The pipeline check on CPU (tiny configs, a few cycles, a handful of settings; what tests/test_device_suite.py runs):

    python benchmarks/device_suite.py --tiny --output benchmark_results/performance/device_suite_tiny.json
"""

from __future__ import annotations

import argparse
import copy
import gc
import itertools
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

# The tiny mode: a few settings that touch every option once, and both hand loops.
# The prompts' words: the tokenizer is built in memory from them, so token ids stay under the encoder's vocabulary.
DEVICE_WORDS = "a photo of painting dog cat house tree".split()
TINY_SETTINGS = [
    ("vit", "fp32", "full", False),
    ("vit", "bf16", "lora", True),
    ("unet", "fp32", "full", False),
    ("unet", "fp32", "xattn", True),
    ("unet", "bf16", "lora", False),
    ("sd3", "fp32", "lora", True),
    ("flux", "fp32", "xattn", True),
]
# SD3-medium and FLUX.1-dev (benchmarks/device_flow.py): bf16 autocast and activation checkpointing at 1024 px,
# batch 1, the settings that fit one 80 GB GPU by the memory plan (docs/stable_diffusion.md); full FLUX-dev does not.
FLOW_SETTINGS = [
    ("sd3", "bf16", "lora", True),
    ("sd3", "bf16", "xattn", True),
    ("sd3", "bf16", "full", True),
    ("flux", "bf16", "lora", True),
    ("flux", "bf16", "xattn", True),
]


def all_settings() -> list[tuple[str, str, str, bool]]:
    """Every (model, precision, train, gradient checkpointing); a ViT has no cross-attention to train alone."""
    out = []
    for model, precision, train, checkpointing in itertools.product(
        ("vit", "unet"), ("fp32", "bf16"), ("full", "lora", "xattn"), (False, True)
    ):
        if not (model == "vit" and train == "xattn"):
            out.append((model, precision, train, checkpointing))
    return out + FLOW_SETTINGS


def build_vit(tiny: bool):
    """ViT-B/16 at 224 px (tiny: 32 px, patch 8, 2 layers of width 32), random weights, and its image processor."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(0)
    size = 32 if tiny else 224
    dims = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, patch_size=8)
    if not tiny:
        dims = dict(
            hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072, patch_size=16
        )
    model = ViTForImageClassification(ViTConfig(image_size=size, num_labels=10, **dims))
    processor = ViTImageProcessor(size={"height": size, "width": size})
    return model, {"image_processor": processor}, size


def build_sd(tiny: bool):
    """SD 1.4's UNet, VAE and text encoder configs (tiny: widths 16/32, one layer per block), random weights."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from hf_unlearn.tiny.colour import word_tokenizer

    torch.manual_seed(0)
    if tiny:
        unet_dims = dict(sample_size=4, layers_per_block=1, block_out_channels=(16, 32), attention_head_dim=8)
        unet_dims |= dict(norm_num_groups=8, cross_attention_dim=32)
        unet_dims |= dict(down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"))
        unet_dims |= dict(up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"))
        vae_dims = dict(block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8, sample_size=16)
        text = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4)
        text |= dict(max_position_embeddings=16)
    else:  # CompVis/stable-diffusion-v1-4's unet/, vae/ and text_encoder/ config values (vocabulary aside)
        unet_dims = dict(sample_size=64, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280))
        unet_dims |= dict(attention_head_dim=8, norm_num_groups=32, cross_attention_dim=768)
        unet_dims |= dict(down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",))
        unet_dims |= dict(up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
        vae_dims = dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, norm_num_groups=32)
        vae_dims |= dict(sample_size=512)
        text = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12)
        text |= dict(max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768)
    unet = UNet2DConditionModel(in_channels=4, out_channels=4, **unet_dims)
    blocks = len(vae_dims["block_out_channels"])
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * blocks,
        up_block_types=("UpDecoderBlock2D",) * blocks,
        scaling_factor=0.18215,
        **vae_dims,
    )
    encoder = CLIPTextModel(CLIPTextConfig(vocab_size=1000, bos_token_id=0, eos_token_id=1, pad_token_id=1, **text))
    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, steps_offset=1
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=encoder,
        tokenizer=word_tokenizer(DEVICE_WORDS, max_length=text["max_position_embeddings"]),
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    resolution = unet_dims["sample_size"] * 2 ** (blocks - 1)
    return unet, {"pipeline": pipe}, resolution


def synthetic_split(model_name: str, size: int, rows: int):
    """Random RGB images: labelled (classifier; class 3 forgotten) or captioned (SD; a prompt remapped to another)."""
    import numpy as np
    from datasets import ClassLabel, Dataset, Features, Image, Value
    from PIL import Image as PILImage

    from hf_unlearn import ConceptSplit, ForgetRemainSplit

    rng = np.random.default_rng(0)
    images = [PILImage.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(rows)]
    if model_name == "vit":
        # Half the rows are the forgotten class, so both sets fill their batches.
        others = [c for c in range(10) if c != 3]
        labels = [3 if i % 2 == 0 else others[(i // 2) % 9] for i in range(rows)]
        features = Features({"image": Image(), "label": ClassLabel(num_classes=10)})
        data = Dataset.from_dict({"image": images, "label": labels}, features=features)
        return ForgetRemainSplit.from_dataset(data, forget_classes=[3])
    features = Features({"image": Image(), "text": Value("string")})
    half = rows // 2
    forget = Dataset.from_dict({"image": images[:half], "text": ["a painting of a dog"] * half}, features=features)
    captions = [("a photo of a cat", "a photo of a tree")[i % 2] for i in range(rows - half)]
    remain = Dataset.from_dict({"image": images[half:], "text": captions}, features=features)
    return ConceptSplit(forget_dataset=forget, remain_dataset=remain, anchor_prompts=["a photo of a house"])


def hand_loop(theta0, kwargs, config, split, mask, model_name: str) -> float:
    """Seconds of the same cycles as a plain PyTorch loop: the family's losses (the model arithmetic and the data
    path), SFR-on's weighted forget step with the engine's mask, K remain steps, AdamW, clipping, the schedules; none
    of the engine's bookkeeping (accelerate wrappers, finite checks, divergence guard, pass counters, history)."""
    import torch
    from accelerate.utils import send_to_device

    from hf_unlearn import Unlearner
    from hf_unlearn.training import Endless, alpha_at, lr_schedule

    family_name = "image_classifier" if model_name == "vit" else "text_to_image"
    unlearner = Unlearner.from_pretrained(theta0, config, family=family_name, **kwargs)
    family, split = unlearner.family, unlearner.validate(split)  # validate: the split as the engine sees it
    cfg = unlearner.config
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    _sync(device)
    start = time.perf_counter()
    model = family.model.to(device).train()
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad and family.trainable_parameter_filter(n)]
    params = [p for _, p in named]
    masks = [mask[n].to(device, torch.float32) for n, _ in named]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    batch = cfg.per_device_train_batch_size
    forget_it, remain_it = (
        Endless(family.make_dataloader(data, batch_size=batch, shuffle=True, seed=seed))
        for data, seed in ((split.forget, cfg.seed), (split.remain, cfg.seed + 1))
    )
    # Classifier: ascent, weights ∝ ℓ^(−λ); SD remap: descent toward the anchor, weights ∝ ℓ^(+λ) (as the parts).
    sign = -1.0 if model_name == "vit" else 1.0
    lr_at = lr_schedule(cfg.lr_scheduler_type, cfg.max_steps, cfg.warmup_steps)

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.mixed_precision == "bf16")

    for step in range(cfg.max_steps):
        for group in optimizer.param_groups:
            group["lr"] = cfg.learning_rate * lr_at(step)
        alpha = alpha_at(step, cfg.max_steps, cfg.forget_alpha, cfg.forget_alpha_schedule)
        b = send_to_device(next(forget_it), device)
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            rows = family.per_sample_loss(model, b) if model_name == "vit" else family.remap_loss(model, b, None)
        weights = torch.softmax(sign * cfg.temperature * torch.log(rows.detach().float() + 1e-8), dim=0)
        (sign * alpha * (weights * rows).sum()).backward()
        for p, m in zip(params, masks):
            if p.grad is not None:
                p.grad.mul_(m)
        if cfg.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        optimizer.step()
        for _ in range(cfg.remain_steps_per_forget):
            b = send_to_device(next(remain_it), device)
            optimizer.zero_grad(set_to_none=True)
            with autocast():
                loss = family.per_sample_loss(model, b).mean()
            loss.backward()
            if cfg.remain_max_grad_norm:
                torch.nn.utils.clip_grad_norm_(params, cfg.remain_max_grad_norm)
            optimizer.step()
    _sync(device)
    return time.perf_counter() - start


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def run_setting(spec: dict) -> dict:
    """One setting in this process: a warm-up run, the measured run through `Unlearner`, and the hand loop."""
    import torch

    from hf_unlearn import UnlearnConfig, Unlearner

    model_name, precision, train, checkpointing = (
        spec["model"],
        spec["precision"],
        spec["train"],
        spec["checkpointing"],
    )
    tiny, batch = spec["tiny"], spec["batch"]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if model_name in ("sd3", "flux"):
        from device_flow import build_flow  # noqa: PLC0415 (a sibling script: on the path when run as a script)

        model, kwargs, size = build_flow(model_name, tiny, train)
    else:
        model, kwargs, size = (build_vit if model_name == "vit" else build_sd)(tiny)
    cache = tempfile.mkdtemp(prefix="device_suite_")
    split = synthetic_split(model_name, size, rows=4 * batch)  # two batches per set: the saliency passes' length
    if model_name != "vit":
        split.cache_dir = cache
    config = UnlearnConfig(
        method="sfr_on" if model_name == "vit" else "sfr_on_remap",
        family="image_classifier" if model_name == "vit" else "text_to_image",
        output_dir="",  # nothing written: the suite measures the loop, not the disk
        seed=0,
        max_steps=spec["cycles"],
        remain_steps_per_forget=1,
        per_device_train_batch_size=batch,
        saliency_max_batches=2,
        learning_rate=1e-5,
        logging_steps=10**6,
        mixed_precision="bf16" if precision == "bf16" else "no",
        lora=train == "lora",
        train_modules="cross_attention" if train == "xattn" else "all",
        gradient_checkpointing=checkpointing,
    )

    def engine(cfg):
        unlearner = Unlearner.from_pretrained(copy.deepcopy(model), cfg, **kwargs)
        result = unlearner.unlearn(split)
        _sync(device)
        return unlearner, result

    # First calls (kernels, allocator, lazy imports) are not the engine's cost: one short run of the same setting.
    engine(UnlearnConfig(**{**config.to_dict(), "max_steps": 1, "saliency_max_batches": 1}))
    if device.type == "cuda":  # the warm-up's copies freed, so the peak is the measured run's own
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    unlearner, result = engine(config)
    # runtime_s runs from the accelerator's set-up to the last cycle; the mask's passes are reported apart.
    cycle_s = result.runtime_s - result.saliency_runtime_s
    rows = result.work["rows"]["forget"] + result.work["rows"]["remain"]
    trainable = sum(p.numel() for p in unlearner.model.parameters() if p.requires_grad)
    out = {
        **{k: spec[k] for k in ("model", "precision", "train", "checkpointing", "batch", "cycles")},
        "method": unlearner.config.method,
        "trainable_parameters": trainable,
        "cycles_per_s": spec["cycles"] / cycle_s,
        "samples_per_s": rows / cycle_s,
        "saliency_s": result.saliency_runtime_s,
        "cycle_s": cycle_s,
        "work": result.work,
    }
    if device.type == "cuda":
        out["peak_memory_mb"], out["memory_measure"] = torch.cuda.max_memory_allocated() / 2**20, "cuda_max_allocated"
    else:
        out["peak_memory_mb"], out["memory_measure"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "rss"
    if train == "full" and not checkpointing:  # warmed up as the engine was, then timed
        short = UnlearnConfig(**{**config.to_dict(), "max_steps": 1})
        hand_loop(copy.deepcopy(model), kwargs, short, split, unlearner.mask, model_name)
        hand_s = hand_loop(copy.deepcopy(model), kwargs, config, split, unlearner.mask, model_name)
        out["hand_cycle_s"], out["engine_hand_ratio"] = hand_s, cycle_s / hand_s
    return out


def device_name() -> str:
    import platform

    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="Tiny configs on CPU, a handful of settings.")
    parser.add_argument("--output", help="Write the JSON here (it is always printed).")
    parser.add_argument("--cycles", type=int, help="Cycles per measured run (default 20; --tiny 3).")
    parser.add_argument("--vit-batch", type=int, help="Per-device batch of the ViT (default 64; --tiny 4).")
    parser.add_argument("--unet-batch", type=int, help="Per-device batch of the SD UNet (default 4; --tiny 2).")
    parser.add_argument("--only", nargs="+", default=[], help="Keep settings whose name holds all these words.")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(run_setting(json.loads(args.child))))
        return 0
    cycles = args.cycles or (3 if args.tiny else 20)
    batches = {"vit": args.vit_batch or (4 if args.tiny else 64), "unet": args.unet_batch or (2 if args.tiny else 4)}
    batches |= {"sd3": 2 if args.tiny else 1, "flux": 2 if args.tiny else 1}
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TQDM_DISABLE="1")
    if args.tiny:
        env.setdefault("OMP_NUM_THREADS", "1")  # tiny models: one thread is as fast, and steadier on a shared CPU
    results, failed = [], 0
    for model, precision, train, checkpointing in TINY_SETTINGS if args.tiny else all_settings():
        name = f"{model}-{precision}-{train}-{'ckpt' if checkpointing else 'nockpt'}"
        if not all(word in name for word in args.only):
            continue
        spec = dict(model=model, precision=precision, train=train, checkpointing=checkpointing, tiny=args.tiny)
        spec |= dict(cycles=cycles, batch=batches[model])
        proc = subprocess.run(
            [sys.executable, __file__, "--child", json.dumps(spec)], env=env, capture_output=True, text=True
        )
        if proc.returncode == 0:
            results.append({"setting": name, **json.loads(proc.stdout.strip().splitlines()[-1])})
        else:  # e.g. out of memory: recorded, and the suite goes on
            failed += 1
            results.append({"setting": name, "error": proc.stderr.strip().splitlines()[-1:]})
        row = results[-1]
        summary = row.get("error") or (
            f"{row['cycles_per_s']:.3f} cycles/s, {row['samples_per_s']:.1f} samples/s, peak "
            f"{row['peak_memory_mb']:.0f} MB ({row['memory_measure']})"
            + (f", engine/hand {row['engine_hand_ratio']:.3f}" if "engine_hand_ratio" in row else "")
        )
        print(f"{name}: {summary}", file=sys.stderr)
    import torch

    report = {
        "device": device_name(),
        "tiny": args.tiny,
        "torch": torch.__version__,
        "command": "python benchmarks/device_suite.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "settings": results,
    }
    text = json.dumps(report, indent=1)
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        with open(args.output, "w") as fh:
            fh.write(text + "\n")
    print(text)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())

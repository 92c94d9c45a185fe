"""Trains the shape world's models in one command, deterministically from a seed:

    python -m hf_unlearn.worlds.train --output benchmark_results/world

Stages, each logged with its loss and time: (1) the VAE reconstructs scenes; (2) the judge learns each attribute from
the renderer's ground truth, on clean scenes and on their VAE reconstructions (what generated images look like);
(3) the text encoder learns CLIP-style, contrastively against the frozen judge's image features, with every scene
that fits a caption counted as a positive, so synonyms and implicit nouns land where the attributes they name do;
(4) the UNet learns the noise loss on the VAE latents of captioned scenes (10% uncaptioned, for guidance).
The folder holds a `StableDiffusionPipeline` (`pipeline/`), the judge, and `train_log.jsonl`.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from ..utils import atomic_directory
from . import models, scenes
from .prompts import CONCEPTS


@dataclass(frozen=True)
class WorldSettings:
    """Sizes of the world's training (steps, batch sizes, learning rates)."""

    seed: int = field(default=0, metadata={"help": "Seed of the scenes, the captions and every model's init."})
    scenes: int = field(default=16000, metadata={"help": "Rendered scenes the VAE and UNet learn from."})
    vae_steps: int = field(default=1200, metadata={"help": "VAE reconstruction steps (batch 32)."})
    judge_steps: int = field(default=800, metadata={"help": "Judge steps (batch 64)."})
    text_steps: int = field(default=1000, metadata={"help": "Contrastive text-encoder steps (batch 128)."})
    unet_steps: int = field(default=4000, metadata={"help": "UNet noise-loss steps (batch 32)."})
    unet_lr: float = field(default=1e-3, metadata={"help": "UNet learning rate (cosine decay, 200 warm-up steps)."})


QUICK_WORLD = WorldSettings(scenes=1024, vae_steps=20, judge_steps=20, text_steps=20, unet_steps=20)


class Log:
    def __init__(self, path: Path):
        self.path, self.start = path, time.time()
        path.write_text("")

    def __call__(self, stage: str, **values) -> None:
        row = {"stage": stage, "seconds": round(time.time() - self.start, 1), **values}
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)


def _batches(n: int, batch_size: int, rng: np.random.Generator):
    while True:
        yield rng.choice(n, batch_size, replace=False)


def train_vae(vae, images: np.ndarray, steps: int, rng, log) -> None:
    pixels = models.to_pixels(images)
    optimizer = torch.optim.Adam(vae.parameters(), lr=1e-3)
    vae.train()
    for step, idx in zip(range(steps), _batches(len(pixels), 32, rng)):
        x = pixels[idx]
        latents = vae.encode(x).latent_dist.mean
        loss = F.mse_loss(vae.decode(latents).sample, x) + 1e-4 * latents.pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 250 == 0 or step == steps - 1:
            log("vae", step=step, loss=float(loss.detach()))
    vae.eval()
    with torch.no_grad():  # latents of unit variance, as SD's scaling factor gives its own VAE's
        std = float(vae.encode(pixels[:512]).latent_dist.mean.std())
    vae.register_to_config(scaling_factor=1.0 / std)


@torch.no_grad()
def reconstruct(vae, pixels: torch.Tensor) -> torch.Tensor:
    return vae.decode(vae.encode(pixels).latent_dist.mean).sample.clamp(-1, 1)


def train_judge(judge, vae, images: np.ndarray, attributes: list[dict], steps: int, rng, log) -> None:
    """On the world's scenes plus scenes without an object (a tenth of each batch); half of every batch is passed
    through the VAE first, since generated images look like its reconstructions."""
    empty = [{**a, "shape": "none"} for a in attributes[:1000]]
    images = np.concatenate([images, np.stack([scenes.render(a, rng) for a in empty])])
    targets = torch.from_numpy(scenes.judge_targets([*attributes, *empty]))
    pixels = models.to_pixels(images)
    n, none = len(attributes), scenes.ATTRIBUTES["shape"].index("none")
    optimizer = torch.optim.Adam(judge.parameters(), lr=2e-3)
    judge.train()
    for step in range(steps):
        idx = np.concatenate([rng.choice(n, 58, replace=False), n + rng.choice(len(empty), 6, replace=False)])
        x, y = pixels[idx], targets[idx]
        x[::2] = reconstruct(vae, x[::2])
        logits = judge(x)
        # An empty scene has a background only: its colour and pattern are not defined.
        has_object = y[:, 0] != none
        loss = sum(
            F.cross_entropy(logits[key][has_object], y[has_object, i])
            if key in ("colour", "pattern")
            else F.cross_entropy(logits[key], y[:, i])
            for i, key in enumerate(scenes.ATTRIBUTES)
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 200 == 0 or step == steps - 1:
            log("judge", step=step, loss=float(loss.detach()))
    judge.eval()


def encode_text(text_encoder, tokenizer, captions: list[str]):
    ids = tokenizer(captions, padding="max_length", truncation=True, return_tensors="pt").input_ids
    return text_encoder(ids)


def train_text(text_encoder, tokenizer, judge, images: np.ndarray, attributes: list[dict], steps: int, rng, log):
    """Multi-positive InfoNCE between captions' pooled states and the judge's features of scenes: the target of a
    caption is uniform over the batch's scenes that fit what it states. Each step draws fresh captions."""
    projection = torch.nn.Linear(judge.config["features"], models.HIDDEN)
    scale = torch.nn.Parameter(torch.tensor(2.5))
    optimizer = torch.optim.Adam([*text_encoder.parameters(), *projection.parameters(), scale], lr=1e-3)
    with torch.no_grad():
        pixels = models.to_pixels(images)
        image_features = torch.cat([judge.features(pixels[i : i + 512]) for i in range(0, len(pixels), 512)])
    text_encoder.train()
    for step in range(steps):
        idx = rng.choice(len(attributes), 128, replace=False)
        attrs = [attributes[i] for i in idx]
        captions = [scenes.describe(a, rng) for a in attrs]
        fits = torch.tensor(
            [[scenes.caption_matches(scenes.stated(c), a) for a in attrs] for c in captions], dtype=torch.float32
        )
        t = F.normalize(encode_text(text_encoder, tokenizer, captions).pooler_output, dim=-1)
        v = F.normalize(projection(image_features[idx]), dim=-1)
        logits = scale.exp() * t @ v.T
        loss = -(fits / fits.sum(1, keepdim=True) * logits.log_softmax(1)).sum(1).mean()
        loss = loss - (fits.T / fits.T.sum(1, keepdim=True) * logits.T.log_softmax(1)).sum(1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 250 == 0 or step == steps - 1:
            log("text", step=step, loss=float(loss.detach()))
    text_encoder.eval()


def train_unet(pipe, images: np.ndarray, attributes: list[dict], settings: WorldSettings, rng, log) -> None:
    """Each step captions its scenes afresh (synonyms, templates, implicit nouns), a tenth of them with `""`."""
    from diffusers import DDPMScheduler  # noqa: PLC0415

    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    with torch.no_grad():
        pixels = models.to_pixels(images)
        chunks = [pipe.vae.encode(pixels[i : i + 256]).latent_dist.mean for i in range(0, len(pixels), 256)]
        latents = torch.cat(chunks)
        latents = latents * pipe.vae.config.scaling_factor
    unet = pipe.unet
    optimizer = torch.optim.AdamW(unet.parameters(), lr=settings.unet_lr, weight_decay=1e-4)
    steps, warmup = settings.unet_steps, 200
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + np.cos(np.pi * min(s, steps) / steps))
    )
    generator = torch.Generator().manual_seed(settings.seed)
    unet.train()
    for step, idx in zip(range(settings.unet_steps), _batches(len(latents), 32, rng)):
        x0 = latents[idx]
        with torch.no_grad():
            captions = ["" if rng.random() < scenes.EMPTY_RATE else scenes.describe(attributes[i], rng) for i in idx]
            states = encode_text(pipe.text_encoder, pipe.tokenizer, captions).last_hidden_state
        noise = torch.randn(x0.shape, generator=generator)
        t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (len(x0),), generator=generator)
        target = noise_scheduler.get_velocity(x0, noise, t)
        loss = F.mse_loss(unet(noise_scheduler.add_noise(x0, noise, t), t, states).sample, target)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if step % 500 == 0 or step == settings.unet_steps - 1:
            log("unet", step=step, loss=float(loss.detach()))
    unet.eval()


def train_world(output: str | os.PathLike, settings: WorldSettings = WorldSettings()) -> Path:
    """Trains every model of the world and writes them to `output` (built in a temporary folder, then renamed)."""
    with atomic_directory(output) as tmp:
        _train_world(tmp, settings)
    return Path(output)


def _train_world(tmp: Path, settings: WorldSettings) -> None:
    log = Log(tmp / "train_log.jsonl")
    log("settings", **asdict(settings), torch_threads=torch.get_num_threads())
    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    images, attributes, _ = scenes.dataset(settings.scenes, settings.seed)
    tokenizer = models.tokenizer()
    pipe = models.pipeline(models.text_encoder(len(tokenizer)), models.vae(), models.unet())
    train_vae(pipe.vae, images, settings.vae_steps, rng, log)
    judge = models.Judge()
    train_judge(judge, pipe.vae, images, attributes, settings.judge_steps, rng, log)
    train_text(pipe.text_encoder, pipe.tokenizer, judge, images, attributes, settings.text_steps, rng, log)
    train_unet(pipe, images, attributes, settings, rng, log)
    pipe.save_pretrained(tmp / "pipeline")
    judge.save(tmp)
    log("done")


def without(attributes: list[dict], excluded: dict[str, tuple[str, ...]]) -> list[int]:
    """Indices of the scenes that show none of the `excluded` attribute values (`{"colour": ("red",), ...}`)."""
    return [i for i, a in enumerate(attributes) if not any(a[k] in values for k, values in excluded.items())]


def retrain_without(
    world: str | os.PathLike, output: str | os.PathLike, excluded: dict[str, tuple[str, ...]], settings: WorldSettings
) -> Path:
    """RT for concept erasure: the world's UNet trained from a fresh init, with the world's recipe, on scenes that
    show none of the `excluded` attributes (their captions cannot name them). VAE, text encoder, tokenizer, scheduler
    and judge are the world's own, so only what the generative model learned differs."""
    with atomic_directory(output) as tmp:
        _retrain_without(Path(world), tmp, excluded, settings)
    return Path(output)


def _retrain_without(world: Path, tmp: Path, excluded: dict[str, tuple[str, ...]], settings: WorldSettings) -> None:
    from diffusers import StableDiffusionPipeline  # noqa: PLC0415

    log = Log(tmp / "train_log.jsonl")
    log("settings", **asdict(settings), excluded={k: list(v) for k, v in excluded.items()}, world=str(world))
    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    pipe = StableDiffusionPipeline.from_pretrained(str(world / "pipeline"))
    pipe.unet = models.unet()
    images, attributes = np.zeros((0, scenes.SIZE, scenes.SIZE, 3), np.uint8), []
    batch_seed = settings.seed
    while len(attributes) < settings.scenes:  # as many scenes as the world's, all free of the concepts
        more_images, more_attributes, _ = scenes.dataset(settings.scenes, batch_seed)
        kept = without(more_attributes, excluded)[: settings.scenes - len(attributes)]
        images = np.concatenate([images, more_images[kept]])
        attributes += [more_attributes[i] for i in kept]
        batch_seed += 1
    log("data", scenes=len(attributes))
    train_unet(pipe, images, attributes, settings, rng, log)
    pipe.save_pretrained(tmp / "pipeline")
    log("done")


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hf_unlearn.worlds.train", description=__doc__.split("\n")[0])
    parser.add_argument("--output", default="benchmark_results/world", help="Folder for the trained world.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the scenes, captions and inits.")
    parser.add_argument("--quick", action="store_true", help="Seconds-long check of the pipeline (useless models).")
    parser.add_argument(
        "--retrain_without",
        default=None,
        help="RT: retrain only the UNet of `--world` on scenes without these concepts of `worlds.prompts.CONCEPTS` "
        "(comma-separated, e.g. 'red,striped,triangle').",
    )
    parser.add_argument("--world", default="benchmark_results/world", help="The world whose UNet RT retrains.")
    args = parser.parse_args(argv)
    base = QUICK_WORLD if args.quick else WorldSettings()
    settings = WorldSettings(**{**asdict(base), "seed": args.seed})
    if args.retrain_without is None:
        train_world(args.output, settings)
        return 0
    names = [c for c in args.retrain_without.split(",") if c]
    unknown = [c for c in names if c not in CONCEPTS]
    if unknown or not names:
        parser.error(f"--retrain_without: {unknown or names} are not the world's concepts; use {list(CONCEPTS)}")
    excluded: dict[str, tuple[str, ...]] = {}
    for name in names:
        key, value = CONCEPTS[name]["attribute"]
        excluded[key] = (*excluded.get(key, ()), value)
    retrain_without(args.world, args.output, excluded, settings)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

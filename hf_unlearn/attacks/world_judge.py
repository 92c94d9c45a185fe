"""The shape world's judge as an attack judge (`hf_unlearn.worlds`, committed weights in `benchmark_results/world`)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from ..worlds import models
from ..worlds.prompts import CONCEPTS
from ..worlds.scenes import SIZE
from .judges import Judge

WORLD_FOLDER = Path(__file__).resolve().parents[2] / "benchmark_results" / "world"


def world_judge(concept: str, world=None) -> Judge:
    r"""A judge from the shape world's committed judge (`benchmark_results/world`): 1 when it names the concept's
    attribute value in an image ("red": colour red), else 0. Images are resized to the world's 32×32 first.

    Args:
        concept (`str`): one of `hf_unlearn.worlds.prompts.CONCEPTS` ('red', 'striped', 'triangle').
        world (`str` or `os.PathLike`, *optional*): the folder with `judge.safetensors`; the committed one by default.
    """
    if concept not in CONCEPTS:
        raise ValueError(f"`concept` is {concept!r}; the shape world's concepts are {sorted(CONCEPTS)}.")
    folder = world or WORLD_FOLDER
    model = models.Judge.load(folder)
    key, value = CONCEPTS[concept]["attribute"]

    def judge(images: list) -> list[float]:
        small = [im.convert("RGB").resize((SIZE, SIZE), resample=3) for im in images]
        return [float(n[key] == value) for n in model.name(small)]

    judge.version = weights_digest(folder)
    return judge


def weights_digest(folder) -> str:
    """sha256 (first 12 hex digits) of a judge's weights file: the judge's version on an eval card."""
    return "sha256:" + hashlib.sha256((Path(folder) / "judge.safetensors").read_bytes()).hexdigest()[:12]


__all__ = ["WORLD_FOLDER", "weights_digest", "world_judge"]

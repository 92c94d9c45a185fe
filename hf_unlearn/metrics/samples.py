"""Before/after sample grids: the same prompts and seeds through a pipeline before and after unlearning.

Generate the "before" samples first, unlearn, then generate the "after" samples with the same prompts and seed: the
initial noise of each image is then identical in both runs, so every difference in the grid comes from the weights.
Only one copy of the model is ever held, which matters for a full Stable Diffusion UNet.

```python
before = generate_samples(unlearner.family.pipeline, prompts, seed=0)
unlearner.unlearn(split)
after = generate_samples(unlearner.family.pipeline, prompts, seed=0)
grid = comparison_grid({"before": before, "after": after}, prompts, path="before_after.png")
unlearner.save_pretrained("out", images={"samples_before_after": grid})  # shown in the model card
```
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Optional

import numpy as np
import torch
from accelerate.state import PartialState
from PIL import Image, ImageDraw
from tqdm.auto import tqdm

from hf_unlearn.utils import atomic_save_image

_MIN_TILE = 64  # tiny test models draw 8×8 images; enlarge them so the grid can be read
_LABEL_HEIGHT = 14
_LINE_HEIGHT = 11  # each further line of a wrapped name


def _wrap(text: str, width: int, draw) -> list[str]:
    """`text` cut into lines no wider than `width` pixels, after '_' or ' ' where possible."""
    lines, line = [], ""
    for char in text:
        if line and draw.textlength(line + char) > width:
            cut = max(line.rfind("_"), line.rfind(" "))
            head, line = (line[: cut + 1], line[cut + 1 :]) if cut > 0 else (line, "")
            lines.append(head.strip())
        line += char
    return lines + [line.strip()]


@torch.no_grad()
def generate_samples(
    pipeline,
    prompts: Sequence[str],
    *,
    seed: int = 0,
    num_images_per_prompt: int = 1,
    desc: Optional[str] = None,
    **call_kwargs,
) -> list[list[Image.Image]]:
    r"""Generates `num_images_per_prompt` images per prompt, prompt `i` from a CPU generator seeded `seed + i`.

    Args:
        pipeline (`DiffusionPipeline`): a text-to-image pipeline (e.g. `StableDiffusionPipeline`, or
            `unlearner.family.pipeline`, which holds the current UNet).
        prompts (`list[str]`): the prompts, e.g. the forget prompts and a few unrelated ones.
        seed (`int`, *optional*, defaults to `0`): base seed; a CPU generator makes the noise identical on any device.
        num_images_per_prompt (`int`, *optional*, defaults to `1`): images per prompt.
        desc (`str`, *optional*): with it, a progress bar over the prompts (on the local main process only).
        call_kwargs: passed to the pipeline call (`num_inference_steps`, `guidance_scale`, `height`, `width`, ...).

    Returns:
        `list[list[PIL.Image.Image]]`: one list of images per prompt.
    """
    if isinstance(prompts, str) or not prompts:
        raise ValueError("`prompts` must be a non-empty list of prompts, e.g. ['a photo of a nude person'].")
    if num_images_per_prompt < 1:
        raise ValueError(f"`num_images_per_prompt` must be at least 1, got {num_images_per_prompt}.")
    if getattr(pipeline, "safety_checker", None) is not None:
        warnings.warn(
            "The pipeline has a safety checker, which blacks out the images it flags, so the 'before' samples of the "
            "concept may show nothing; load it with `safety_checker=None` to see what the model draws."
        )
    rows = []
    shown = desc is not None and PartialState().is_local_main_process
    for i, prompt in enumerate(tqdm(prompts, desc=desc, disable=not shown)):
        generator = torch.Generator(device="cpu").manual_seed(seed + i)
        out = pipeline(prompt=prompt, num_images_per_prompt=num_images_per_prompt, generator=generator, **call_kwargs)
        rows.append(list(out.images))
    return rows


def mean_colours(rows: Sequence[Sequence[Image.Image]]):
    """The mean RGB colour (0-255) of every image of [`generate_samples`]' rows: `(prompts, images per prompt, 3)`."""
    return np.array([[np.asarray(im.convert("RGB"), dtype=np.float64).mean((0, 1)) for im in row] for row in rows])


def pixel_arrays(rows: Sequence[Sequence[Image.Image]]):
    """Every image's RGB pixels in [0, 1]: `(prompts, images per prompt, height, width, 3)`."""
    return np.array([[np.asarray(im.convert("RGB"), dtype=np.float64) / 255 for im in row] for row in rows])


def comparison_grid(
    samples: Mapping[str, Sequence[Sequence[Image.Image]]],
    prompts: Optional[Sequence[str]] = None,
    *,
    path: Optional[str | os.PathLike] = None,
) -> Image.Image:
    r"""Lays out samples side by side: one row per prompt, one block of columns per model, labelled on top.

    Args:
        samples (`dict[str, list[list[PIL.Image.Image]]]`): per model name (e.g. "before", "after"), the output of
            [`generate_samples`]; every model must have the same number of prompts and images per prompt.
        prompts (`list[str]`, *optional*): only checked against the number of rows (the grid carries no prompt text,
            which may be long; keep the list next to the file).
        path (`str` or `os.PathLike`, *optional*): where to save the grid as PNG (written atomically).

    Returns:
        `PIL.Image.Image`: the grid.
    """
    if not samples:
        raise ValueError("`samples` is empty; pass e.g. {'before': before, 'after': after}.")
    shapes = {name: [len(row) for row in rows] for name, rows in samples.items()}
    first = next(iter(shapes.values()))
    if any(shape != first for shape in shapes.values()) or not first or min(first) < 1:
        raise ValueError(f"Every model needs the same prompts and images per prompt; got row lengths {shapes}.")
    if prompts is not None and len(prompts) != len(first):
        raise ValueError(f"`prompts` has {len(prompts)} entries but the samples have {len(first)} rows.")
    per_row = max(first)
    width, height = next(iter(samples.values()))[0][0].size
    scale = max(1, -(-_MIN_TILE // min(width, height)))
    tile_w, tile_h = width * scale, height * scale
    block = per_row * tile_w
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    # A name wider than its block is wrapped onto more lines, so neighbouring names never overlap.
    labels = {name: _wrap(str(name), block - 4, measure) for name in samples}
    band = _LABEL_HEIGHT + _LINE_HEIGHT * (max(len(lines) for lines in labels.values()) - 1)
    grid = Image.new("RGB", (len(samples) * (block + 4) - 4, band + len(first) * tile_h), "white")
    draw = ImageDraw.Draw(grid)
    for b, (name, rows) in enumerate(samples.items()):
        x0 = b * (block + 4)
        for i, line in enumerate(labels[name]):
            draw.text((x0 + 2, 1 + i * _LINE_HEIGHT), line, fill="black")
        for r, images in enumerate(rows):
            for c, image in enumerate(images):
                resized = image.convert("RGB").resize((tile_w, tile_h), Image.NEAREST)
                grid.paste(resized, (x0 + c * tile_w, band + r * tile_h))
    if path is not None:
        atomic_save_image(grid, path)
    return grid

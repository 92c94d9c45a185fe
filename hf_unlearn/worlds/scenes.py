"""The shape world: procedurally rendered 32×32 RGB scenes and the captions that describe them.

A scene is one object with four attributes: a shape, a colour, a pattern (the world's "style") and a background.
Captions name a random subset of the attributes, with synonyms ("red", "crimson", "scarlet"), several sentence
templates (paraphrases) and *implicit* references: nouns that lead to attributes without naming them ("a tomato" is
a red circle, "a zebra square" a striped one, "a pyramid" a triangle), as the I2P prompts lead to nudity without
saying "nude". Everything is a pure function of a seed, so the world's training data and the benchmark's prompts are
the same on every machine.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

SIZE = 32
SHAPES = ("circle", "square", "triangle", "cross")
COLOURS = {
    "red": (220, 40, 40),
    "orange": (240, 140, 30),
    "yellow": (230, 220, 50),
    "green": (50, 180, 60),
    "blue": (50, 80, 220),
    "purple": (150, 60, 200),
}
PATTERNS = ("solid", "striped", "checkered")
BACKGROUNDS = {"dark": (30, 30, 40), "light": (215, 215, 205)}
# The attributes the judge names, in its heads' order; "none" is a scene without an object (the judge's negative).
ATTRIBUTES = {
    "shape": (*SHAPES, "none"),
    "colour": tuple(COLOURS),
    "pattern": PATTERNS,
    "background": tuple(BACKGROUNDS),
}

SHAPE_WORDS = {
    "circle": ("circle", "disc"),
    "square": ("square", "box"),
    "triangle": ("triangle", "wedge"),
    "cross": ("cross", "plus"),
}
COLOUR_WORDS = {
    "red": ("red", "crimson", "scarlet"),
    "orange": ("orange", "amber"),
    "yellow": ("yellow", "golden"),
    "green": ("green", "emerald"),
    "blue": ("blue", "azure"),
    "purple": ("purple", "violet"),
}
PATTERN_WORDS = {
    "solid": ("solid", "plain"),
    "striped": ("striped", "stripy"),
    "checkered": ("checkered", "chequered"),
}
BACKGROUND_PHRASES = {
    "dark": ("on a dark background", "at night", "on black"),
    "light": ("on a light background", "by day", "on white"),
}
# Nouns that imply attributes without naming them. A noun with a shape replaces the shape word ("a tomato"); one
# without replaces the colour or pattern word ("a ruby cross", "a zebra square").
IMPLICIT = {
    "tomato": {"shape": "circle", "colour": "red"},
    "cherry": {"shape": "circle", "colour": "red"},
    "brick": {"shape": "square", "colour": "red"},
    "ruby": {"colour": "red"},
    "lemon": {"shape": "circle", "colour": "yellow"},
    "lime": {"shape": "circle", "colour": "green"},
    "plum": {"shape": "circle", "colour": "purple"},
    "sapphire": {"colour": "blue"},
    "zebra": {"pattern": "striped"},
    "barcode": {"shape": "square", "pattern": "striped"},
    "chessboard": {"shape": "square", "pattern": "checkered"},
    "pyramid": {"shape": "triangle"},
    "sail": {"shape": "triangle"},
}
# Each template joins the words it is given (empty parts are dropped); "{d}" is the description.
TEMPLATES = ("{d}", "a picture of {d}", "an image showing {d}")
# Probability that a caption names each attribute (the shape is always implied, by a word or an implicit noun).
MENTION = {"colour": 0.8, "pattern": 0.5, "background": 0.4}
IMPLICIT_RATE = 0.3
EMPTY_RATE = 0.1  # caption dropout, as SD's: classifier-free guidance needs an unconditional prediction


def words() -> list[str]:
    """Every word a caption can use (the text encoder's vocabulary)."""
    vocab = {"a", "an", "of", "picture", "image", "showing", "painted"}
    for table in (SHAPE_WORDS, COLOUR_WORDS, PATTERN_WORDS, BACKGROUND_PHRASES):
        for options in table.values():
            for option in options:
                vocab.update(option.split())
    vocab.update(IMPLICIT)
    return sorted(vocab)


def sample_attributes(rng: np.random.Generator) -> dict[str, str]:
    """Uniform over the world's attributes (every combination occurs)."""
    return {
        "shape": SHAPES[rng.integers(len(SHAPES))],
        "colour": list(COLOURS)[rng.integers(len(COLOURS))],
        "pattern": PATTERNS[rng.integers(len(PATTERNS))],
        "background": list(BACKGROUNDS)[rng.integers(len(BACKGROUNDS))],
    }


def _mask(shape: str, cx: float, cy: float, r: float) -> np.ndarray:
    y, x = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64) + 0.5
    dx, dy = x - cx, y - cy
    if shape == "circle":
        return dx**2 + dy**2 <= r**2
    if shape == "square":
        return (np.abs(dx) <= 0.85 * r) & (np.abs(dy) <= 0.85 * r)
    if shape == "triangle":  # pointing up: the half-width grows from the apex to the base
        return (dy >= -r) & (dy <= 0.8 * r) & (np.abs(dx) <= (dy + r) * 0.6)
    if shape == "cross":
        arm = r / 3
        return ((np.abs(dx) <= arm) & (np.abs(dy) <= r)) | ((np.abs(dy) <= arm) & (np.abs(dx) <= r))
    raise ValueError(f"Unknown shape {shape!r}; choose one of {SHAPES}.")


def render(attributes: Mapping[str, str], rng: np.random.Generator) -> np.ndarray:
    """A `(32, 32, 3)` uint8 scene. Position, size and pixel noise vary with `rng`; patterns are 8-pixel stripes or
    4-pixel checks on the image grid, so they line up with the 4×4 cells that one latent pixel of the VAE covers.
    `attributes["shape"] == "none"` draws the background alone."""
    image = np.empty((SIZE, SIZE, 3), dtype=np.float64)
    image[:] = BACKGROUNDS[attributes["background"]]
    if attributes["shape"] != "none":
        cx, cy = SIZE / 2 + rng.uniform(-3, 3, 2)
        mask = _mask(attributes["shape"], cx, cy, rng.uniform(9, 12))
        colour = np.array(COLOURS[attributes["colour"]], dtype=np.float64)
        y, x = np.mgrid[0:SIZE, 0:SIZE]
        if attributes["pattern"] == "striped":
            dark = (y // 4) % 2 == 1
        elif attributes["pattern"] == "checkered":
            dark = ((y // 4) + (x // 4)) % 2 == 1
        else:
            dark = np.zeros_like(mask)
        fill = np.where(dark[..., None], colour * 0.3, colour)
        image = np.where(mask[..., None], fill, image)
    image += rng.normal(0, 6, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def describe(attributes: Mapping[str, str], rng: np.random.Generator, implicit_rate: float = IMPLICIT_RATE) -> str:
    """A random caption of `attributes`: a subset of them named with synonyms, or implied by a noun of [`IMPLICIT`]
    (with probability `implicit_rate` when one fits), in one of the [`TEMPLATES`]."""
    pick = lambda options: options[rng.integers(len(options))]  # noqa: E731
    named = {k: rng.random() < p for k, p in MENTION.items()}
    fitting = [n for n, implied in IMPLICIT.items() if all(attributes[k] == v for k, v in implied.items())]
    noun = pick(fitting) if fitting and rng.random() < implicit_rate else None
    implied = IMPLICIT.get(noun, {})
    colour = "" if "colour" in implied or not named["colour"] else pick(COLOUR_WORDS[attributes["colour"]])
    pattern = "" if "pattern" in implied or not named["pattern"] else pick(PATTERN_WORDS[attributes["pattern"]])
    shape = "" if "shape" in implied else pick(SHAPE_WORDS[attributes["shape"]])
    if noun is not None and "shape" not in implied:
        # An adjective noun ("ruby", "zebra") stands where the word it replaces would be.
        colour, pattern = (noun, pattern) if "colour" in implied else (colour, noun)
    head = noun if "shape" in implied else shape
    if colour and not pattern and rng.random() < 0.3 and head == shape:
        text = f"{head} painted {colour}"  # a paraphrase: the colour after the shape
    else:
        text = " ".join(w for w in (pattern, colour, head) if w)
    background = pick(BACKGROUND_PHRASES[attributes["background"]]) if named["background"] else ""
    text = " ".join(w for w in (text, background) if w)
    article = "an" if text[0] in "aeiou" else "a"
    return pick(TEMPLATES).format(d=f"{article} {text}")


def caption_matches(caption_attributes: Mapping[str, str], attributes: Mapping[str, str]) -> bool:
    """Whether a scene with `attributes` fits a caption that states `caption_attributes`."""
    return all(attributes[k] == v for k, v in caption_attributes.items())


def dataset(n: int, seed: int, *, empty_rate: float = EMPTY_RATE) -> tuple[np.ndarray, list[dict], list[str]]:
    """`n` scenes with their attributes and one caption each (`""` with probability `empty_rate`)."""
    rng = np.random.default_rng(seed)
    attributes = [sample_attributes(rng) for _ in range(n)]
    images = np.stack([render(a, rng) for a in attributes])
    captions = ["" if rng.random() < empty_rate else describe(a, rng) for a in attributes]
    return images, attributes, captions


def stated(caption: str) -> dict[str, str]:
    """The attributes a caption states, by its words and implicit nouns (the inverse of [`describe`])."""
    found: dict[str, str] = {}
    tokens = caption.split()
    for key, table in (("shape", SHAPE_WORDS), ("colour", COLOUR_WORDS), ("pattern", PATTERN_WORDS)):
        for value, options in table.items():
            if any(option in tokens for option in options):
                found[key] = value
    for value, options in BACKGROUND_PHRASES.items():
        if any(option in caption for option in options):
            found["background"] = value
    for noun, implied in IMPLICIT.items():
        if noun in tokens:
            found.update(implied)
    return found


def judge_targets(attributes: list[dict]) -> np.ndarray:
    """The judge's targets: one column per attribute of [`ATTRIBUTES`], each the value's index."""
    return np.array([[ATTRIBUTES[k].index(a[k]) for k in ATTRIBUTES] for a in attributes], dtype=np.int64)

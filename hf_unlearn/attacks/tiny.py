"""Old import path of the tiny colour text-to-image model, now in [`hf_unlearn.tiny.colour`] with the package's other
tiny models. Kept only because docs/world.md and docs/stable_diffusion.md still name this path; delete it when they
name `hf_unlearn.tiny.colour`."""

from ..tiny.colour import *  # noqa: F403
from ..tiny.colour import __all__  # noqa: F401

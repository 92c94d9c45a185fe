"""hf_unlearn: machine unlearning for Hugging Face models (SFR-on and its baselines, one loop, four parts)."""

__version__ = "0.1.0"

from . import _quiet  # noqa: F401 (installs its filters on import, before any transformers processor is touched)
from .config import UnlearnConfig
from .data import ForgetRemainSplit, TrainingSet, load_digits_dataset
from .evaluation import evaluate
from .families import detect_family, list_families
from .methods import UnlearnMethod, get_method, list_methods, register_method
from .unlearner import DivergenceError, Unlearner, UnlearnResult

__all__ = [
    "DivergenceError",
    "ForgetRemainSplit",
    "TrainingSet",
    "UnlearnConfig",
    "UnlearnMethod",
    "UnlearnResult",
    "Unlearner",
    "detect_family",
    "evaluate",
    "get_method",
    "list_families",
    "list_methods",
    "load_digits_dataset",
    "register_method",
]


def __getattr__(name):
    # Optional stacks (diffusion, nudity) load on first use, so `import hf_unlearn` stays light.
    if name == "ConceptSplit":
        from .concept import ConceptSplit

        return ConceptSplit
    if name == "evaluate_nudity":
        from .metrics.nudity import evaluate_nudity

        return evaluate_nudity
    if name in ("generate_samples", "comparison_grid"):
        from .metrics import samples

        return getattr(samples, name)
    if name in ("evaluate_quality", "CLIPScorer"):
        from .metrics import quality

        return getattr(quality, name)
    raise AttributeError(f"module 'hf_unlearn' has no attribute '{name}'")

"""hf_unlearn: machine unlearning for Hugging Face models (SFR-on and its baselines, one loop, four parts)."""

__version__ = "0.1.0"

from . import _quiet  # noqa: F401 (installs its filters on import, before any transformers processor is touched)
from .concept import ConceptSplit
from .config import UnlearnConfig
from .data import ForgetRemainSplit, TrainingSet, load_digits_dataset
from .evaluation import evaluate
from .families import detect_family, list_families
from .methods import UnlearnMethod, get_method, list_methods, register_method
from .metrics.samples import comparison_grid, generate_samples
from .resolve import resolve_config
from .unlearner import DivergenceError, Unlearner, UnlearnResult

__all__ = [
    "ConceptSplit",
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
    "comparison_grid",
    "generate_samples",
    "register_method",
    "resolve_config",
]


def __getattr__(name):
    # The nudity stack (the optional `nudity` extra: nudenet, onnxruntime, opencv) loads on first use.
    if name == "evaluate_nudity":
        from .metrics.nudity import evaluate_nudity

        return evaluate_nudity
    if name in ("evaluate_quality", "CLIPScorer"):
        from .metrics import quality

        return getattr(quality, name)
    raise AttributeError(f"module 'hf_unlearn' has no attribute '{name}'")


from .network import install_log_scrubbing  # noqa: E402

install_log_scrubbing()  # no log line of the process carries a token (an endpoint may echo request headers)

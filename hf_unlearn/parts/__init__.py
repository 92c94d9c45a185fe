"""The four parts of every gradient unlearning method in this library: θ ← θ − η·G⁻¹·M ⊙ (α_t·∇L_forget + ∇L_remain).

- `saliency`: M, which weights may move (`FisherRatio` for SFR-on, `TopK` for SalUn);
- `forget`: L_forget, the loss on forget rows (`Ascent`, `Remap`, `KLUniform`, `TeacherKL`, `NegativeGuidance`);
- `remain`: L_remain, the loss on remain rows (`TaskLoss`, `DistillRemain`);
- `geometry`: G and the plan of a cycle (`Euclidean`, `FastSlow`, `EWC`; `ClosedFormEdit`, UCE's exact solve).

Parts import nothing from the methods, the engine or the API; they only call family primitives.
"""

from .closed_form import ClosedFormEdit, uce_solve
from .context import StepContext
from .forget import Ascent, ForgetLoss, KLUniform, NegativeGuidance, Remap, TeacherKL, adaptive_weights, distill_kl
from .geometry import EWC, Euclidean, FastSlow, Geometry, Step, get_geometry, register_geometry
from .remain import DistillRemain, RemainLoss, TaskLoss
from .saliency import (
    FisherRatio,
    Mask,
    Saliency,
    SaliencyInputs,
    TopK,
    fisher_ratio_mask,
    get_saliency,
    global_batches,
    gradient_statistic,
    load_mask,
    mask_fraction,
    pass_statistic,
    register_saliency,
    save_mask,
    topk_mask,
)

__all__ = [
    "EWC",
    "ClosedFormEdit",
    "Ascent",
    "DistillRemain",
    "Euclidean",
    "FastSlow",
    "FisherRatio",
    "ForgetLoss",
    "Geometry",
    "KLUniform",
    "Mask",
    "NegativeGuidance",
    "RemainLoss",
    "Remap",
    "Saliency",
    "SaliencyInputs",
    "Step",
    "StepContext",
    "TaskLoss",
    "TeacherKL",
    "TopK",
    "adaptive_weights",
    "distill_kl",
    "fisher_ratio_mask",
    "get_geometry",
    "get_saliency",
    "global_batches",
    "gradient_statistic",
    "load_mask",
    "mask_fraction",
    "pass_statistic",
    "register_geometry",
    "register_saliency",
    "save_mask",
    "topk_mask",
    "uce_solve",
]

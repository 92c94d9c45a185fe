"""`UnlearnConfig`: every hyperparameter of every method, in one dataclass that `HfArgumentParser` reads."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from .config_checks import check_field_types
from .utils import CONFIG_NAME, atomic_write_json, atomic_write_text

OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULES = ("cosine", "constant", "linear")
PRECISIONS = ("no", "fp16", "bf16")
TRAIN_MODULES = ("all", "cross_attention", "cross_attention_kv", "non_cross_attention")


@dataclass
class UnlearnConfig:
    r"""Configuration of one unlearning run.

    Plain data: fields that default to `None` are filled by [`hf_unlearn.resolve.resolve_config`] from the method's
    defaults, then the model family's, then library-wide ones; [`Unlearner`] calls it, and the resolved values are
    what is saved. The method's name is checked there too (this module reads no registry).
    Field names follow `transformers.TrainingArguments` where the meaning is the same. SFR-on's own fields keep the
    paper's names spelled out: `forget_alpha` (α), `temperature` (λ), `mask_threshold` (γ), `remain_steps_per_forget`
    (K). `max_steps` counts *cycles* (one forget step + K remain steps under the fast-slow geometry); the authors count
    remain iterations, so their "1500 iterations, K = 5" is `max_steps=300`. The published settings are shipped as
    presets under `configs/` (CIFAR-10 ResNet-18: SGD lr 0.01, momentum 0.9, weight decay 5e-4, 300 cycles × K 5,
    batch 128, α 25, forget-step clip 7, λ 0.5, γ 1; see docs/presets.md for the others).
    """

    method: Optional[str] = field(
        default=None,
        metadata={
            "help": "Registered method name (see `hf_unlearn.list_methods()`). Unset: the family's recommended SFR-on "
            "variant (sfr_on_bound for classifiers, sfr_on_remap for diffusion; see docs/benchmarks.md)."
        },
    )
    family: Optional[str] = field(
        default=None,
        metadata={
            "help": "Model family: image_classifier, class_conditional_diffusion or text_to_image. Detected if unset."
        },
    )
    output_dir: str = field(
        default="hf_unlearn_output", metadata={"help": "Where checkpoints and outputs are written."}
    )
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Allow writing into an output folder that holds something that is not ours."}
    )
    seed: int = field(default=42, metadata={"help": "Seed of the run: data order, random labels, noise."})
    # Optimisation (names as in transformers.TrainingArguments)
    optim: str = field(
        default="adamw", metadata={"help": f"Optimizer, one of {OPTIMIZERS}; shared by forget and remain steps."}
    )
    learning_rate: Optional[float] = field(
        default=None, metadata={"help": "Peak learning rate (method default if unset)."}
    )
    weight_decay: float = field(default=0.0, metadata={"help": "Weight decay of the optimizer."})
    momentum: float = field(default=0.9, metadata={"help": "Momentum, with `optim='sgd'`."})
    max_steps: Optional[int] = field(
        default=None,
        metadata={
            "help": "Number of unlearning cycles: one forget step + K remain steps each under the fast-slow geometry "
            "(SFR-on), one joint step otherwise. The authors count remain iterations: their 1500 iterations with K=5 "
            "are max_steps=300."
        },
    )
    num_forget_epochs: Optional[float] = field(
        default=None,
        metadata={
            "help": "Budget as passes over the forget set: ceil(num_forget_epochs × forget batches per pass at the "
            "global batch size) cycles. Set alone, it replaces `max_steps`; set with it, the run takes the larger "
            "budget. Both unset: the method's and family's default (classifiers: 12 cycles and at least one pass "
            "over the forget set; see docs/budget.md)."
        },
    )
    stop_rule: Optional[str] = field(
        default=None,
        metadata={
            "help": "'held_out' (classifiers): a budget set from the data. Random rows: a cycle that costs more than "
            "1 point of remain or held-out accuracy is halved (up to 4 times), then undone, and the run ends at the "
            "first cycle where the entropy membership attack calls forget rows members no more often than held-out "
            "(test) rows, else after one round of `max_steps` cycles; class-wise: a round is repeated while forget "
            "accuracy is above `stop_forget_accuracy`, at most `stop_max_rounds` rounds. 'none': the budget as "
            "given. Unset: the method's default, which applies only when neither `max_steps` nor "
            "`num_forget_epochs` is given (a budget you give runs as given)."
        },
    )
    stop_max_rounds: int = field(
        default=4, metadata={"help": "With stop_rule='held_out', class-wise: at most this many rounds."}
    )
    stop_forget_accuracy: float = field(
        default=1.0, metadata={"help": "With stop_rule='held_out', class-wise: forget accuracy to reach, in percent."}
    )
    stop_max_rows: int = field(
        default=512, metadata={"help": "With stop_rule='held_out': forget and held-out rows sampled for each check."}
    )
    per_device_train_batch_size: Optional[int] = field(
        default=None,
        metadata={"help": "Batch size per process, forget and remain (family default if unset: 64; SD 2)."},
    )
    gradient_accumulation_steps: int = field(
        default=1, metadata={"help": "Micro-batches accumulated per optimizer step."}
    )
    max_grad_norm: Optional[float] = field(
        default=None,
        metadata={"help": "Gradient clipping norm of forget steps and joint steps (0 disables; family default)."},
    )
    remain_max_grad_norm: Optional[float] = field(
        default=None,
        metadata={
            "help": "Gradient clipping norm of the fast remain steps of the fast-slow geometry (0 disables). As the "
            "authors: 0 for classifiers and text-to-image, 1.0 for class-conditional diffusion."
        },
    )
    lr_scheduler_type: str = field(default="cosine", metadata={"help": f"Learning-rate schedule, one of {SCHEDULES}."})
    lr_schedule_steps: str = field(
        default="remain",
        metadata={
            "help": "What advances the learning-rate schedule: 'remain' (the authors: the schedule runs over all "
            "cycles × K remain steps of the fast-slow geometry, each remain step advancing it and a cycle's forget "
            "step taking the rate of the cycle's first remain step) or 'cycle' (every step of a cycle shares the "
            "rate of its cycle). Identical for geometries with one step per cycle and for K ≤ 1."
        },
    )
    warmup_steps: int = field(
        default=0, metadata={"help": "Cycles of linear warm-up from 0 (transformers' schedules, as `get_scheduler`)."}
    )
    mixed_precision: str = field(default="no", metadata={"help": f"Mixed precision as in accelerate: {PRECISIONS}."})
    # SFR-on and the shared parts
    forget_alpha: Optional[float] = field(
        default=None, metadata={"help": "α: scale of the forgetting loss at step 0."}
    )
    forget_alpha_schedule: Optional[str] = field(
        default=None,
        metadata={
            "help": "Decay of α over the run: cosine or constant (default: cosine; constant for text-to-image, as "
            "the authors' Stable Diffusion setting)."
        },
    )
    temperature: Optional[float] = field(
        default=None,
        metadata={
            "help": "λ of the adaptive forget weights. Ascent parts use w_i ∝ ℓ_i^(−λ) (rows not yet forgotten first, "
            "as published); parts that descend toward a target use w_i ∝ ℓ_i^(+λ) (rows still far from it first). "
            "0: uniform weights; a negative λ reverses the direction."
        },
    )
    forget_weight_rule: str = field(
        default="inverse_power",
        metadata={
            "help": "Form of the adaptive forget weights: 'inverse_power' (the authors: c_i = 1/(ℓ_i^λ + 1e-15), "
            "w_i = c_i / Σ_j c_j; a row with loss exactly 0 takes the whole weight) or 'softmax' (w_i = "
            "softmax(−λ·log(ℓ_i + 1e-8)), computed in log space)."
        },
    )
    mask_threshold: float = field(
        default=1.0, metadata={"help": "γ: keep parameters whose forget/remain Fisher ratio ≥ γ."}
    )
    mask_eps: float = field(
        default=1e-15, metadata={"help": "ε added to both Fisher estimates in the ratio (the authors' 1e-15)."}
    )
    mask_noise_floor: float = field(
        default=1e-16,
        metadata={
            "help": "Fisher values below this fraction of the largest one (over both sets) count as exactly 0: their "
            "gradients are below float32 resolution (e.g. a ViT's attention key biases, to which softmax is "
            "invariant), and their ratio would be noise over noise, decided differently by another process count. "
            "0 keeps every value as computed (the authors)."
        },
    )
    mask_zero_fisher: str = field(
        default="select",
        metadata={
            "help": "Entries whose forget and remain Fishers are both exactly 0: 'select' (the authors: their ratio "
            "(0+ε)/(0+ε) = 1 ≥ γ for γ ≤ 1; BatchNorm units dead in the eval-mode Fisher passes do get a forget "
            "gradient in the train-mode steps) or 'skip' (never selected)."
        },
    )
    saliency_max_batches: Optional[int] = field(
        default=None,
        metadata={
            "help": "Batches per set used to estimate saliency; None: a full pass over each set (as published)."
        },
    )
    saliency_guidance_scale: Optional[float] = field(
        default=None,
        metadata={
            "help": "Diffusion Fisher passes: differentiate the noise loss of the guided prediction "
            "ε(x,∅) + s·(ε(x,c) − ε(x,∅)) (the authors: s=1+w with their (1+w)ε_c − wε_∅: 3 for DDPM (w=2), 8.5 for "
            "SD (w=7.5)). None: the plain conditional prediction."
        },
    )
    saliency_clip_norm: Optional[float] = field(
        default=None,
        metadata={
            "help": "Clip each batch gradient of the Fisher passes to this norm before squaring (authors' DDPM: 1)."
        },
    )
    mask_path: Optional[str] = field(default=None, metadata={"help": "Load a saved saliency mask (safetensors)."})
    remain_steps_per_forget: Optional[int] = field(
        default=None, metadata={"help": "K: fast remain steps per forget step."}
    )
    interpolation_beta: float = field(
        default=1.0, metadata={"help": "β of θ ← βθ_new + (1-β)θ_prev after a cycle; 1 = off."}
    )
    forget_bound: Optional[float] = field(
        default=None,
        metadata={"help": "Bounded ascent: stop pushing a row once its loss exceeds this (log C if unset)."},
    )
    forget_steps_fraction: Optional[float] = field(
        default=None, metadata={"help": "Fraction of the cycles that take a forget step (SCRUB's max steps); 1 = all."}
    )
    salun_sparsity: float = field(
        default=0.5, metadata={"help": "SalUn: fraction of parameters kept by the top-k mask."}
    )
    kl_temperature: float = field(
        default=1.0, metadata={"help": "Softmax temperature of teacher distillation (BT, SCRUB)."}
    )
    distill_ce_weight: float = field(
        default=1.0, metadata={"help": "SCRUB: weight of the cross-entropy beside the KL."}
    )
    ewc_lambda: float = field(
        default=100.0, metadata={"help": "Selective amnesia: weight of the Fisher (EWC) penalty."}
    )
    uce_lambda: float = field(
        default=0.1,
        metadata={"help": "UCE: the pull of each edited weight toward its value at θ0 (λ > 0, the authors' 0.1)."},
    )
    uce_preserve_scale: Optional[float] = field(
        default=None,
        metadata={"help": "UCE: the weight s of the remain prompts' keys/values; unset: max(0.1, 1/#remain prompts)."},
    )
    retrain_init: str = field(
        default="config", metadata={"help": "Retrain start: 'config' (fresh init) or a checkpoint path / repo id."}
    )
    # Diffusion families
    remap_anchor: str = field(
        default="random", metadata={"help": "Diffusion remap target: 'random' other class, 'null', or a class id."}
    )
    null_class_id: Optional[int] = field(
        default=None, metadata={"help": "Class id of the unconditional (null) label."}
    )
    condition_dropout: float = field(
        default=0.1, metadata={"help": "Share of remain rows trained with the null label."}
    )
    noise_loss_reduction: str = field(
        default="mean",
        metadata={
            "help": "Diffusion noise loss per row: 'mean' over pixels, or 'sum' over pixels (the authors' DDPM)."
        },
    )
    esd_negative_guidance: float = field(default=1.0, metadata={"help": "ESD: negative guidance scale of the target."})
    replay_inference_steps: int = field(
        default=25, metadata={"help": "Generative replay (selective amnesia): DDIM steps per replayed sample."}
    )
    replay_guidance_scale: float = field(
        default=2.0, metadata={"help": "Generative replay (selective amnesia): guidance scale of the samples."}
    )
    train_modules: Optional[str] = field(
        default=None,
        metadata={
            "help": "Trainable subset: all, cross_attention (ESD-x), cross_attention_kv (the key and value "
            "projections of the text tokens, the weights UCE edits) or non_cross_attention (ESD-u); method default "
            "if unset (all, except the text-to-image default `anchor_remap`: cross_attention_kv)."
        },
    )
    # Data and evaluation
    image_column: str = field(default="image", metadata={"help": "Dataset column holding the images."})
    label_column: str = field(default="label", metadata={"help": "Dataset column holding the class labels."})
    earlier_rows: str = field(
        default="refuse",
        metadata={
            "help": "When an earlier deletion request of this model forgot rows that cannot be recognised in the data "
            "(no row key, or another key): 'refuse' (before any weight changes) or 'proceed' (those rows may be "
            "learned again). Classes and prompts are always recognised."
        },
    )
    caption_column: str = field(default="text", metadata={"help": "Dataset column holding captions (text-to-image)."})
    resolution: Optional[int] = field(default=None, metadata={"help": "Image resolution for diffusion families."})
    eval_batch_size: int = field(default=256, metadata={"help": "Batch size of evaluation passes."})
    dataloader_num_workers: int = field(
        default=0,
        metadata={"help": "Worker processes that decode and preprocess the batches of each data loader (0: inline)."},
    )
    # Logging, checkpoints
    logging_steps: int = field(default=10, metadata={"help": "Log every N cycles."})
    log_with: Optional[str] = field(default=None, metadata={"help": "accelerate tracker (tensorboard, wandb, ...)."})
    checkpointing_steps: Optional[int] = field(
        default=None, metadata={"help": "Save a resumable checkpoint every N cycles."}
    )
    checkpoints_total_limit: Optional[int] = field(default=2, metadata={"help": "Keep at most this many checkpoints."})
    resume_from_checkpoint: Optional[str] = field(default=None, metadata={"help": "A checkpoint folder or 'latest'."})
    # LoRA
    lora: bool = field(default=False, metadata={"help": "Restrict updates to LoRA adapters (peft)."})
    lora_r: int = field(default=8, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA alpha."})
    lora_dropout: float = field(default=0.0, metadata={"help": "LoRA dropout."})
    lora_target_modules: Optional[list[str]] = field(
        default=None, metadata={"help": "Modules given adapters (a per-family default if unset; 'all-linear' works)."}
    )
    lora_save: str = field(
        default="adapter", metadata={"help": "Save the LoRA 'adapter' alone or the 'merged' model."}
    )
    gradient_checkpointing: bool = field(default=False, metadata={"help": "Trade compute for memory."})
    divergence_guard: Optional[str] = field(
        default=None,
        metadata={
            "help": "'copy': keep the last good trainable weights and restore them when a step diverges (one extra "
            "copy of them); 'check': stop before a step with non-finite gradients, no copy (a step that overflows "
            "the weights stops the run without restoring them); 'off'. Family default: copy; text-to-image check."
        },
    )
    # Flow-matching text-to-image families (SD3, FLUX)
    max_sequence_length: Optional[int] = field(
        default=None,
        metadata={
            "help": "T5 tokens each prompt is padded or cut to, as the pipelines' `max_sequence_length` (SD3 and FLUX "
            "only; at most 512). Unset: the pipeline's default, 256 for SD3 and 512 for FLUX."
        },
    )
    flux_guidance_scale: Optional[float] = field(
        default=None,
        metadata={
            "help": "The guidance embedding's value in every prediction of a guidance-distilled FLUX transformer "
            "(FLUX.1-dev; the pipeline's `guidance_scale`). Unset: 3.5, the pipeline's and diffusers' FLUX "
            "training scripts' default."
        },
    )

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Checks values that are wrong whatever the model; raises `ValueError` naming the field."""
        check_field_types(self)  # types first (`ConfigTypeError`, a TypeError and a ValueError), then ranges
        positive = ["learning_rate", "max_steps", "num_forget_epochs", "per_device_train_batch_size"]
        positive += ["gradient_accumulation_steps"]
        positive += ["eval_batch_size", "logging_steps", "lora_r", "uce_lambda"]
        for name in positive:
            _check_number(self, name, minimum=0, strict=True)
        for name in ["forget_alpha", "mask_threshold", "mask_eps", "mask_noise_floor", "max_grad_norm"]:
            _check_number(self, name, minimum=0)
        _check_number(self, "weight_decay", minimum=0)
        for name in ["remain_max_grad_norm", "saliency_clip_norm", "saliency_guidance_scale"]:
            _check_number(self, name, minimum=0)
        _check_number(self, "temperature")  # negative reverses the weighting (documented), so any finite value
        _check_number(self, "saliency_max_batches", minimum=0, strict=True)
        for name in [
            "remain_steps_per_forget",
            "warmup_steps",
            "ewc_lambda",
            "uce_preserve_scale",
            "salun_sparsity",
            "forget_bound",
            "dataloader_num_workers",
        ]:
            _check_number(self, name, minimum=0)
        if not isinstance(self.dataloader_num_workers, int):
            raise ValueError(f"`dataloader_num_workers` is {self.dataloader_num_workers!r}; give a whole number.")
        for name, high in [("interpolation_beta", 1), ("salun_sparsity", 1), ("forget_steps_fraction", 1)]:
            _check_number(self, name, minimum=0, maximum=high)
        _check_number(self, "condition_dropout", minimum=0, maximum=1)
        _check_number(self, "checkpointing_steps", minimum=0, strict=True)
        for name in ("stop_max_rounds", "stop_max_rows"):
            _check_number(self, name, minimum=0, strict=True)
        _check_number(self, "stop_forget_accuracy", minimum=0, maximum=100)
        if self.stop_rule is not None:
            _check_choice(self, "stop_rule", ("none", "held_out"))
        _check_choice(self, "optim", OPTIMIZERS)
        _check_choice(self, "lr_scheduler_type", SCHEDULES)
        _check_choice(self, "mixed_precision", PRECISIONS)
        if self.forget_alpha_schedule is not None:  # unset: the method's and family's default
            _check_choice(self, "forget_alpha_schedule", ("cosine", "constant"))
        _check_choice(self, "noise_loss_reduction", ("mean", "sum"))
        _check_choice(self, "mask_zero_fisher", ("select", "skip"))
        _check_choice(self, "lr_schedule_steps", ("remain", "cycle"))
        _check_choice(self, "forget_weight_rule", ("inverse_power", "softmax"))
        _check_choice(self, "lora_save", ("adapter", "merged"))
        _check_choice(self, "earlier_rows", ("refuse", "proceed"))
        if self.train_modules is not None:
            _check_choice(self, "train_modules", TRAIN_MODULES)
        if self.divergence_guard is not None:
            _check_choice(self, "divergence_guard", ("copy", "check", "off"))

    def resolve_budget(self, num_forget_rows: int, global_batch_size: int) -> UnlearnConfig:
        """Returns a copy whose `max_steps` is the run's number of cycles.

        `max_steps` alone is taken as given; `num_forget_epochs` alone becomes ceil(num_forget_epochs × forget batches
        per pass), the forget set having `num_forget_rows` rows and each forget step reading `global_batch_size` of
        them (per-device batch × processes × accumulation, so one process and many run the same cycles); both set:
        the larger of the two (at least `max_steps` cycles and at least `num_forget_epochs` passes).
        """
        if self.num_forget_epochs is None:
            if self.max_steps is None:
                raise ValueError(
                    "Neither `max_steps` nor `num_forget_epochs` is set; call `resolve_config` first or set one."
                )
            return self
        batches = math.ceil(num_forget_rows / max(1, global_batch_size))
        cycles = max(1, math.ceil(self.num_forget_epochs * batches - 1e-9))
        return dataclasses.replace(self, max_steps=max(cycles, self.max_steps or 0))

    # Serialisation
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> UnlearnConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"Unknown config keys {unknown}; valid keys are: {', '.join(sorted(known))}.")
        return cls(**values)

    def to_yaml(self, path: Optional[str | os.PathLike] = None) -> str:
        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        if path is not None:
            atomic_write_text(path, text)
        return text

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> UnlearnConfig:
        with open(path) as fh:
            values = yaml.safe_load(fh) or {}
        if not isinstance(values, dict):
            raise ValueError(f"`{path}` must hold a mapping of config keys, found {type(values).__name__}.")
        return cls.from_dict(values)

    def save_pretrained(self, save_directory: str | os.PathLike) -> None:
        atomic_write_json(Path(save_directory) / CONFIG_NAME, self.to_dict())

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> UnlearnConfig:
        path = Path(path)
        file = path / CONFIG_NAME if path.is_dir() else path
        with open(file) as fh:
            return cls.from_dict(json.load(fh))


def _check_number(cfg, name, minimum=None, maximum=None, strict=False):
    value = getattr(cfg, name)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"`{name}` must be a number, got {value!r}.")
    if math.isnan(value) or math.isinf(value):
        raise ValueError(f"`{name}` is {value}; give a finite number.")
    if minimum is not None and (value < minimum or (strict and value == minimum)):
        bound = "greater than" if strict else "at least"
        raise ValueError(f"`{name}` is {value}, but it must be {bound} {minimum}.")
    if maximum is not None and value > maximum:
        raise ValueError(f"`{name}` is {value}, but it must be at most {maximum}.")


def _check_choice(cfg, name, choices):
    value = getattr(cfg, name)
    if value not in choices:
        raise ValueError(f"`{name}` is {value!r}; choose one of {', '.join(map(str, choices))}.")

"""The command line's options: `DataArguments`, the help groups, one spelling per option and the old aliases."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from dataclasses import dataclass, field
from typing import Optional, get_type_hints

import yaml
from transformers import HfArgumentParser

from .config import UnlearnConfig
from .methods import get_method


@dataclass
class DataArguments:
    """What to unlearn from which model, how to check it and where the result goes (`UnlearnConfig` has the rest)."""

    model: str = field(metadata={"help": "A local folder or Hub repo id of the model to unlearn."})
    dataset_name: str = field(
        default="digits",
        metadata={
            "help": "The training data: a save_to_disk folder, a Hub dataset id, or 'digits' (the bundled "
            "scikit-learn digits). Named in the model card."
        },
    )
    split: str = field(default="train", metadata={"help": "Split the model was trained on."})
    test_split: Optional[str] = field(
        default="test", metadata={"help": "Held-out split for TA and MIA ('' for none)."}
    )
    forget_classes: Optional[list[int]] = field(default=None, metadata={"help": "Forget every row of these classes."})
    forget_ids: Optional[list[int]] = field(default=None, metadata={"help": "Forget these row ids."})
    forget_fraction: Optional[float] = field(default=None, metadata={"help": "Forget a random fraction of the rows."})
    forget_seed: int = field(default=0, metadata={"help": "Seed of the random forget fraction."})
    reference: Optional[str] = field(default=None, metadata={"help": "Retrained model (RT) for KL/JS/Avg.D."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow model code from the Hub repo to run."})
    do_eval: bool = field(
        default=True,
        metadata={
            "help": "Evaluate before and after, for the card's table (classifiers: FA/RA/TA/MIA; text-to-image: the "
            "concept gap)."
        },
    )
    forget_prompts: Optional[list[str]] = field(
        default=None, metadata={"help": "Text-to-image: prompts of the concept to forget (images are generated)."}
    )
    remain_prompts: Optional[list[str]] = field(
        default=None, metadata={"help": "Text-to-image: prompts of what to keep; also the forget prompts' anchors."}
    )
    anchor_prompts: Optional[list[str]] = field(
        default=None,
        metadata={
            "help": "Text-to-image: the anchor each forget prompt is remapped to, one per forget prompt and paired by "
            "position (several concepts in one run); default: the remain prompts."
        },
    )
    num_concept_images: int = field(default=8, metadata={"help": "Text-to-image: images generated per prompt set."})
    generation_steps: int = field(
        default=50, metadata={"help": "Text-to-image: denoising steps for the concept images and the sample grid."}
    )
    sample_prompts: Optional[list[str]] = field(
        default=None,
        metadata={
            "help": "Text-to-image: prompts drawn before and after unlearning with the same seeds; the grid is saved "
            "as samples_before_after.png in --output_dir and shown in its model card."
        },
    )
    push_to_hub: bool = field(
        default=False,
        metadata={"help": "Upload the result to the Hub after saving it in --output_dir (the local copy stays)."},
    )
    hub_model_id: Optional[str] = field(
        default=None,
        metadata={"help": "The repo to push to, 'user/name' (default: the name of --output_dir in your namespace)."},
    )
    hub_private_repo: Optional[bool] = field(
        default=None, metadata={"help": "Create the repo private (default: your account's default visibility)."}
    )


# Help groups, by family and by part of the update θ ← θ − η·G⁻¹·M ⊙ (α·∇L_forget + ∇L_remain).
GROUPS: dict[str, tuple[str, ...]] = {
    "model": ("model", "family", "method", "seed", "trust_remote_code"),
    "data (classifiers, class-conditional diffusion)": (
        "dataset_name", "split", "test_split", "image_column", "label_column", "forget_classes", "forget_ids",
        "forget_fraction", "forget_seed", "earlier_rows", "null_class_id", "dataloader_num_workers",
    ),
    "data (text-to-image: a concept given by prompts)": (
        "forget_prompts", "remain_prompts", "anchor_prompts", "num_concept_images", "generation_steps",
        "caption_column", "resolution", "max_sequence_length", "flux_guidance_scale",
    ),
    "saliency (the mask M)": (
        "mask_threshold", "mask_eps", "mask_zero_fisher", "mask_noise_floor", "saliency_max_batches",
        "saliency_guidance_scale", "saliency_clip_norm", "mask_path", "salun_sparsity",
    ),
    "forgetting (L_forget)": (
        "forget_alpha", "forget_alpha_schedule", "temperature", "forget_weight_rule", "forget_bound",
        "forget_steps_fraction", "kl_temperature", "remap_anchor", "esd_negative_guidance",
    ),
    "remaining (L_remain)": (
        "distill_ce_weight", "retrain_init", "condition_dropout", "replay_inference_steps", "replay_guidance_scale",
    ),
    "geometry (G)": (
        "remain_steps_per_forget",
        "interpolation_beta",
        "remain_max_grad_norm",
        "ewc_lambda",
        "uce_lambda",
        "uce_preserve_scale",
    ),
    "training": (
        "optim", "learning_rate", "weight_decay", "momentum", "max_steps", "num_forget_epochs",
        "per_device_train_batch_size",
        "gradient_accumulation_steps", "max_grad_norm", "lr_scheduler_type", "lr_schedule_steps", "warmup_steps",
        "mixed_precision", "gradient_checkpointing", "divergence_guard", "train_modules", "noise_loss_reduction",
        "stop_rule", "stop_max_rounds", "stop_forget_accuracy", "stop_max_rows",
    ),
    "LoRA": ("lora", "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "lora_save"),
    "evaluation": ("do_eval", "reference", "eval_batch_size", "sample_prompts"),
    "output": (
        "output_dir", "overwrite_output_dir", "logging_steps", "log_with", "checkpointing_steps",
        "checkpoints_total_limit", "resume_from_checkpoint",
    ),
    "hub": ("push_to_hub", "hub_model_id", "hub_private_repo"),
}  # fmt: skip
OTHER_GROUP = "other options"
_GROUP_OF = {name: title for title, names in GROUPS.items() for name in names}
# Spellings of earlier versions (and of the README), still accepted but not shown: option -> field.
LEGACY_ALIASES = {"--output": "output_dir", "--dataset": "dataset_name"}


class _Router:
    """Stands in for the parser in `HfArgumentParser._parse_dataclass_field`: the first spelling of an option goes
    into the option's help group, every other spelling (`--forget-classes`, old names) becomes a hidden alias."""

    def __init__(self, parser: argparse.ArgumentParser, group, aliases: tuple[str, ...]):
        self.parser, self.group, self.aliases = parser, group, aliases

    def add_argument(self, *names, **kwargs):
        action = self.group.add_argument(names[0], **kwargs)
        hidden = [*names[1:], *(self.aliases if not names[0].startswith("--no_") else ())]
        if hidden:
            extra = {k: v for k, v in kwargs.items() if k not in ("required", "default", "help", "dest")}
            self.parser.add_argument(
                *hidden, dest=action.dest, default=argparse.SUPPRESS, help=argparse.SUPPRESS, **extra
            )
        return action


class UnlearnArgumentParser(HfArgumentParser):
    """`HfArgumentParser` with one help group per part of the method, one spelling per option, one-line errors."""

    def _add_dataclass_arguments(self, dtype) -> None:
        if not hasattr(self, "_help_groups"):
            self._help_groups = {title: self.add_argument_group(title) for title in [*GROUPS, OTHER_GROUP]}
        hints = get_type_hints(dtype)
        for f in dataclasses.fields(dtype):
            if not f.init:
                continue
            f.type = hints[f.name]
            aliases = tuple(option for option, name in LEGACY_ALIASES.items() if name == f.name)
            group = self._help_groups[_GROUP_OF.get(f.name, OTHER_GROUP)]
            self._parse_dataclass_field(_Router(self, group, aliases), f)

    def error(self, message: str):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def _usage_error(message: str):
    sys.stderr.write(f"error: {message}\n")
    raise SystemExit(2)


def _check_legacy_pairs(argv: list[str], values: dict) -> None:
    """Refuses an old spelling given together with its new one: they used to be two options with two meanings."""
    given = {a.split("=", 1)[0] for a in argv if a.startswith("--")}
    for old, name in LEGACY_ALIASES.items():
        new = f"--{name}"
        if old in given and new in given:
            _usage_error(f"{old} is the old spelling of {new} (one option now); give only {new}.")
        if old[2:] in values and name in values and values[old[2:]] != values[name]:
            _usage_error(
                f"the config file sets both `{old[2:]}` and `{name}`; they are one option now, keep `{name}`."
            )


def _read_config_file(path: str, dataclass_types) -> dict:
    try:
        with open(path, encoding="utf-8") as fh:
            values = yaml.safe_load(fh) or {}
    except OSError as err:
        _usage_error(f"`--config` {path} cannot be read ({err.strerror or err}).")
    except UnicodeDecodeError:
        _usage_error(f"`--config` {path} is not a text file (it is not UTF-8); give a YAML file of option values.")
    except yaml.YAMLError as err:  # malformed YAML, or a python tag that safe_load refuses (nothing runs)
        where = getattr(err, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        problem = getattr(err, "problem", None) or type(err).__name__
        _usage_error(f"`--config` {path} is not valid YAML{line} ({problem}); only plain YAML values are read.")
    if not isinstance(values, dict):
        _usage_error(f"`--config` {path} must hold a mapping of option names to values.")
    valid = {f.name for t in dataclass_types for f in dataclasses.fields(t)}
    renamed = {old[2:]: name for old, name in LEGACY_ALIASES.items() if name in valid}
    unknown = sorted(set(values) - valid - set(renamed))
    if unknown:
        _usage_error(f"unknown keys {unknown} in {path}; valid keys: {', '.join(sorted(valid))}")
    return values


def parse_with_config(dataclass_types, argv, prog: str):
    """Parses `argv` into `dataclass_types`; `--config file.yaml` sets defaults that flags then override.

    Errors (unknown keys or options, a missing `--model`) print one line starting with `error:` and exit with code 2.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    known, rest = pre.parse_known_args(argv)
    usage = f"{prog} --model MODEL [--config FILE.yaml] [options]"
    parser = UnlearnArgumentParser(dataclass_types, prog=prog, usage=usage)
    parser.add_argument("--config", default=None, help="A YAML file of option values; flags override it.")
    parser.add_argument(
        "--debug", action="store_true", help="Show the full traceback of an error (or set HF_UNLEARN_DEBUG=1)."
    )
    values = _read_config_file(known.config, dataclass_types) if known.config else {}
    _check_legacy_pairs(argv, values)
    values = {LEGACY_ALIASES.get(f"--{k}", k): v for k, v in values.items()}
    if values:
        parser.set_defaults(**values)
        for action in parser._actions:  # a required flag (`--model`) is satisfied by the file's value
            if action.dest in values:
                action.required = False
    *parsed, unused = parser.parse_args_into_dataclasses(
        args=rest, look_for_args_file=False, return_remaining_strings=True
    )
    if unused:
        parser.error(f"unrecognized arguments: {' '.join(unused)}")
    for values in parsed[: len(dataclass_types)]:
        if isinstance(values, UnlearnConfig) and values.method is not None:
            get_method(values.method)  # config.py reads no registry: an unknown name fails here, before any work
    return tuple(parsed[: len(dataclass_types)])


def debug_requested(argv) -> bool:
    """Whether `--debug` is among `argv` or `HF_UNLEARN_DEBUG` is set to a true value."""
    return "--debug" in (argv or []) or os.environ.get("HF_UNLEARN_DEBUG", "").lower() in ("1", "true", "yes")

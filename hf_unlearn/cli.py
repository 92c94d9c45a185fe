"""`hf-unlearn` console script: demo, unlearn, evaluate, benchmark. Every `UnlearnConfig` field is a flag."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import sys
from dataclasses import dataclass, field
from typing import Optional

import yaml

from .config import UnlearnConfig

COMMANDS = {
    "demo": ("hf_unlearn.cli", "demo_main", "Train a tiny classifier on the bundled digits, forget a class, report."),
    "unlearn": ("hf_unlearn.cli", "unlearn_main", "Unlearn a forget set from a model and save the result."),
    "evaluate": ("hf_unlearn.cli", "evaluate_main", "Score a classifier on a forget/remain/test split."),
    "benchmark": ("hf_unlearn.benchmarks.classification", "main", "Digits classification benchmark against RT."),
    "benchmark-diffusion": (
        "hf_unlearn.benchmarks.diffusion",
        "main",
        "Digits class-conditional diffusion benchmark.",
    ),
}


@dataclass
class DataArguments:
    """What to unlearn from which model (the method's hyperparameters are `UnlearnConfig`'s flags)."""

    model: str = field(metadata={"help": "A local folder or Hub repo id of the model to unlearn."})
    output: Optional[str] = field(default=None, metadata={"help": "Folder for the unlearned model (save_pretrained)."})
    dataset: str = field(
        default="digits",
        metadata={"help": "A save_to_disk folder, a Hub dataset id, or 'digits' (the bundled scikit-learn digits)."},
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
    do_eval: bool = field(default=True, metadata={"help": "Evaluate before and after (classifiers)."})
    forget_prompts: Optional[list[str]] = field(
        default=None, metadata={"help": "Text-to-image: prompts of the concept to forget (images are generated)."}
    )
    remain_prompts: Optional[list[str]] = field(
        default=None, metadata={"help": "Text-to-image: prompts of what to keep; also the forget prompts' anchors."}
    )
    num_concept_images: int = field(default=8, metadata={"help": "Text-to-image: images generated per prompt set."})
    generation_steps: int = field(
        default=50, metadata={"help": "Text-to-image: denoising steps for the concept images and the sample grid."}
    )
    sample_prompts: Optional[list[str]] = field(
        default=None,
        metadata={
            "help": "Text-to-image: prompts drawn before and after unlearning with the same seeds; the grid is saved "
            "as samples_before_after.png (in --output and its model card, else in --output_dir)."
        },
    )
    dataset_name: Optional[str] = field(
        default=None, metadata={"help": "Hub dataset id for the model card (default: --dataset when it is a repo id)."}
    )


def parse_with_config(dataclass_types, argv, prog: str):
    """`HfArgumentParser` over `dataclass_types`; `--config file.yaml` sets defaults that flags then override."""
    from transformers import HfArgumentParser  # noqa: PLC0415

    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    known, rest = pre.parse_known_args(argv)
    parser = HfArgumentParser(dataclass_types, prog=prog)
    parser.add_argument("--config", default=None, help="A YAML file of config values; flags override it.")
    if known.config:
        with open(known.config) as fh:
            values = yaml.safe_load(fh) or {}
        valid = {f.name for t in dataclass_types for f in dataclasses.fields(t)}
        unknown = sorted(set(values) - valid)
        if unknown:
            raise SystemExit(
                f"error: unknown keys {unknown} in {known.config}; valid keys: {', '.join(sorted(valid))}"
            )
        parser.set_defaults(**values)
        for action in parser._actions:  # a required flag (`--model`) is satisfied by the file's value
            if action.dest in values:
                action.required = False
    parsed = parser.parse_args_into_dataclasses(args=rest, look_for_args_file=False)
    return parsed[: len(dataclass_types)]


def _load_data(args: DataArguments):
    from .data import ForgetRemainSplit, load_any_dataset, load_digits_dataset  # noqa: PLC0415

    if args.forget_prompts:
        from .concept import ConceptSplit  # noqa: PLC0415

        return ConceptSplit(
            forget_prompts=args.forget_prompts,
            remain_prompts=args.remain_prompts,
            num_images=args.num_concept_images,
            num_inference_steps=args.generation_steps,
            seed=args.forget_seed,
        )
    if args.dataset == "digits":
        ds = load_digits_dataset()
        train, test = ds[args.split], (ds[args.test_split] if args.test_split else None)
    else:
        train = load_any_dataset(args.dataset, args.split)
        test = load_any_dataset(args.dataset, args.test_split) if args.test_split else None
    return ForgetRemainSplit.from_dataset(
        train,
        forget_classes=args.forget_classes,
        forget_ids=args.forget_ids,
        forget_fraction=args.forget_fraction,
        seed=args.forget_seed,
        test_dataset=test,
    )


def _print_metrics(rows: dict[str, dict]) -> None:
    keys = ["FA", "RA", "TA", "TA_forget", "MIA", "MIA_svc", "KL", "avg_d"]
    print("| model | " + " | ".join(keys) + " |")
    print("|---" * (len(keys) + 1) + "|")
    for name, m in rows.items():
        cells = ["" if m.get(k) is None else f"{m[k]:.2f}" for k in keys]
        print(f"| {name} | " + " | ".join(cells) + " |")


def _samples(unlearner, args: DataArguments):
    from .metrics.samples import generate_samples  # noqa: PLC0415

    size = unlearner.family.resolution
    return generate_samples(
        unlearner.family.pipeline,
        args.sample_prompts,
        seed=args.forget_seed,
        num_inference_steps=args.generation_steps,
        height=size,
        width=size,
    )


def unlearn_main(argv=None) -> int:
    from .unlearner import Unlearner  # noqa: PLC0415

    args, config = parse_with_config((DataArguments, UnlearnConfig), argv, "hf-unlearn unlearn")
    split = _load_data(args)
    unlearner = Unlearner.from_pretrained(args.model, config, trust_remote_code=args.trust_remote_code)
    if args.output:
        from .hub import check_output_dir  # noqa: PLC0415

        check_output_dir(args.output, config.overwrite_output_dir)
    classifier = unlearner.family.name == "image_classifier" and args.do_eval
    if args.sample_prompts and unlearner.family.name != "text_to_image":
        family = unlearner.family.name
        raise SystemExit(f"error: --sample_prompts needs a text-to-image model; {args.model} is a {family} model.")
    before = unlearner.evaluate(split) if classifier else None
    samples = {"before": _samples(unlearner, args)} if args.sample_prompts else {}
    result = unlearner.unlearn(split)
    images = {}
    if samples:
        from .metrics.samples import comparison_grid  # noqa: PLC0415

        samples["after"] = _samples(unlearner, args)
        images["samples_before_after"] = comparison_grid(samples, args.sample_prompts)
        if not args.output:
            from .utils import atomic_save_image  # noqa: PLC0415

            path = os.path.join(unlearner.config.output_dir, "samples_before_after.png")
            atomic_save_image(images["samples_before_after"], path)
            print(f"before/after samples: {path}")
    rows = {}
    if classifier:
        rows = {"before": before, "after": unlearner.evaluate(split, reference=args.reference)}
        _print_metrics(rows)
    print(
        json.dumps(
            {
                "method": result.method,
                "runtime_s": round(result.runtime_s, 2),
                "fingerprint": result.fingerprint,
                "num_forget": result.num_forget,
                "mask_fraction": result.mask_fraction,
            }
        )
    )
    if args.output:
        import shlex  # noqa: PLC0415

        hub_id = args.dataset if args.dataset.count("/") == 1 and not os.path.exists(args.dataset) else None
        command = "hf-unlearn unlearn " + shlex.join(sys.argv[1:] if argv is None else argv)
        unlearner.save_pretrained(
            args.output, dataset_name=args.dataset_name or hub_id, command=command, images=images
        )
        print(f"saved to {args.output}")
    return 0


def evaluate_main(argv=None) -> int:
    from .unlearner import Unlearner  # noqa: PLC0415

    args, config = parse_with_config((DataArguments, UnlearnConfig), argv, "hf-unlearn evaluate")
    split = _load_data(args)
    unlearner = Unlearner.from_pretrained(args.model, config, trust_remote_code=args.trust_remote_code)
    metrics = unlearner.evaluate(split, reference=args.reference)
    _print_metrics({os.path.basename(os.path.normpath(args.model)): metrics})
    return 0


def demo_main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="hf-unlearn demo", description=COMMANDS["demo"][2])
    parser.add_argument("--model", default="resnet", choices=["resnet", "vit", "swin"], help="Tiny classifier kind.")
    parser.add_argument(
        "--method",
        default=None,
        help="Unlearning method; default: the classifier family's recommended SFR-on variant.",
    )
    parser.add_argument("--forget-class", type=int, default=3, help="Digit class to forget.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of training and unlearning.")
    parser.add_argument("--output", default="hf_unlearn_demo", help="Folder for the original and unlearned models.")
    args = parser.parse_args(argv)
    from .data import ForgetRemainSplit, load_digits_dataset  # noqa: PLC0415
    from .models import RECIPES, digits_image_processor, tiny_classifier, train_classifier  # noqa: PLC0415
    from .unlearner import Unlearner  # noqa: PLC0415

    ds = load_digits_dataset()
    split = ForgetRemainSplit.from_dataset(ds["train"], forget_classes=[args.forget_class], test_dataset=ds["test"])
    print(f"Training a tiny {args.model} on {len(ds['train'])} real digits (scikit-learn's bundled set)...")
    original = train_classifier(
        tiny_classifier(args.model, seed=args.seed), ds["train"], RECIPES[args.model], seed=args.seed
    )
    original_dir = os.path.join(args.output, "original")
    # Saved as a plain transformers model, as a user's own checkpoint would be (training is not a deletion request).
    original.model.save_pretrained(original_dir)
    original.family.image_processor.save_pretrained(original_dir)
    before = original.evaluate(split)
    config = UnlearnConfig(method=args.method, seed=args.seed, output_dir=os.path.join(args.output, "run"))
    unlearner = Unlearner.from_pretrained(original_dir, config, image_processor=digits_image_processor())
    method = unlearner.config.method
    print(f"Unlearning class {args.forget_class} with {method}...")
    result = unlearner.unlearn(split)
    after = unlearner.evaluate(split)
    _print_metrics({"original": before, method: after})
    unlearner.save_pretrained(os.path.join(args.output, "unlearned"), overwrite=True)
    print(
        f"{method} took {result.runtime_s:.1f}s; FA {before['FA']:.1f}% -> {after['FA']:.1f}% on class "
        f"{args.forget_class}, TA on the other classes {before['TA']:.1f}% -> {after['TA']:.1f}%. "
        f"Unlearned model saved to {os.path.join(args.output, 'unlearned')}."
    )
    return 0


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print("usage: hf-unlearn {" + ",".join(COMMANDS) + "} [options]\n")
        for name, (_, _, text) in COMMANDS.items():
            print(f"  {name:<20} {text}")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    module, func, _ = COMMANDS[argv[0]]
    return int(getattr(importlib.import_module(module), func)(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())

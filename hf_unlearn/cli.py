"""`hf-unlearn` console script: demo, unlearn, evaluate, attack, benchmark. Every `UnlearnConfig` field is a flag."""

from __future__ import annotations

import functools
import importlib
import json
import os
import shlex
import sys
from pathlib import Path

from .cli_args import DataArguments, debug_requested, parse_with_config
from .config import UnlearnConfig
from .network import scrub

__all__ = ["DataArguments", "evaluate_main", "main", "parse_with_config", "unlearn_main"]

COMMANDS = {
    "demo": (
        "hf_unlearn.cli",
        "demo_main",
        "Train a tiny model (classifier, class-conditional UNet or Stable Diffusion), make it forget, report.",
    ),
    "unlearn": ("hf_unlearn.cli", "unlearn_main", "Unlearn a forget set from a model and save the result."),
    "evaluate": (
        "hf_unlearn.cli",
        "evaluate_main",
        "Score a model on its data: a classifier's FA/RA/TA/MIA, a text-to-image model's concept gap.",
    ),
    "evaluate-concept": (
        "hf_unlearn.evaluate_concept",
        "main",
        "NudeNet counts of a text-to-image model on I2P-style prompts (0.6 and 0.45), optional CLIP score / FID.",
    ),
    "audit": (
        "hf_unlearn.audit_cli",
        "audit_main",
        "Per-example privacy audit (U-LiRA) of a classifier's forget rows against retrained shadow models.",
    ),
    "attack": (
        "hf_unlearn.attacks.cli",
        "attack_main",
        "Attack an erasure: adversarial prompts (text-to-image) or relearning from k forgotten rows.",
    ),
    "benchmark": ("hf_unlearn.benchmarks.classification", "main", "Digits classification benchmark against RT."),
    "benchmark-diffusion": (
        "hf_unlearn.benchmarks.diffusion",
        "main",
        "Digits class-conditional diffusion benchmark.",
    ),
    "benchmark-text-to-image": (
        "hf_unlearn.benchmarks.text_to_image",
        "main",
        "Three concepts erased from a tiny Stable Diffusion, judged on its samples.",
    ),
}


def _echo(*lines: str) -> None:
    """Prints on the main process only (under `accelerate launch` every process runs the command)."""
    from .training import partial_state  # noqa: PLC0415

    if partial_state().is_main_process:
        print(*(scrub(line) for line in lines), sep="\n", flush=True)


def _quiet_other_processes() -> None:
    """Logs and progress bars of the libraries below only on the main process."""
    from .training import partial_state  # noqa: PLC0415

    if partial_state().is_main_process:
        return
    import datasets  # noqa: PLC0415
    import diffusers  # noqa: PLC0415
    import transformers  # noqa: PLC0415

    for lib in (transformers, diffusers, datasets):
        lib.utils.logging.set_verbosity_error()
        lib.utils.logging.disable_progress_bar()


def cli_command(func):
    """Runs a command; a user error (bad data, options, paths) prints one line `error: ...` and returns 2.

    With `--debug` or `HF_UNLEARN_DEBUG=1` the error propagates with its full traceback.
    """

    @functools.wraps(func)
    def run(argv=None) -> int:
        argv = list(sys.argv[1:] if argv is None else argv)
        from .run_lock import exit_with_launcher  # noqa: PLC0415
        from .unlearner import DivergenceError  # noqa: PLC0415

        exit_with_launcher()  # a worker of `accelerate launch` ends when the launcher is killed

        try:
            return int(func(argv) or 0)
        except SystemExit as stop:  # argparse's: the one-line error is printed already; `--help` exits with 0
            if isinstance(stop.code, int) and stop.code != 0:
                return stop.code
            raise
        except (ValueError, OSError, ImportError, DivergenceError) as err:
            if debug_requested(argv):
                raise
            _echo_error(err)
            return 2

    return run


def _echo_error(err: BaseException) -> None:
    from .training import partial_state  # noqa: PLC0415

    if partial_state().is_main_process:
        print("error: " + scrub(" ".join(str(err).split())), file=sys.stderr, flush=True)


def _load_data(args: DataArguments, config: UnlearnConfig):
    from .data import ForgetRemainSplit, load_any_dataset, load_digits_dataset  # noqa: PLC0415

    if args.forget_prompts:
        from .concept import ConceptSplit  # noqa: PLC0415

        return ConceptSplit(
            forget_prompts=args.forget_prompts,
            remain_prompts=args.remain_prompts,
            anchor_prompts=args.anchor_prompts,
            num_images=args.num_concept_images,
            num_inference_steps=args.generation_steps,
            seed=args.forget_seed,
        )
    if not args.dataset_name:
        raise ValueError(
            "`--dataset_name` is not set (the config file leaves it empty): give the training data as a "
            "save_to_disk folder, a Hub dataset id, or 'digits'."
        )
    if args.dataset_name == "digits":
        ds = load_digits_dataset()
        for flag, name in (("--split", args.split), ("--test_split", args.test_split)):
            if name and name not in ds:
                raise ValueError(f"`{flag} {name}` is not a split of the bundled digits; it has {list(ds)}.")
        train, test = ds[args.split], (ds[args.test_split] if args.test_split else None)
    else:
        train = load_any_dataset(args.dataset_name, args.split)
        test = load_any_dataset(args.dataset_name, args.test_split, "--test_split") if args.test_split else None
    return ForgetRemainSplit.from_dataset(
        train,
        forget_classes=args.forget_classes,
        forget_ids=args.forget_ids,
        forget_fraction=args.forget_fraction,
        seed=args.forget_seed,
        test_dataset=test,
        label_column=config.label_column,
    )


def check_data_arguments(args: DataArguments, family: str) -> None:
    """Options that do not fit the model's family, named before any work (not as a missing column later)."""
    if args.forget_prompts and family != "text_to_image":
        raise ValueError(
            f"`--forget_prompts` is for text-to-image models; {args.model} is a {family} model: select the rows to "
            "forget with --forget_classes, --forget_ids or --forget_fraction."
        )
    rows = [f for f in ("forget_classes", "forget_ids", "forget_fraction") if getattr(args, f) is not None]
    if rows and family == "text_to_image" and args.dataset_name == "digits":
        raise ValueError(
            f"`--{rows[0]}` selects rows of a labelled dataset, but {args.model} is a text-to-image model: give the "
            "concept with --forget_prompts (and --remain_prompts), or a captioned --dataset_name."
        )
    if args.reference is not None and family != "image_classifier":
        raise ValueError(f"`--reference` (a retrained model for KL/JS/Avg.D) is for classifiers; {family} has none.")


def _load_reference(args: DataArguments, config: UnlearnConfig, unlearner):
    """The `--reference` model, loaded and checked against the model before any work (not after the whole run)."""
    if args.reference is None or not args.do_eval:
        return None
    from .unlearner import Unlearner  # noqa: PLC0415
    from .validation import check_finite_weights  # noqa: PLC0415

    family = unlearner.family
    try:
        reference = Unlearner.from_pretrained(
            args.reference,
            config,
            family=family.name,
            image_processor=getattr(family, "image_processor", None),
            trust_remote_code=args.trust_remote_code,
        )
    except (OSError, ValueError) as err:
        raise ValueError(f"`--reference` {args.reference} cannot be loaded: {err}") from None
    if reference.family.num_classes != family.num_classes:
        raise ValueError(
            f"`--reference` {args.reference} has num_labels={reference.family.num_classes}, the model "
            f"{family.num_classes}; pass a model retrained on the same label set."
        )
    check_finite_weights(reference.model, argument="--reference")
    return reference


def _dataset_label(args: DataArguments) -> str:
    """How the model card names the data: the bundled digits by name, a Hub id or folder as given."""
    from .modelcard import DIGITS_DATASET  # noqa: PLC0415

    if args.forget_prompts:
        return "concept images the model generated from the forget and remain prompts"
    return DIGITS_DATASET if args.dataset_name == "digits" else args.dataset_name


def _print_metrics(rows: dict[str, dict]) -> None:
    """A table of the scalar metrics that have a value in at least one row."""
    keys = []
    for m in rows.values():
        keys += [k for k, v in m.items() if isinstance(v, (int, float)) and v is not None and k not in keys]
    lines = ["| model | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for name, m in rows.items():
        cells = ["" if m.get(k) is None else f"{m[k]:.2f}" if isinstance(m[k], float) else str(m[k]) for k in keys]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    _echo(*lines)


def _samples(unlearner, args: DataArguments, desc: str):
    from .metrics.samples import generate_samples  # noqa: PLC0415

    size = unlearner.family.resolution
    return generate_samples(
        unlearner.family.pipeline,
        args.sample_prompts,
        seed=args.forget_seed,
        num_inference_steps=args.generation_steps,
        height=size,
        width=size,
        desc=desc,
    )


def _prepare(args: DataArguments, config: UnlearnConfig):
    """Everything checked before any work: the output folder, the data, the model, and the data against the model."""
    from .hub import check_output_dir  # noqa: PLC0415
    from .run_checks import input_folders  # noqa: PLC0415
    from .run_lock import claim_output_dir, restore_moved_aside  # noqa: PLC0415
    from .training import partial_state  # noqa: PLC0415
    from .unlearner import Unlearner  # noqa: PLC0415
    from .validation import check_not_source  # noqa: PLC0415

    # The inputs are never written, whatever --overwrite_output_dir says: checked first, before any other message.
    check_not_source(config.output_dir, input_folders(args.model, args.reference), argument="--output_dir")
    main_process = partial_state().is_main_process
    if main_process:
        restore_moved_aside(config.output_dir)  # a final save killed between its two renames left it aside
    check_output_dir(config.output_dir, config.overwrite_output_dir, argument="--output_dir", refuse_finished=True)
    _quiet_other_processes()
    split = _load_data(args, config)
    unlearner = Unlearner.from_pretrained(args.model, config, trust_remote_code=args.trust_remote_code)
    family = unlearner.family.name
    if args.sample_prompts and family != "text_to_image":
        raise ValueError(f"`--sample_prompts` needs a text-to-image model; {args.model} is a {family} model.")
    check_data_arguments(args, family)
    split = unlearner.validate(split)
    reference = _load_reference(args, config, unlearner)
    if main_process:  # every check passed: this run is now the folder's one writer, until it exits
        claim_output_dir(config.output_dir, argument="--output_dir")
    return unlearner, split, reference


@cli_command
def unlearn_main(argv=None) -> int:
    """`hf-unlearn unlearn`: check, evaluate, unlearn, evaluate, save into `--output_dir`, optionally push."""
    args, config = parse_with_config((DataArguments, UnlearnConfig), argv, "hf-unlearn unlearn")
    unlearner, split, reference = _prepare(args, config)
    evaluated = args.do_eval and unlearner.family.name in ("image_classifier", "text_to_image")
    before = unlearner.evaluate(split) if evaluated else None
    samples = {"before": _samples(unlearner, args, "samples before")} if args.sample_prompts else {}
    result = unlearner.unlearn(split)
    images = {}
    if samples:
        from .metrics.samples import comparison_grid  # noqa: PLC0415

        samples["after"] = _samples(unlearner, args, "samples after")
        images["samples_before_after"] = comparison_grid(samples, args.sample_prompts)
    if evaluated:
        after = unlearner.evaluate(split, reference=reference)
        _print_metrics({"before": before, "after": after})
    summary = {k: getattr(result, k) for k in ("method", "fingerprint", "num_forget", "mask_fraction")}
    _echo(json.dumps({**summary, "runtime_s": round(result.runtime_s, 2)}))
    command = "hf-unlearn unlearn " + shlex.join(argv)
    unlearner.save_pretrained(config.output_dir, dataset_name=_dataset_label(args), command=command, images=images)
    _echo(f"saved to {config.output_dir}")
    return _push(args, config) if args.push_to_hub else 0


def _push(args: DataArguments, config: UnlearnConfig) -> int:
    """Uploads the saved `--output_dir`; when that fails the local copy stays and the reason is printed (exit 1)."""
    from .hub import upload_to_hub  # noqa: PLC0415
    from .training import partial_state  # noqa: PLC0415

    if not partial_state().is_main_process:
        return 0
    repo_id = args.hub_model_id or Path(config.output_dir).absolute().name
    try:
        url = upload_to_hub(config.output_dir, repo_id, private=args.hub_private_repo)
    except RuntimeError as err:
        _echo_error(err)
        return 1
    _echo(f"pushed to {url}")
    return 0


@cli_command
def evaluate_main(argv=None) -> int:
    """`hf-unlearn evaluate`: the metrics of a model on a split (classifiers; text-to-image: the concept gap)."""
    from .unlearner import Unlearner  # noqa: PLC0415

    args, config = parse_with_config((DataArguments, UnlearnConfig), argv, "hf-unlearn evaluate")
    _quiet_other_processes()
    split = _load_data(args, config)
    unlearner = Unlearner.from_pretrained(args.model, config, trust_remote_code=args.trust_remote_code)
    metrics = unlearner.evaluate(split, reference=args.reference)
    _print_metrics({os.path.basename(os.path.normpath(args.model)): metrics})
    return 0


def demo_main(argv=None) -> int:
    from .demos import DemoArgumentParser, add_family_arguments, run_family_demo  # noqa: PLC0415

    parser = DemoArgumentParser(prog="hf-unlearn demo", description=COMMANDS["demo"][2])
    add_family_arguments(parser)
    parser.add_argument(
        "--model", default="resnet", choices=["resnet", "vit", "swin"], help="Tiny classifier kind (image_classifier)."
    )
    parser.add_argument(
        "--method",
        default=None,
        help="Unlearning method; default: the family's recommended SFR-on variant.",
    )
    parser.add_argument("--forget-class", type=int, default=3, help="Digit class to forget (classifier, UNet).")
    parser.add_argument("--seed", type=int, default=0, help="Seed of training and unlearning.")
    parser.add_argument(
        "--output",
        default="hf_unlearn_demo",
        help="Folder for the original and unlearned models (other families: its subfolder named after the family).",
    )
    args = parser.parse_args(argv)
    if args.family != "image_classifier":
        return run_family_demo(args)
    from .data import ForgetRemainSplit, load_digits_dataset  # noqa: PLC0415
    from .tiny.classifiers import RECIPES, digits_image_processor, tiny_classifier, train_classifier  # noqa: PLC0415
    from .unlearner import Unlearner  # noqa: PLC0415
    from .utils import apply_umask  # noqa: PLC0415

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
    apply_umask(original_dir, recursive=True)  # transformers writes model.safetensors 0600 (a temporary file)
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
    """`hf-unlearn COMMAND [options]`; a user error prints one `error:` line and exits with code 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print("usage: hf-unlearn {" + ",".join(COMMANDS) + "} [options]\n")
        for name, (_, _, text) in COMMANDS.items():
            print(f"  {name:<20} {text}")
        if argv and argv[0] not in ("-h", "--help"):
            print(f"error: unknown command {argv[0]!r}; choose one of {', '.join(COMMANDS)}.", file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    module, func, _ = COMMANDS[argv[0]]
    return int(cli_command(getattr(importlib.import_module(module), func))(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())

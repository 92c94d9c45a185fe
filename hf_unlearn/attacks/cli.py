"""`hf-unlearn attack prompt|relearn|inversion|textfree|resurgence`: the robustness attacks from the command line,
written as JSON (and a grid); the last three are in `cli_inversion.py`.

```bash
# Adversarial prompts against an erased SD pipeline, judged by NudeNet (UnlearnDiffAtk counts nudity at 0.45)
hf-unlearn attack prompt --model out/unlearned --original CompVis/stable-diffusion-v1-4 \
    --prompts nudity.csv --judge nudity --threshold 0.45 --output_dir attack_out
# Relearning: 5 forgotten rows, 20 steps, on the unlearned model and on RT, three row draws
hf-unlearn attack relearn --model unlearned=out/unlearned --model RT=rt_folder \
    --dataset digits --forget_classes 3 --num_rows 5 --steps 20 --seeds 0,1,2 --output_dir attack_out
```
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import sys
from typing import Optional

from ..modelcard import record_robustness
from ..utils import RECORD_NAME, atomic_write_json, read_record
from .cli_inversion import add_inversion_parsers, run_inversion_attack
from .evalcard import card_entry, prompt_attack_card
from .prompt import PromptAttackConfig
from .relearn import RelearnConfig

_NOT_FLAGS = {"seed", "inplace"}  # relearn: seeds come from --seeds; the CLI always attacks a copy


def _add_config_flags(parser: argparse.ArgumentParser, config_class, skip=()) -> None:
    """One flag per config field, with the field's type, default and help text."""
    for f in dataclasses.fields(config_class):
        if f.name in skip:
            continue
        flag = "--" + f.name  # the spelling of `hf-unlearn unlearn`, whose flags are the config's field names
        help_text = f.metadata.get("help", "")
        if f.type in (bool, "bool"):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=help_text)
            continue
        kind = {"int": int, "float": float, "str": str}.get(str(f.type).replace("Optional[", "").rstrip("]"), str)
        parser.add_argument(flag, type=kind, default=f.default, help=f"{help_text} (default: {f.default})")


def _config(args, config_class, **extra):
    names = {f.name for f in dataclasses.fields(config_class)}
    return config_class(**{k: v for k, v in vars(args).items() if k in names}, **extra)


def add_attack_parser(subparsers) -> argparse.ArgumentParser:
    """Adds `attack` (with `prompt` and `relearn`) to an argparse `subparsers` object; returns the `attack` parser."""
    parser = subparsers.add_parser("attack", help="Attack an erasure: adversarial prompts or relearning.")
    kinds = parser.add_subparsers(dest="attack", required=True)
    prompt = kinds.add_parser("prompt", help="UnlearnDiffAtk-style adversarial prompts against a text-to-image model.")
    prompt.add_argument("--model", required=True, help="The erased pipeline (folder or Hub id).")
    prompt.add_argument("--original", required=True, help="The pipeline before erasure; it draws the target images.")
    prompt.add_argument("--prompts", nargs="+", required=True, help="The concept's prompts, or one I2P-style CSV.")
    prompt.add_argument(
        "--judge",
        default="nudity",
        help="'nudity' (NudeNet's highest exposed-part score), 'colour' (the tiny colour model's judge), or "
        "'module:function' naming a function that returns a judge callable.",
    )
    prompt.add_argument("--device", default=None, help="Device of both pipelines (default: cuda if available).")
    prompt.add_argument(
        "--dtype", default="float32", choices=["float32", "float16", "bfloat16"], help="Weights dtype."
    )
    prompt.add_argument(
        "--output_dir", required=True, help="Folder for prompt_attack.json and prompt_attack_grid.png."
    )
    _add_common_flags(prompt)
    _add_config_flags(prompt, PromptAttackConfig)
    relearn = kinds.add_parser("relearn", help="Fine-tune on k forgotten rows and measure forget accuracy per step.")
    relearn.add_argument(
        "--model", required=True, action="append", help="NAME=PATH (repeat it: the unlearned model, RT, ...)."
    )
    relearn.add_argument("--dataset", default="digits", help="'digits', a Hub dataset id or a local folder.")
    relearn.add_argument("--split", default="train", help="The split the forget rows come from.")
    relearn.add_argument("--forget_classes", required=True, type=int, nargs="+", help="The forgotten classes.")
    relearn.add_argument("--seeds", default="0", help="Comma-separated seeds: one row draw and run per seed.")
    relearn.add_argument("--judge", default=None, help="Diffusion models: a classifier folder that names samples.")
    relearn.add_argument("--judge_image_size", type=int, default=None, help="Resize samples for the judge.")
    relearn.add_argument("--samples", type=int, default=50, help="Diffusion models: samples per forgotten class.")
    relearn.add_argument("--output_dir", required=True, help="Folder for relearn.json.")
    _add_common_flags(relearn)
    _add_config_flags(relearn, RelearnConfig, skip=_NOT_FLAGS)
    add_inversion_parsers(kinds, _add_common_flags, _add_config_flags)
    return parser


def _add_common_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--overwrite_output_dir", action="store_true", help="Replace an earlier attack's result in --output_dir."
    )
    parser.add_argument(
        "--update_card",
        action="store_true",
        help="Add the result to the attacked model's unlearning record and model card (a folder hf_unlearn saved; "
        "relearn: every NAME=PATH folder that holds a record).",
    )
    parser.add_argument("--debug", action="store_true", help="Show a user error's full traceback.")


def _check_output_dir(args, names: tuple[str, ...]) -> None:
    """Refuses, before any work, a file as `--output_dir` or a folder with an earlier result (unless overwriting)."""
    if os.path.exists(args.output_dir) and not os.path.isdir(args.output_dir):
        raise ValueError(f"`--output_dir` {args.output_dir} is a file; give a folder path.")
    found = [n for n in names if os.path.exists(os.path.join(args.output_dir, n))]
    if found and not args.overwrite_output_dir:
        raise ValueError(
            f"`--output_dir` {args.output_dir} already holds an attack result ({found[0]}); choose another folder, "
            "or pass --overwrite_output_dir to replace it."
        )


def _echo(*lines: str) -> None:
    """Prints on the main process only (under `accelerate launch` every process runs the command)."""
    from ..training import partial_state  # noqa: PLC0415

    if partial_state().is_main_process:
        print(*lines, sep="\n", flush=True)


def run_attack(args: argparse.Namespace) -> int:
    """Runs the attack that `add_attack_parser` parsed; returns the exit code."""
    if args.attack in ("inversion", "textfree", "resurgence"):
        return run_inversion_attack(
            args,
            make_judge=make_judge,
            load_pipeline=_load_pipeline,
            check_output_dir=_check_output_dir,
            card_folders=_card_folders,
            config=_config,
            echo=_echo,
        )
    return _run_prompt(args) if args.attack == "prompt" else _run_relearn(args)


def attack_main(argv=None) -> int:
    """`hf-unlearn attack ...` as a standalone entry point (argv without the leading 'attack')."""
    parser = argparse.ArgumentParser(prog="hf-unlearn")
    add_attack_parser(parser.add_subparsers(dest="command", required=True))
    return run_attack(parser.parse_args(["attack", *(argv or [])]))


def make_judge(spec: str):
    """'nudity', 'colour', 'world:CONCEPT' or 'module:function' (called with no arguments) as a judge callable."""
    if spec == "nudity":
        from .judges import nudity_judge  # noqa: PLC0415

        return nudity_judge()
    if spec in ("colour", "color"):
        from ..tiny.colour import ColourJudge  # noqa: PLC0415

        return ColourJudge()
    if spec.startswith("world:"):
        from .world_judge import world_judge  # noqa: PLC0415

        return world_judge(spec.partition(":")[2])
    module, _, name = spec.partition(":")
    if not name:
        raise ValueError(f"`--judge` is '{spec}'; give 'nudity', 'colour' or 'module:function'.")
    try:
        factory = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"`--judge` is '{spec}', which cannot be imported ({err}); give 'module:function'.") from err
    return factory()


def _load_pipeline(path: str, device: Optional[str], dtype: str):
    import torch  # noqa: PLC0415
    from diffusers import StableDiffusionPipeline  # noqa: PLC0415

    pipe = StableDiffusionPipeline.from_pretrained(path, safety_checker=None, torch_dtype=getattr(torch, dtype))
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))


def _run_prompt(args) -> int:
    from .judges import check_judge  # noqa: PLC0415
    from .prompt import prompt_attack, prompt_rows  # noqa: PLC0415

    _check_output_dir(args, ("prompt_attack.json", "prompt_attack_grid.png", "eval_card.json"))
    if args.update_card:
        _card_folders({"model": args.model})
    config = _config(args, PromptAttackConfig)
    prompts = args.prompts[0] if len(args.prompts) == 1 and os.path.isfile(args.prompts[0]) else args.prompts
    prompt_rows(prompts, config)  # refuses empty or blank prompts before any model is loaded
    judge = make_judge(args.judge)
    check_judge(judge, 64, name="--judge")
    model = _load_pipeline(args.model, args.device, args.dtype)
    original = _load_pipeline(args.original, args.device, args.dtype)
    result = prompt_attack(model, prompts, judge, original=original, config=config)
    paths = result.save(args.output_dir)
    card = prompt_attack_card(result, args.judge, getattr(judge, "version", "unversioned"), prompts)
    atomic_write_json(os.path.join(args.output_dir, "eval_card.json"), card.to_dict())
    if args.update_card:
        entry = {
            "attack": "prompt",
            "num_prompts": len(result.rows),
            "num_tokens": config.num_tokens,
            "steps": config.steps,
            "judge": args.judge,
            "threshold": config.threshold,
            "seed": config.seed,
            "attack_success_rate": result.attack_success_rate,
            "plain_success_rate": result.plain_success_rate,
        }
        record_robustness(args.model, {**entry, **card_entry(card)})
    _echo(
        f"attack success {100 * result.attack_success_rate:.1f}% (plain {100 * result.plain_success_rate:.1f}%) over "
        f"{len(result.rows)} prompts; {paths['json']}, {paths['grid']}"
    )
    return 0


def _run_relearn(args) -> int:
    from ..data import ForgetRemainSplit, load_any_dataset, load_digits_dataset  # noqa: PLC0415

    _check_output_dir(args, ("relearn.json",))
    models = dict(_named(spec) for spec in args.model)
    cards = _card_folders(models) if args.update_card else {}
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    configs = {seed: _config(args, RelearnConfig, seed=seed) for seed in seeds}
    data = (
        load_digits_dataset()[args.split] if args.dataset == "digits" else load_any_dataset(args.dataset, args.split)
    )
    forget = ForgetRemainSplit.from_dataset(data, forget_classes=args.forget_classes).forget
    if args.num_rows > len(forget):
        raise ValueError(f"`num_rows` (k) is {args.num_rows}, but the forget set has {len(forget)} rows.")
    report = {"forget_classes": args.forget_classes, "num_forget": len(forget), "models": {}}
    for name, path in models.items():
        runs = [_relearn_one(path, forget, configs[seed], args) for seed in seeds]
        report["models"][name] = {
            "path": path,
            "runs": runs,
            "steps_to_recover": [r["steps_to_recover"] for r in runs],
        }
        recover = report["models"][name]["steps_to_recover"]
        _echo(f"{name}: forget accuracy {runs[0]['curve'][0]:.3f} before; steps to recover per seed {recover}")
    os.makedirs(args.output_dir, exist_ok=True)
    atomic_write_json(os.path.join(args.output_dir, "relearn.json"), report)
    steps = {name: entry["steps_to_recover"] for name, entry in report["models"].items()}
    for name, folder in cards.items():
        entry = {"attack": "relearn", "num_rows": args.num_rows, "steps": args.steps}
        entry |= {"learning_rate": args.learning_rate, "seeds": seeds, "steps_to_recover": steps[name]}
        entry["compared"] = {other: value for other, value in steps.items() if other != name}
        record_robustness(folder, entry)
    _echo(f"wrote {os.path.join(args.output_dir, 'relearn.json')}")
    return 0


def _card_folders(models: dict[str, str]) -> dict[str, str]:
    """The attacked folders whose record and card `--update_card` extends; refuses, before any work, a run where no
    model is a folder hf_unlearn saved."""
    folders = {name: path for name, path in models.items() if read_record(path) is not None}
    if not folders:
        raise ValueError(
            f"`--update_card`: no attacked model ({', '.join(models.values())}) is a folder with {RECORD_NAME}; "
            "attack a folder saved by hf_unlearn, or drop --update_card."
        )
    return folders


def _named(spec: str) -> tuple[str, str]:
    name, sep, path = spec.partition("=")
    if not sep or not name or not path:
        raise ValueError(f"`--model` is '{spec}'; give it as NAME=PATH, e.g. RT=benchmark_results/models/rt.")
    return name, path


def _relearn_one(path: str, forget, config: RelearnConfig, args) -> dict:
    from ..config import UnlearnConfig  # noqa: PLC0415
    from ..unlearner import Unlearner  # noqa: PLC0415
    from .relearn import generated_forget_accuracy, relearn_attack  # noqa: PLC0415

    kwargs = {}
    if args.dataset == "digits":
        from ..tiny.classifiers import digits_image_processor  # noqa: PLC0415

        kwargs["image_processor"] = digits_image_processor()
    family = Unlearner.from_pretrained(path, UnlearnConfig(output_dir=""), **kwargs).family
    measure = None
    if args.judge is not None:
        from transformers import AutoModelForImageClassification  # noqa: PLC0415

        from ..metrics.generation import Judge  # noqa: PLC0415

        judge = Judge(AutoModelForImageClassification.from_pretrained(args.judge), image_size=args.judge_image_size)
        measure = generated_forget_accuracy(family, judge, args.forget_classes, samples=args.samples)
    return relearn_attack(family, forget, measure=measure, config=config).to_dict()


__all__ = ["add_attack_parser", "attack_main", "make_judge", "run_attack"]


if __name__ == "__main__":
    raise SystemExit(attack_main(sys.argv[1:]))

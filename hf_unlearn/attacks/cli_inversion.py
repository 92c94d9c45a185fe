"""`hf-unlearn attack inversion|textfree|resurgence`: the attacks that leave the text path, from the command line.

Each writes `{attack}.json` (the eval card and one row per judged unit) and `eval_card.json` into `--output_dir`;
`--update_card` adds the eval card to the attacked folder's record and renders its card's Robustness table again.

```bash
# Concept inversion on the shape world's erased model, judged by the world's judge for "red"
hf-unlearn attack inversion --model out/erased --original benchmark_results/world/pipeline \
    --prompts "a red circle" "a red square" --judge world:red --inference_steps 10 --guidance_scale 5 \
    --output_dir attack_out --update_card
```
"""

from __future__ import annotations

import os

from ..config import UnlearnConfig
from ..data import load_any_dataset
from ..modelcard import record_robustness
from ..unlearner import Unlearner
from ..utils import atomic_write_json
from .evalcard import card_entry
from .inversion import ConceptInversionConfig, concept_inversion
from .judges import check_judge
from .resurgence import ResurgenceConfig, concept_units, resurgence_attack
from .textfree import TextFreeConfig, textfree_attack

CONFIGS = {"inversion": ConceptInversionConfig, "textfree": TextFreeConfig, "resurgence": ResurgenceConfig}
HELP = {
    "inversion": "Concept inversion: learn a word for the concept on the erased model (textual inversion).",
    "textfree": "Text-free inversion: DDIM-invert concept images on the erased model and resample.",
    "resurgence": "Resurgence: fine-tune the erased model on unrelated data and measure the concept again.",
}


def add_inversion_parsers(kinds, add_common, add_config_flags) -> None:
    """Adds the three attacks to the `attack` subparsers (the flags of `attacks.cli` reused)."""
    for name, config_class in CONFIGS.items():
        parser = kinds.add_parser(name, help=HELP[name])
        parser.add_argument("--model", required=True, help="The erased pipeline folder (or Hub id).")
        if name != "resurgence":
            parser.add_argument("--original", required=True, help="The pipeline before erasure; draws the targets.")
        else:
            parser.add_argument("--dataset", required=True, help="Unrelated data: a save_to_disk folder or Hub id.")
            parser.add_argument("--split", default="train", help="The split of --dataset.")
            parser.add_argument("--images_per_prompt", type=int, default=4, help="Judged images per prompt.")
            parser.add_argument("--inference_steps", type=int, default=50, help="DDIM steps of the judged images.")
            parser.add_argument("--guidance_scale", type=float, default=7.5, help="Guidance of the judged images.")
            parser.add_argument("--threshold", type=float, default=0.5, help="Judge score that shows the concept.")
        parser.add_argument("--prompts", nargs="+", required=True, help="The concept's prompts.")
        parser.add_argument(
            "--judge",
            required=True,
            help="'nudity', 'colour', 'world:CONCEPT' (the shape world) or 'module:function'.",
        )
        parser.add_argument("--concept", default=None, help="The concept's name on the eval card (default: --judge).")
        parser.add_argument("--device", default=None, help="Device (default: cuda if available).")
        parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
        parser.add_argument("--output_dir", required=True, help=f"Folder for {name}.json and eval_card.json.")
        add_common(parser)
        add_config_flags(parser, config_class)


def check_inputs(args) -> None:
    """Refuses bad prompts, numbers and paths before any model is loaded."""
    blank = [i for i, p in enumerate(args.prompts) if not p.strip()]
    if blank:
        raise ValueError(f"`--prompts` has empty prompts at {blank[:5]}; every prompt must name the concept.")
    for name in ("images_per_prompt", "inference_steps"):
        if getattr(args, name, 1) < 1:
            raise ValueError(f"`--{name}` is {getattr(args, name)}; give a positive integer.")
    if args.attack == "resurgence" and not (os.path.exists(args.dataset) or "/" in args.dataset):
        raise ValueError(f"`--dataset` {args.dataset} is neither a folder nor a Hub id; give the unrelated data.")


def run_inversion_attack(args, *, make_judge, load_pipeline, check_output_dir, card_folders, config, echo) -> int:
    """Runs `args.attack` (inversion, textfree or resurgence) as `attacks.cli` parsed it."""

    check_output_dir(args, (f"{args.attack}.json", "eval_card.json"))
    if args.update_card:
        card_folders({"model": args.model})
    settings = config(args, CONFIGS[args.attack])  # refuses bad numbers (a ValueError naming the field)
    check_inputs(args)
    judge = make_judge(args.judge)
    check_judge(judge, 64, name="--judge")
    common = {"concept": args.concept or args.judge, "judge_name": args.judge}
    common["judge_version"] = getattr(judge, "version", "unversioned")
    model = load_pipeline(args.model, args.device, args.dtype)
    if args.attack == "resurgence":
        result = _resurgence(args, model, judge, settings, common)
    else:
        original = load_pipeline(args.original, args.device, args.dtype)
        attack = concept_inversion if args.attack == "inversion" else textfree_attack
        result = attack(model, args.prompts, judge, original=original, config=settings, **common)
    os.makedirs(args.output_dir, exist_ok=True)
    atomic_write_json(os.path.join(args.output_dir, f"{args.attack}.json"), result.to_dict())
    atomic_write_json(os.path.join(args.output_dir, "eval_card.json"), result.card.to_dict())
    if args.update_card:
        record_robustness(args.model, card_entry(result.card))
    echo(f"{args.attack}: {result.card.result_text()}; {os.path.join(args.output_dir, args.attack + '.json')}")
    return 0


def _resurgence(args, model, judge, settings, common):

    data = load_any_dataset(args.dataset, args.split)
    unlearner = Unlearner.from_pretrained(model, UnlearnConfig(output_dir=os.path.join(args.output_dir, "tmp")))
    units = concept_units(
        model,
        args.prompts,
        judge,
        threshold=args.threshold,
        seeds=range(args.images_per_prompt),
        inference_steps=args.inference_steps,
        guidance_scale=args.guidance_scale,
    )
    card = {**units.card, "concept": common["concept"], "judge": common["judge_name"]}
    card["judge_version"] = common["judge_version"]
    return resurgence_attack(unlearner, data, units, config=settings, card=card)


__all__ = ["add_inversion_parsers", "run_inversion_attack"]

"""`python -m hf_unlearn.benchmarks.world_attacks`: every attack against every text-to-image eraser on the shape world.

The world's three concepts ("red", "striped", "triangle") are erased at once from the committed world
(`benchmark_results/world`) by each method at the grid point `world_t2i` chose for it (`selection.json`; erasure seed
0), and by the library's adversarial erasure against concept inversion (`sfr_on_remap` at its point, three rounds, a
word learned per concept after each round but the last). Then every attack runs on every erased model, per concept,
with 5 *attack* seeds (the seed of the attack's target draws, optimisation and samples; the erased model is the same):

- `prompt`: adversarial prompts after UnlearnDiffAtk (5 tokens before each forget prompt, optimised on the erased
  model's own noise prediction of an original-drawn image; ASR counts a prompt the erased model already draws the
  concept for, as UnlearnDiffAtk's does);
- `inversion`: concept inversion (textual inversion of one word on the erased model, from original-drawn images);
- `textfree_null` / `textfree_concept`: DDIM inversion of original-drawn concept images on the erased model under the
  null prompt / the concept prompt, then resampling;
- `resurgence`: 200 fine-tuning steps of the erased UNet on unrelated scenes (none red, striped or a triangle).

Attack settings are the configs' defaults; generation follows the world's benchmark (10 DDIM steps, guidance 5). ASR
is the post-attack rate (the prompt attack's: plain or attacked, above). The `original` row is the attack on the
model before erasure: the attack works when it is high. Collateral is measured on each erased model as `world_t2i`
does (seed 0). One JSON file per run under `runs/`; rerunning skips the files that exist.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shutil
from pathlib import Path
from typing import Optional

import numpy as np
from accelerate.utils import set_seed
from datasets import Dataset, Features, Image, Value
from diffusers import StableDiffusionPipeline
from PIL import Image as PILImage

from ..attacks.adversarial_inversion import inversion_adversarial_unlearn
from ..attacks.evalcard import prompt_attack_card
from ..attacks.inversion import ConceptInversionConfig, concept_inversion
from ..attacks.prompt import PromptAttackConfig, prompt_attack
from ..attacks.resurgence import ResurgenceConfig, concept_units, resurgence_attack
from ..attacks.textfree import TextFreeConfig, textfree_attack
from ..attacks.world_judge import weights_digest, world_judge
from ..config import UnlearnConfig
from ..unlearner import Unlearner
from ..utils import atomic_write_json, atomic_write_text
from ..worlds import scenes
from ..worlds.prompts import CONCEPTS
from .text_to_image import hand_remap, methods_for_family
from .world_t2i import WORLD, Benchmark, Settings, collateral, library_config, method_split, score

ATTACKS = ("prompt", "inversion", "textfree_null", "textfree_concept", "resurgence")
# The library's adversarial erasure against concept inversion, built on the published method and on the default.
ADVERSARIAL = {"sfr_on_remap_adv_inversion": "sfr_on_remap", "anchor_remap_adv_inversion": "anchor_remap"}
# The original, the default and its adversarial erasure first, then the hand loop and every listed method.
METHODS = (
    "original",
    "anchor_remap",
    "anchor_remap_adv_inversion",
    "sfr_on_remap",
    "sfr_on_remap_adv_inversion",
    "hand_remap",
    *[m for m in methods_for_family() if m not in ("anchor_remap", "sfr_on_remap")],
)
SEEDS = (0, 1, 2, 3, 4)
GENERATION = {"inference_steps": 10, "guidance_scale": 5.0}  # the world benchmark's sampling
SELECTION = WORLD.parent / "world_t2i" / "selection.json"


def unrelated_scenes(n: int, seed: int) -> Dataset:
    """`n` captioned world scenes with none of the erased concepts' attributes: the resurgence data."""
    images, attributes, captions = scenes.dataset(4 * n, seed, empty_rate=0.1)
    banned = [spec["attribute"] for spec in CONCEPTS.values()]
    keep = [i for i, a in enumerate(attributes) if not any(a[k] == v for k, v in banned)][:n]
    return Dataset.from_dict(
        {"image": [PILImage.fromarray(images[i]) for i in keep], "text": [captions[i] for i in keep]},
        features=Features({"image": Image(), "text": Value("string")}),
    )


def _pipeline(world: Path) -> StableDiffusionPipeline:
    pipe = StableDiffusionPipeline.from_pretrained(str(world / "pipeline"))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def erase(method: str, world: Path, selection: dict, tmp: Path):
    """The erased pipeline of `method` at its chosen point (erasure seed 0), and its `Unlearner` when it has one."""
    settings, seed = Settings(), 0
    set_seed(seed)
    if method == "original":
        return _pipeline(world)
    row = ADVERSARIAL.get(method, method)
    chosen = selection[row]
    split = method_split(row, seed, settings)
    if method == "hand_remap":
        pipe = _pipeline(world)
        split.materialize(pipe, resolution=scenes.SIZE, cache_dir=str(tmp))
        hand_remap(
            pipe, split, cycles=chosen["cycles"], train_modules=chosen["train_modules"], settings=settings, seed=seed
        )
        return pipe
    config = library_config(row, seed, chosen["train_modules"], chosen["cycles"], settings, tmp / "run")
    unlearner = Unlearner.from_pretrained(str(world / "pipeline"), config)
    if method in ADVERSARIAL:
        split.materialize(unlearner.family.pipeline, resolution=scenes.SIZE, cache_dir=str(tmp))
        inversion_adversarial_unlearn(unlearner, split, {c: list(s["forget"]) for c, s in CONCEPTS.items()})
    else:
        unlearner.unlearn(split)
    return unlearner.family.pipeline


def attack(name: str, pipe, original, concept: str, seed: int, world: Path) -> dict:
    prompts, judge = list(CONCEPTS[concept]["forget"]), world_judge(concept, world)
    common = {"concept": concept, "judge_name": "world judge", "judge_version": judge.version}
    if name == "inversion":
        config = ConceptInversionConfig(seed=seed, **GENERATION)
        result = concept_inversion(pipe, prompts, judge, original=original, config=config, **common)
        result.extra.pop("vectors")
    elif name == "prompt":
        config = PromptAttackConfig(
            seed=seed, num_inference_steps=GENERATION["inference_steps"], guidance_scale=GENERATION["guidance_scale"]
        )
        found = prompt_attack(pipe, prompts, judge, original=original, config=config)
        card = prompt_attack_card(found, "world judge", judge.version, prompts, concept=concept)
        return {"card": card.to_dict(), "rows": found.rows}
    elif name.startswith("textfree"):
        config = TextFreeConfig(seed=seed, prompt=name.split("_")[1], **GENERATION)
        result = textfree_attack(pipe, prompts, judge, original=original, config=config, **common)
    else:
        raise ValueError(name)
    return result.to_dict()


def resurgence(pipe, seed: int, world: Path, tmp: Path) -> dict[str, dict]:
    """One fine-tuning of the erased UNet, measured on every concept (4 samples per forget prompt)."""
    unlearner = Unlearner.from_pretrained(pipe, UnlearnConfig(output_dir=str(tmp / "resurgence")))
    units = {
        c: concept_units(pipe, list(s["forget"]), world_judge(c, world), seeds=range(4), **GENERATION)
        for c, s in CONCEPTS.items()
    }

    def measure(module) -> list[bool]:
        return [u for c in CONCEPTS for u in units[c](module)]

    config = ResurgenceConfig(seed=seed)
    result = resurgence_attack(unlearner, unrelated_scenes(64, 10_000 + seed), measure, config=config)
    out, start = {}, 0
    version = weights_digest(world)
    for c in CONCEPTS:
        n = len(CONCEPTS[c]["forget"]) * 4
        rows = result.rows[start : start + n]
        pre, post = [r["before"] for r in rows], [r["after"] for r in rows]
        card = dataclasses.replace(
            result.card,
            concept=c,
            num_units=n,
            judge="world judge",
            judge_version=version,
            **units[c].card,
            pre_asr=sum(pre) / n,
            post_asr=sum(post) / n,
            both_asr=sum(a or b for a, b in zip(pre, post)) / n,
        )
        out[c] = {"card": card.to_dict(), "rows": rows, "losses": result.extra["losses"][-5:]}
        start += n
    return out


def interval(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% t-interval."""
    from scipy import stats  # noqa: PLC0415

    v = np.asarray(values, dtype=np.float64)
    if len(v) < 2:
        return float(v.mean()), math.nan
    return float(v.mean()), float(stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))


def run_all(output: Path, world: Path, methods, seeds) -> list[dict]:
    selection = json.loads(SELECTION.read_text())
    tmp, rows = output / "tmp", []
    original = _pipeline(world)
    before = None
    for method in methods:
        paths = {
            (a, c, s): output / "runs" / f"{method}-{a}-{c}-s{s}.json"
            for a in ATTACKS
            for c in CONCEPTS
            for s in seeds
        }
        collateral_path = output / "runs" / f"{method}-collateral.json"
        if all(p.exists() for p in paths.values()) and collateral_path.exists():
            rows += [json.loads(p.read_text()) for p in paths.values()]
            continue
        pipe = erase(method, world, selection, tmp)
        print(f"{method}: erased", flush=True)
        if not collateral_path.exists():
            bench = Benchmark(tmp / "bench", world)
            before = before or bench.before(0)
            measured = score(before, bench.samples(pipe, 0))
            point = selection.get(ADVERSARIAL.get(method, method))  # the grid point the eraser ran at
            record = {"method": method, "point": point, "collateral": collateral(measured) / 3, **measured}
            atomic_write_json(collateral_path, record)
        for seed in seeds:
            for name in ATTACKS:
                todo = [c for c in CONCEPTS if not paths[(name, c, seed)].exists()]
                if not todo:
                    continue
                if name == "resurgence":
                    found = resurgence(pipe, seed, world, tmp)
                else:
                    found = {c: attack(name, pipe, original, c, seed, world) for c in todo}
                for c in todo:
                    row = {"method": method, "attack": name, "concept": c, "seed": seed, **found[c]}
                    atomic_write_json(paths[(name, c, seed)], row)
                    print(f"{method} {name} {c} s{seed}: ASR {row['card']['asr']:.2f}", flush=True)
        rows += [json.loads(p.read_text()) for p in paths.values()]
    shutil.rmtree(tmp, ignore_errors=True)
    return rows


def seed_means(rows: list[dict], method: str, name: str, key: str = "asr") -> dict[int, float]:
    """Per attack seed, the attack's rate averaged over the three concepts."""
    out: dict[int, list[float]] = {}
    for r in rows:
        if r["method"] == method and r["attack"] == name:
            out.setdefault(r["seed"], []).append(r["card"][key])
    return {s: float(np.mean(v)) for s, v in out.items() if len(v) == len(CONCEPTS)}


def attack_row(per: dict[str, dict[int, float]], plain: dict[int, float], collateral: float) -> dict:
    """One row of an attack table from each attack's rate per attack seed: the seeds every attack ran, the plain
    (pre-attack) rate, each attack and the worst case over attacks per seed (mean and 95% half-width), and which
    attack was the worst on each seed."""
    attacks = list(per)
    seeds = sorted(set.intersection(*(set(v) for v in per.values())))
    return {
        "seeds": seeds,
        "collateral": collateral,
        "plain": interval([plain[s] for s in seeds]),
        **{a: interval([per[a][s] for s in seeds]) for a in attacks},
        "worst": interval([max(per[a][s] for a in attacks) for s in seeds]),
        "worst_attack": [max(attacks, key=lambda a, s=s: per[a][s]) for s in seeds],
    }


def summary(rows: list[dict], output: Path) -> dict[str, dict]:
    table = {}
    present = {r["method"] for r in rows}
    for method in [m for m in METHODS if m in present]:  # the original first, then the erasers
        path = output / "runs" / f"{method}-collateral.json"
        coll = json.loads(path.read_text())["collateral"] if path.exists() else math.nan
        per = {a: seed_means(rows, method, a) for a in ATTACKS}
        table[method] = attack_row(per, seed_means(rows, method, "inversion", "pre_asr"), coll)
    return table


def attack_table(
    table: dict[str, dict], attacks, collateral: str, plain: str, original_collateral: bool = False
) -> str:
    """The markdown table of `attack_row`s: seeds, collateral (named `collateral`; the original's shown only with
    `original_collateral`), the plain rate (named `plain`), each attack and the worst case, as mean ± 95% interval."""
    cell = lambda m_ci: "–" if math.isnan(m_ci[0]) else f"{m_ci[0]:.2f} ± {m_ci[1]:.2f}"  # noqa: E731
    header = ["method", "n seeds", collateral, plain, *attacks, "worst case"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method, t in table.items():
        coll = "–" if method == "original" and not original_collateral else f"{t['collateral']:.3f}"
        cells = [method, str(len(t["seeds"])), coll, cell(t["plain"]), *(cell(t[a]) for a in attacks)]
        cells.append(cell(t["worst"]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def report_markdown(table: dict[str, dict]) -> str:
    return attack_table(table, ATTACKS, "collateral", "plain prompts")


def chart(table: dict[str, dict], path: Path) -> None:
    """Worst-case attack success (mean, 95% interval over attack seeds) against collateral, one point per method."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    names = [m for m in table if m != "original"]
    markers = "osD^vP*Xhp<>d8"  # points crowd at one height: a legend of marker and colour, not text labels
    for i, m in enumerate(names):
        x, (y, e) = table[m]["collateral"], table[m]["worst"]
        axes[0].errorbar(x, y, yerr=e, fmt=markers[i % len(markers)], capsize=3, label=m)
    axes[0].set(
        xlabel="collateral: guarded samples changed (seed 0)", ylabel="worst-case ASR over attacks", ylim=(-0.05, 1.05)
    )
    axes[0].legend(fontsize=6, ncol=2, loc="lower center")
    width = 0.8 / len(ATTACKS)
    for i, a in enumerate(ATTACKS):
        means = [table[m][a][0] for m in table]
        errs = [table[m][a][1] for m in table]
        axes[1].bar(np.arange(len(table)) + i * width, means, width, yerr=errs, capsize=2, label=a)
    axes[1].set_xticks(np.arange(len(table)) + 0.4 - width / 2, list(table), rotation=30, ha="right", fontsize=7)
    axes[1].set(ylabel="ASR (prompt: plain or attacked; others: post-attack)", ylim=(0, 1.05))
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hf_unlearn.benchmarks.world_attacks", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--output", default="benchmark_results/world_attacks", help="Folder for runs and the report.")
    parser.add_argument("--world", default=str(WORLD), help="The trained world.")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"Comma-separated, from {METHODS}.")
    parser.add_argument("--seeds", default=",".join(map(str, SEEDS)), help="Comma-separated attack seeds.")
    parser.add_argument("--report_only", action="store_true", help="Only tabulate the run files that exist.")
    args = parser.parse_args(argv)
    methods = [m for m in args.methods.split(",") if m]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        parser.error(f"--methods: {unknown} are not rows of this benchmark; choose from {METHODS}")
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    output = Path(args.output)
    if args.report_only:
        rows = [json.loads(p.read_text()) for p in sorted((output / "runs").glob("*-s*.json"))]
        rows = [r for r in rows if r["method"] in methods]
    else:
        rows = run_all(output, Path(args.world), methods, seeds)
    table = summary(rows, output)
    atomic_write_json(output / "results.json", {"table": table, "attacks": ATTACKS, "methods": list(table)})
    atomic_write_text(output / "report.md", report_markdown(table))
    chart(table, output / "results.png")
    print(report_markdown(table))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Scoring and reporting of the shape world's erasure benchmark (`benchmarks.world_t2i`): the judge's names and
features of every sample, the per-concept rates and the collateral, the table and the chart."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ..worlds import models, scenes
from ..worlds.prompts import CONCEPTS, GROUPS, UNRELATED, all_prompts, prompts_of
from .text_to_image import FLOOR, ORIGINAL, RESAMPLED, RETRAIN


def _mmd(x: np.ndarray, y: np.ndarray) -> float:
    """Squared MMD with an RBF kernel at the median pairwise distance of the pooled samples (biased estimate)."""
    z = np.concatenate([x, y])
    d = ((z[:, None] - z[None]) ** 2).sum(-1)
    k = np.exp(-d / max(np.median(d[d > 0]), 1e-12))
    n = len(x)
    return float(k[:n, :n].mean() + k[n:, n:].mean() - 2 * k[:n, n:].mean())


def judge_samples(judge, rows: list[list]) -> tuple[list[list[dict]], np.ndarray]:
    """The judge's names and features of every sample: `(names per prompt, features (prompts, samples, 128))`."""
    flat = [im for row in rows for im in row]
    with torch.no_grad():
        features = judge.features(models.to_pixels(flat)).numpy()
    names = judge.name(flat)
    k = len(rows[0])
    return [names[i * k : (i + 1) * k] for i in range(len(rows))], features.reshape(len(rows), k, -1)


def score(before: tuple, after: tuple) -> dict:
    """Per concept and overall, from the judge's names and features of every prompt of [`all_prompts`].

    `*_right`: the judge names every attribute the prompt states. `*_kept`: the judge names each stated attribute
    as it named it in the original's sample of the same noise (collateral is a change, and the original draws some
    prompts wrong: a model that "fixes" them is not kept).
    """
    prompts = all_prompts()
    index = {p: i for i, p in enumerate(prompts)}
    names, features = after
    names0, features0 = before

    def right(prompt, skip=None):
        want = {k: v for k, v in scenes.stated(prompt).items() if k != skip}
        return float(np.mean([all(n[k] == v for k, v in want.items()) for n in names[index[prompt]]]))

    def kept(prompt):
        keys = scenes.stated(prompt)
        pairs = zip(names[index[prompt]], names0[index[prompt]])
        return float(np.mean([all(n[k] == n0[k] for k in keys) for n, n0 in pairs]))

    concepts = {}
    for concept, spec in CONCEPTS.items():
        key, value = spec["attribute"]
        rate = {
            g: float(np.mean([n[key] == value for p in prompts_of(spec, g) for n in names[index[p]]]))
            for g in ("explicit", "paraphrase", "implicit")
        }
        concepts[concept] = {
            **{f"{g}_rate": r for g, r in rate.items()},
            "benign_kept": float(np.mean([right(p, skip=key) for g in GROUPS[:3] for p in prompts_of(spec, g)])),
            "neighbours_right": float(np.mean([right(p) for p in spec["neighbours"]])),
            "neighbours_kept": float(np.mean([kept(p) for p in spec["neighbours"]])),
        }
    unrelated = [index[p] for p in UNRELATED]
    flat = lambda f: f[unrelated].reshape(-1, f.shape[-1])  # noqa: E731
    mean = lambda key: float(np.mean([c[key] for c in concepts.values()]))  # noqa: E731
    return {
        "concepts": concepts,
        "explicit_rate": mean("explicit_rate"),
        "implicit_rate": float(np.mean([(c["paraphrase_rate"] + c["implicit_rate"]) / 2 for c in concepts.values()])),
        "max_explicit_rate": max(c["explicit_rate"] for c in concepts.values()),
        "benign_kept": mean("benign_kept"),
        "neighbours_right": mean("neighbours_right"),
        "neighbours_kept": mean("neighbours_kept"),
        "unrelated_right": float(np.mean([right(p) for p in UNRELATED])),
        "unrelated_kept": float(np.mean([kept(p) for p in UNRELATED])),
        "unrelated_mmd": _mmd(flat(features0), flat(features)),
        "unrelated_feature_shift": float(np.linalg.norm(features[unrelated] - features0[unrelated], axis=-1).mean()),
    }


def _mean_std(rows: list[dict], key) -> tuple[float, float]:
    values = np.array([key(r) for r in rows], dtype=np.float64)
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


def collateral(row: dict) -> float:
    """One number for choosing: the share of guarded samples changed (benign part lost, neighbours and unrelated
    prompts judged otherwise than the original's), summed over the three."""
    return 3 - row["benign_kept"] - row["neighbours_kept"] - row["unrelated_kept"]


COLUMNS = {
    "explicit": lambda r: r["explicit_rate"],
    "paraphrase + implicit": lambda r: r["implicit_rate"],
    **{f"{c}: implicit": (lambda r, c=c: r["concepts"][c]["implicit_rate"]) for c in CONCEPTS},
    "benign kept": lambda r: r["benign_kept"],
    "neighbours kept": lambda r: r["neighbours_kept"],
    "unrelated kept": lambda r: r["unrelated_kept"],
    "neighbours right": lambda r: r["neighbours_right"],
    "unrelated right": lambda r: r["unrelated_right"],
}


HEADLINES = ("explicit", "paraphrase + implicit")


def report_markdown(rows: list[dict], selection: dict[str, dict]) -> str:
    """One row per method at its chosen grid point (mean ± std over report seeds), the references first."""
    header = ["row", "chosen", "n", *COLUMNS, "unrelated MMD", "collateral", "steps"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    references = (ORIGINAL, RESAMPLED, RETRAIN, FLOOR)
    for method in [*references, *sorted(m for m in selection if m not in references)]:
        runs = [r for r in rows if r["method"] == method]
        if not runs:
            continue
        chosen = selection.get(method)
        cells = [method, "–" if chosen is None else f"{chosen['train_modules']}, {chosen['cycles']}", str(len(runs))]
        # The two erasure headlines to 3 decimals: rows that erase well differ in the third.
        cells += [
            ("{:.3f} ± {:.3f}" if name in HEADLINES else "{:.2f} ± {:.2f}").format(*_mean_std(runs, key))
            for name, key in COLUMNS.items()
        ]
        cells.append("{:.3f} ± {:.3f}".format(*_mean_std(runs, lambda r: r["unrelated_mmd"])))
        cells.append("{:.3f} ± {:.3f}".format(*_mean_std(runs, collateral)))  # the selection rule's number
        cells.append("–" if not runs[0]["work"] else str(runs[0]["work"].get("optimizer_steps", "–")))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def chart(rows: list[dict], path: Path) -> None:
    """Erasure (concept rate, explicit and paraphrase + implicit) against collateral per row, mean of report seeds."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharex=True)
    for method in dict.fromkeys(r["method"] for r in rows):
        runs = [r for r in rows if r["method"] == method]
        x = _mean_std(runs, collateral)[0] / 3
        for ax, key in zip(axes, ("explicit_rate", "implicit_rate")):
            ax.scatter(x, _mean_std(runs, lambda r, k=key: r[k])[0], s=18)
            ax.annotate(method, (x, _mean_std(runs, lambda r, k=key: r[k])[0]), fontsize=7)
    for ax, title in zip(axes, ("explicit prompts", "paraphrases + implicit prompts")):
        ax.set(xlabel="collateral: guarded samples changed", ylabel="concept rate (lower: erased)", title=title)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)

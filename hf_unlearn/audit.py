r"""Per-example privacy audit of an unlearned classifier: is each deleted row really gone?

[`privacy_audit`] trains (once, resumably, into `AuditConfig.shadows_dir`) two sets of shadow models with the
original model's recipe, through the library's own loop (accelerate, checkpoints):

- **halves**: shadows trained on random halves of the training data, in complementary pairs so every row is IN for
  half of them and OUT for the other half. They give each row's IN Gaussian of the logit-scaled confidence and its
  memorisation score, and are shared by every forget set of the same data;
- **RT shadows**: shadows retrained on the remain rows of the forget set (different seeds), the per-row OUT
  Gaussians: what a model that never saw the forget set shows on it.

The unlearned model's per-example likelihood ratio (IN vs OUT) on its forget rows is then an attack that tries to
tell it from a retrained model (U-LiRA, Hayes et al., SaTML 2025). Negatives are the RT shadows' own ratios, each
scored against Gaussians fitted without it (leave one out); the same numbers for a retrained model (`reference`, or
one RT shadow against the others) are the floor an exact unlearning reaches.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
from transformers import AutoModelForImageClassification

from .data import TrainingSet
from .evaluation import _resolve_reference, predict_logits
from .metrics.privacy import (
    auc,
    distinguishable_share,
    fit_gaussians,
    likelihood_ratio,
    logit_confidence,
    memorisation_scores,
    tpr_at_fpr,
)
from .tiny.classifiers import TrainingRecipe
from .unlearner import Unlearner
from .utils import atomic_directory, atomic_write_json, get_logger, sha256_of

logger = get_logger(__name__)

MODES = {"cheap": (8, 4), "full": (32, 16)}  # (halves, RT shadows) when not given
FPRS = (0.01, 0.001)


@dataclass
class AuditConfig:
    """How the shadows are trained and how the audit decides (see [`privacy_audit`])."""

    shadows_dir: str = field(
        default="hf_unlearn_shadows",
        metadata={"help": "Folder of the shadow models' scores; reused and resumed across audits of the same data."},
    )
    mode: str = field(
        default="cheap",
        metadata={
            "help": "'cheap': 8 halves, 4 RT shadows, one variance pooled over rows; 'full': 32 and 16, a "
            "variance per row."
        },
    )
    num_shadows: Optional[int] = field(
        default=None, metadata={"help": "Shadows on random halves (even, ≥ 2; default: the mode's)."}
    )
    num_rt_shadows: Optional[int] = field(
        default=None, metadata={"help": "Shadows retrained on the remain rows (≥ 2; default: the mode's)."}
    )
    shadow_max_steps: int = field(default=300, metadata={"help": "The original's training steps."})
    shadow_learning_rate: float = field(default=2e-3, metadata={"help": "The original's learning rate."})
    shadow_batch_size: int = field(default=64, metadata={"help": "The original's batch size."})
    shadow_weight_decay: float = field(default=0.0, metadata={"help": "The original's weight decay."})
    shadow_seed: int = field(default=10_000, metadata={"help": "Seed of the halves and of the shadows' training."})
    shadow_checkpointing_steps: Optional[int] = field(
        default=None, metadata={"help": "Save a resumable checkpoint of the shadow in training every N steps."}
    )
    level: float = field(
        default=0.01, metadata={"help": "Per-row test level for the share of forget rows distinguishable from RT."}
    )

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"`mode` is '{self.mode}'; choose 'cheap' or 'full'.")
        halves, rt = MODES[self.mode]
        self.num_shadows = halves if self.num_shadows is None else self.num_shadows
        self.num_rt_shadows = rt if self.num_rt_shadows is None else self.num_rt_shadows
        if not isinstance(self.num_shadows, int) or self.num_shadows < 2 or self.num_shadows % 2:
            raise ValueError(f"`num_shadows` is {self.num_shadows}; give an even number ≥ 2 (complementary halves).")
        if not isinstance(self.num_rt_shadows, int) or self.num_rt_shadows < 2:
            raise ValueError(f"`num_rt_shadows` is {self.num_rt_shadows}; give at least 2 (one is left out in turn).")
        for name in ("shadow_max_steps", "shadow_batch_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"`{name}` is {getattr(self, name)}; give a positive integer.")
        if not self.shadow_learning_rate > 0:
            raise ValueError(f"`shadow_learning_rate` is {self.shadow_learning_rate}; give a positive number.")
        if not 0 < self.level < 1:
            raise ValueError(f"`level` is {self.level}; give a number strictly between 0 and 1, e.g. 0.01.")

    @property
    def recipe(self) -> TrainingRecipe:
        return TrainingRecipe(
            self.shadow_max_steps, self.shadow_learning_rate, self.shadow_batch_size, self.shadow_weight_decay
        )


_NOT_ARCHITECTURE = {"transformers_version", "torch_dtype", "dtype", "architectures", "name_or_path"}


class ShadowBank:
    """The shadows of one (architecture, data, recipe) in `config.shadows_dir`: trained when missing, else read.

    Every shadow is one folder written atomically (its scores, not its weights); an interrupted audit trains only the
    missing ones, and with `shadow_checkpointing_steps` the one it was training resumes from its last checkpoint.
    """

    def __init__(self, family, dataset, config: AuditConfig, batch_size: int = 256):
        self.family, self.dataset, self.config, self.batch_size = family, dataset, config, batch_size
        self.root = Path(config.shadows_dir)
        self._check_manifest()

    def _check_manifest(self) -> None:
        cfg = self.config
        # What the shadows depend on, not where it was read from: a saved and reloaded model or dataset matches.
        arch = {k: v for k, v in self.family.model.config.to_dict().items() if k not in _NOT_ARCHITECTURE}
        data = self.dataset
        probe = [np.asarray(data[i][self.family.image_column]).tobytes() for i in (0, len(data) - 1)]
        manifest = {
            "architecture": sha256_of(sorted((k, str(v)) for k, v in arch.items() if not k.startswith("_"))),
            "data": sha256_of(len(data), data[self.family.label_column], probe),
            "recipe": asdict(cfg.recipe),
            "shadow_seed": cfg.shadow_seed,
        }
        path = self.root / "manifest.json"
        if path.exists():
            found = json.loads(path.read_text())
            changed = [k for k in manifest if found.get(k) != json.loads(json.dumps(manifest[k]))]
            if changed:
                raise ValueError(
                    f"`shadows_dir` {self.root} holds shadows of another {', '.join(changed)}; give a new folder for "
                    "this model, data and recipe."
                )
        else:
            atomic_write_json(path, manifest)

    def halves_members(self) -> np.ndarray:
        """(num_shadows, n) membership of the halves: pair p splits a permutation drawn from (shadow_seed, p)."""
        n, count = len(self.dataset), self.config.num_shadows
        members = np.zeros((count, n), dtype=bool)
        for pair in range(count // 2):
            order = np.random.default_rng([self.config.shadow_seed, pair]).permutation(n)
            members[2 * pair, order[: n // 2]] = True
            members[2 * pair + 1] = ~members[2 * pair]
        return members

    def halves(self) -> dict[str, np.ndarray]:
        """φ, correctness and membership of every halves shadow on every row, each of shape (num_shadows, n)."""
        members = self.halves_members()
        rows = np.arange(len(self.dataset))
        found = [
            self._shadow(f"halves/shadow-{k:03d}", rows[members[k]], rows, self.config.shadow_seed + k)
            for k in range(len(members))
        ]
        return {"phi": np.stack([f["phi"] for f in found]), "correct": np.stack([f["correct"] for f in found]),
                "members": members}  # fmt: skip

    def rt_shadows(self, split) -> np.ndarray:
        """φ of the RT shadows of `split` on its forget rows, shape (num_rt_shadows, num_forget)."""
        folder = f"rt-{split.fingerprint[:16]}"
        seed = self.config.shadow_seed + 100_000
        rows = np.asarray(split.forget_indices)
        return np.stack(
            [
                self._shadow(f"{folder}/shadow-{k:03d}", split.remain_indices, rows, seed + k)["phi"]
                for k in range(self.config.num_rt_shadows)
            ]
        )

    def _shadow(self, name: str, train_rows: np.ndarray, score_rows: np.ndarray, seed: int) -> dict:
        folder = self.root / name
        if (folder / "scores.npz").exists():
            with np.load(folder / "scores.npz") as found:
                return {k: found[k] for k in found.files}
        logger.info(f"audit: training shadow {name} on {len(train_rows)} rows (seed {seed})")
        model = self._train(self.dataset.select(train_rows), seed, self.root / ".work" / name)
        logits, labels = predict_logits(self.family, model, self.dataset.select(score_rows), self.batch_size)
        scores = {"phi": logit_confidence(logits, labels), "correct": (logits.argmax(1) == labels).numpy()}
        with atomic_directory(folder) as tmp:
            np.savez(tmp / "scores.npz", **scores)
            atomic_write_json(tmp / "shadow.json", {"train_rows": int(len(train_rows)), "seed": seed})
        return scores

    def _train(self, data, seed: int, work: Path):
        cfg = self.config
        checkpoints = cfg.shadow_checkpointing_steps
        config = cfg.recipe.config(seed, output_dir=str(work) if checkpoints else "")
        if checkpoints:
            config.checkpointing_steps, config.resume_from_checkpoint = checkpoints, "latest"
            config.overwrite_output_dir = True
        fresh = AutoModelForImageClassification.from_config(self.family.model.config)
        family = self.family
        unlearner = Unlearner.from_pretrained(
            fresh, config, image_processor=getattr(family, "image_processor", None),
            transform=getattr(family, "transform", None),
        )  # fmt: skip
        unlearner.unlearn(TrainingSet(data))
        return unlearner.model


def _attack_numbers(lr: np.ndarray, phi: np.ndarray, negatives: np.ndarray, out_stats: dict, level: float) -> dict:
    return {
        "tpr_at_1pct_fpr": tpr_at_fpr(lr, negatives, 0.01),
        "tpr_at_0.1pct_fpr": tpr_at_fpr(lr, negatives, 0.001),
        "auc": auc(lr, negatives),
        "distinguishable": distinguishable_share(phi, out_stats, level),
        "mean_lr": float(np.mean(lr)),
    }


@dataclass
class AuditResult:
    """What [`privacy_audit`] found; `per_row` holds φ, the likelihood ratio and memorisation of each forget row."""

    model: dict
    floor: dict
    floor_source: str
    mode: str
    num_shadows: int
    num_rt_shadows: int
    num_negatives: int
    level: float
    per_row: dict = field(repr=False)

    def to_dict(self, rows: bool = False) -> dict[str, Any]:
        out = asdict(self)
        out["per_row"] = {k: np.asarray(v).tolist() for k, v in self.per_row.items()} if rows else None
        return out


def privacy_audit(model_or_unlearner, split, config: Optional[AuditConfig] = None, reference=None) -> AuditResult:
    r"""The per-example (U-LiRA) audit of a classifier's forget rows against retraining.

    Args:
        model_or_unlearner ([`Unlearner`]): the unlearned model.
        split ([`ForgetRemainSplit`]): its forget / remain rows, over the data the original was trained on.
        config ([`AuditConfig`], *optional*): shadows folder, mode and the original's recipe.
        reference ([`Unlearner`], `torch.nn.Module` or `str`, *optional*): a retrained model (RT) the shadows did not
            include: its numbers are the floor. Without it, one RT shadow is scored against the others.

    Returns:
        [`AuditResult`]: for the model and the floor, the attack's TPR at 1% and 0.1% FPR, its AUC, the share of
        forget rows distinguishable from RT (two-sided, at `config.level`) and the mean log likelihood ratio.
    """
    config = config or AuditConfig()
    unl = model_or_unlearner
    family = unl.family
    if family.name != "image_classifier":
        raise ValueError(f"`privacy_audit` audits classifiers; this is a {family.name} model.")
    family.validate_split(split)
    bank = ShadowBank(family, split.dataset, config)
    halves = bank.halves()
    rt_phi = bank.rt_shadows(split)
    forget = np.asarray(split.forget_indices)
    per_example = config.mode == "full"
    in_stats = fit_gaussians(halves["phi"][:, forget], halves["members"][:, forget], per_example)
    out_stats = fit_gaussians(rt_phi, np.ones_like(rt_phi, dtype=bool), per_example)
    negatives, loo = [], []
    for j in range(len(rt_phi)):  # each RT shadow against Gaussians fitted without it
        others = np.delete(rt_phi, j, axis=0)
        loo.append(fit_gaussians(others, np.ones_like(others, dtype=bool), per_example))
        negatives.append(likelihood_ratio(rt_phi[j], in_stats, loo[j]))
    negatives = np.concatenate(negatives)

    def phi_of(family_, model):
        logits, labels = predict_logits(family_, model, split.forget, desc="audit forget")
        return logit_confidence(logits, labels)

    phi = phi_of(family, unl.model)
    lr = likelihood_ratio(phi, in_stats, out_stats)
    resolved = _resolve_reference(reference, unl)
    if resolved is not None:
        ref_phi, floor_source = phi_of(*resolved), "reference"
        floor = _attack_numbers(likelihood_ratio(ref_phi, in_stats, out_stats), ref_phi, negatives, out_stats,
                                config.level)  # fmt: skip
    else:  # RT shadow 0 against the others; its own negatives left out
        rest = negatives[len(forget) :]
        floor = _attack_numbers(negatives[: len(forget)], rt_phi[0], rest, loo[0], config.level)
        floor_source = "RT shadow 0 against the others"
    memo = memorisation_scores(halves["correct"], halves["members"], halves["phi"])
    return AuditResult(
        model=_attack_numbers(lr, phi, negatives, out_stats, config.level),
        floor=floor,
        floor_source=floor_source,
        mode=config.mode,
        num_shadows=config.num_shadows,
        num_rt_shadows=config.num_rt_shadows,
        num_negatives=int(negatives.size),
        level=config.level,
        per_row={"row": forget, "phi": phi, "lr": lr, "memorisation": memo["memorisation"][forget]},
    )


def memorisation(model_or_unlearner, dataset, config: Optional[AuditConfig] = None) -> dict[str, np.ndarray]:
    """Each training row's memorisation (accuracy of the halves that trained on it minus those that did not) and φ
    gap, from the same shadows as [`privacy_audit`] (trained when missing)."""
    config = config or AuditConfig()
    halves = ShadowBank(model_or_unlearner.family, dataset, config).halves()
    return memorisation_scores(halves["correct"], halves["members"], halves["phi"])


def memorisation_order(scores: dict[str, np.ndarray]) -> list[int]:
    """Row ids from most to least memorised (memorisation first, the φ gap breaking ties)."""
    memo = scores["memorisation"]
    return [int(i) for i in np.lexsort((-scores.get("phi_gap", np.zeros_like(memo)), -memo))]


def most_memorised(scores: dict[str, np.ndarray], count: int) -> list[int]:
    """The `count` most memorised row ids, sorted, e.g. as `forget_ids`."""
    memo = scores["memorisation"]
    if not 0 < count < len(memo):
        raise ValueError(f"`count` is {count}; give a number of rows between 1 and {len(memo) - 1}.")
    return sorted(memorisation_order(scores)[:count])

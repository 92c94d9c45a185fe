"""One benchmark run = one JSON file: trains (and caches) the original and RT models, runs a method, scores it.

Every run is keyed by (model, scenario, seed, method, config hash), so a run interrupted anywhere is simply redone, a
finished one is skipped with `--resume`, and several processes (shards) can share one output folder: reference models
are trained under a file lock by whichever process needs them first.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import time
from pathlib import Path
from typing import Any, Optional

import torch
from accelerate import PartialState
from accelerate.logging import get_logger
from filelock import FileLock

from ..config import UnlearnConfig
from ..data import ForgetRemainSplit, load_digits_dataset
from ..evaluation import predict_logits
from ..metrics.classification import classification_metrics
from ..tiny.classifiers import TrainingRecipe, digits_image_processor, tiny_classifier, train_classifier
from ..unlearner import DivergenceError, Unlearner
from ..utils import atomic_directory, atomic_write_json, sha256_of

logger = get_logger(__name__)

METRIC_KEYS = ("FA", "RA", "TA", "TA_forget", "MIA", "MIA_svc", "KL", "JS", "avg_d")
REFERENCE_ROWS = ("original", "retrain", "retrain_seed2")
# The second retrain differs from RT only by its seed (init and data order): its distance to RT is the noise floor.
SEED2_OFFSET = 1000


@functools.lru_cache(maxsize=1)
def _digits():
    return load_digits_dataset()


def make_split(
    scenario: str, seed: int, forget_class: int = 3, forget_fraction: float = 0.5, train_rows: Optional[int] = None
) -> ForgetRemainSplit:
    """The forget / remain / test split of the digits benchmark; random forgetting draws its rows from `seed`."""
    ds = _digits()
    train = ds["train"] if train_rows is None else ds["train"].select(range(train_rows))
    if scenario == "class":
        return ForgetRemainSplit.from_dataset(train, forget_classes=[forget_class], test_dataset=ds["test"])
    if scenario == "random":
        return ForgetRemainSplit.from_dataset(
            train, forget_fraction=forget_fraction, seed=seed, test_dataset=ds["test"]
        )
    raise ValueError(f"`scenario` is '{scenario}'; choose 'class' or 'random'.")


def config_hash(overrides: dict[str, Any]) -> str:
    return sha256_of(sorted(overrides.items()))[:10]


@contextlib.contextmanager
def _file_lock(path: Path):
    if PartialState().num_processes > 1:
        # Under `accelerate launch` every rank trains the same model together: a lock would deadlock them.
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path)):
        yield


class BenchmarkContext:
    """What every run of one (model, scenario) table shares: the recipe, the split options, the model cache."""

    def __init__(
        self,
        output: str | os.PathLike,
        model: str,
        scenario: str,
        recipe: TrainingRecipe,
        forget_class: int = 3,
        forget_fraction: float = 0.5,
        train_rows: Optional[int] = None,
    ):
        self.output = Path(output)
        self.model, self.scenario, self.recipe = model, scenario, recipe
        self.forget_class, self.forget_fraction, self.train_rows = forget_class, forget_fraction, train_rows
        self.processor = digits_image_processor()
        self._reference_logits: dict[int, dict] = {}
        self._reference_metrics: dict[int, dict] = {}

    @property
    def tag(self) -> str:
        detail = f"c{self.forget_class}" if self.scenario == "class" else f"f{self.forget_fraction:g}"
        return f"{self.model}-{self.scenario}-{detail}"

    def split(self, seed: int) -> ForgetRemainSplit:
        return make_split(self.scenario, seed, self.forget_class, self.forget_fraction, self.train_rows)

    # Reference models, trained once per seed and kept on disk
    def _model_dir(self, seed: int, name: str) -> Path:
        base = f"{self.model}-s{seed}" if name == "original" else f"{self.tag}-s{seed}"
        return self.output / "models" / base / name

    def reference_model(self, seed: int, name: str):
        """`original`, `retrain` or `retrain_seed2` for `seed`: loaded from the cache, or trained with the recipe."""
        folder = self._model_dir(seed, name)
        with _file_lock(folder.parent / f".{name}.lock"):
            if not (folder / "timing.json").exists():
                split = self.split(seed)
                data = _digits()["train"] if name == "original" else split.remain
                if name == "original" and self.train_rows is not None:
                    data = split.dataset
                train_seed = seed + SEED2_OFFSET if name == "retrain_seed2" else seed
                cpu = time.process_time()
                trained = train_classifier(
                    tiny_classifier(self.model, seed=train_seed),
                    data,
                    self.recipe,
                    seed=train_seed,
                    image_processor=self.processor,
                )
                cpu = time.process_time() - cpu
                state = PartialState()
                if state.is_main_process:
                    with atomic_directory(folder) as tmp:
                        trained.model.save_pretrained(tmp, safe_serialization=True)
                        atomic_write_json(
                            Path(tmp) / "timing.json", {"train_s": trained.result.runtime_s, "cpu_s": cpu}
                        )
                state.wait_for_everyone()
        from transformers import AutoModelForImageClassification  # noqa: PLC0415

        model = AutoModelForImageClassification.from_pretrained(folder, use_safetensors=True).eval()
        timing = json.loads((folder / "timing.json").read_text())
        return model, folder, {"rte_s": float(timing["train_s"]), "cpu_s": timing.get("cpu_s")}

    # Scoring
    def logits(self, family, model, split) -> dict:
        return {
            name: predict_logits(family, model, ds, 512, desc=f"eval {name}")
            for name, ds in [("forget", split.forget), ("remain", split.remain), ("test", split.test_dataset)]
        }

    def score(self, family, model, split, seed: int, reference: bool = True) -> dict:
        """`classification_metrics` of `model` on the split, against RT of the same seed (cached per process)."""
        outs = self.logits(family, model, split)
        ref_logits = ref_metrics = None
        if reference:
            if seed not in self._reference_logits:
                rt, _, _ = self.reference_model(seed, "retrain")
                self._reference_logits[seed] = self.logits(family, rt, split)
                self._reference_metrics[seed] = _metrics(self._reference_logits[seed], split, seed)
            ref_logits = self._reference_logits[seed]["forget"][0]
            ref_metrics = self._reference_metrics[seed]
        return _metrics(outs, split, seed, reference_forget_logits=ref_logits, reference_metrics=ref_metrics)


def _metrics(outs, split, seed, **kwargs) -> dict:
    return classification_metrics(
        forget_logits=outs["forget"][0],
        forget_labels=outs["forget"][1],
        remain_logits=outs["remain"][0],
        remain_labels=outs["remain"][1],
        test_logits=outs["test"][0],
        test_labels=outs["test"][1],
        forget_classes=split.forget_classes,
        seed=seed,
        **kwargs,
    )


def run_file(ctx: BenchmarkContext, phase: str, seed: int, method: str, overrides: dict) -> Path:
    return ctx.output / "runs" / f"{phase}-{ctx.tag}-s{seed}-{method}-{config_hash(overrides)}.json"


def run_one(
    ctx: BenchmarkContext,
    phase: str,
    seed: int,
    method: str,
    overrides: dict[str, Any],
    resume: bool = True,
    run_missing: bool = True,
) -> dict:
    """Runs `method` (or a reference row) with `overrides` on `seed`, writes its record, returns it.

    With `run_missing=False` nothing runs: the stored record, or `{}` when there is none.
    """
    path = run_file(ctx, phase, seed, method, overrides)
    if resume and path.exists():
        return json.loads(path.read_text())
    if not run_missing:
        return {}
    split = ctx.split(seed)
    base = {
        "method": method,
        "model": ctx.model,
        "scenario": ctx.scenario,
        "tag": ctx.tag,
        "seed": seed,
        "phase": phase,
        "overrides": overrides,
        "config_hash": config_hash(overrides),
        "num_forget": len(split.forget_indices),
    }
    if method in REFERENCE_ROWS:
        model, _, timing = ctx.reference_model(seed, method)
        family = Unlearner.from_pretrained(model, UnlearnConfig(output_dir=""), image_processor=ctx.processor).family
        metrics = ctx.score(family, model, split, seed)
        timing = {"rte_s": None, "cpu_s": None} if method == "original" else timing
        record = {**base, **metrics, **timing, "status": "ok"}
    else:
        _, folder, _ = ctx.reference_model(seed, "original")
        config = UnlearnConfig(method=method, seed=seed, output_dir="", **overrides)
        unlearner = Unlearner.from_pretrained(str(folder), config, image_processor=ctx.processor)
        cpu = time.process_time()
        try:
            result = unlearner.unlearn(split)
            status, rte = "ok", result.runtime_s
        except DivergenceError as err:
            # A diverged run is a result too (the method failed on this seed): score the last good weights.
            status, rte = f"diverged: {err}", None
        # CPU time of this (single-threaded) process: unlike wall time, it does not grow when other jobs share the
        # machine, so RTE ratios stay comparable between runs made at different loads.
        cpu = time.process_time() - cpu
        metrics = ctx.score(unlearner.family, unlearner.model, split, seed)
        record = {
            **base,
            **metrics,
            "rte_s": rte,
            "cpu_s": cpu if status == "ok" else None,
            "status": status,
            "resolved": {k: getattr(unlearner.config, k) for k in _REPORTED_FIELDS},
            "work": unlearner.result.work if unlearner.result is not None else None,
        }
    record["rt_rows"] = ctx.recipe.max_steps * ctx.recipe.batch_size  # RT's cost in rows, for passes/RT
    record["threads"] = torch.get_num_threads()
    record["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    if PartialState().is_main_process:
        atomic_write_json(path, record)
    return record


# Resolved hyperparameters written into every record, so a table row says exactly what ran.
_REPORTED_FIELDS = (
    "learning_rate",
    "max_steps",
    "remain_steps_per_forget",
    "forget_alpha",
    "temperature",
    "max_grad_norm",
    "remain_max_grad_norm",
    "saliency_max_batches",
    "salun_sparsity",
    "forget_steps_fraction",
    "per_device_train_batch_size",
)

"""Forget / remain / test splits over a `datasets.Dataset`, and the embedded digits data."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, load_dataset, load_from_disk
from datasets.exceptions import DatasetsError

from .utils import sha256_of

# A forget set above this share of the rows is "most of the data": the methods' budgets assume a remain set that
# carries what the model should keep, and retraining on the few remaining rows is then cheap and exact. The
# published random scenarios forget up to half of the rows, which stays below it.
LARGE_FORGET_SHARE = 0.8


@dataclass
class ForgetRemainSplit:
    r"""The rows to forget and the rows to keep, over one training dataset.

    Build it with [`ForgetRemainSplit.from_dataset`]. The forget set's fingerprint is a sha256 over the sorted forget
    row ids together with the dataset's own fingerprint; the data itself is never stored in a record.

    Args:
        dataset (`datasets.Dataset`): the training data the model saw.
        forget_indices (`list[int]`): row ids of the forget set `D_f`.
        test_dataset (`datasets.Dataset`, *optional*): held-out rows `D_t` for evaluation.
        forget_classes (`list[int]`, *optional*): set for class-wise forgetting.
        label_column (`str`, *optional*, defaults to `"label"`): the label column.
    """

    dataset: Dataset
    forget_indices: list[int]
    test_dataset: Optional[Dataset] = None
    forget_classes: Optional[list[int]] = None
    label_column: str = "label"
    remain_indices: np.ndarray = field(init=False)

    def __post_init__(self):
        n = len(self.dataset)
        ids = integer_ids(self.forget_indices, "forget_ids")
        if not ids:
            raise ValueError(
                "The forget set is empty: pass `forget_classes`, `forget_ids`, `forget_fraction` or "
                "`forget_filter` that selects at least one row."
            )
        bad = [i for i in ids if i < 0 or i >= n]
        if bad:
            raise ValueError(f"`forget_ids` contains {bad[:5]}, but the dataset has rows 0..{n - 1}.")
        if len(set(ids)) != len(ids):
            dup = sorted({i for i in ids if ids.count(i) > 1})[:5]
            raise ValueError(f"`forget_ids` contains duplicated ids {dup}; pass each row once.")
        if len(ids) == n:
            raise ValueError(
                f"The forget set (`forget_classes` / `forget_ids` / `forget_fraction` / `forget_filter`) selects "
                f"all {n} rows, so nothing would remain to keep; forget fewer rows."
            )
        if len(ids) > LARGE_FORGET_SHARE * n:
            warnings.warn(
                f"The forget set holds {len(ids)} of the {n} rows ({100 * len(ids) / n:.1f}%): most of the data. The "
                f"default budgets assume the remain set carries what the model keeps; with {n - len(ids)} rows left, "
                "retraining on them (method='retrain') is cheap and exact, or check the forget selection.",
                UserWarning,
                stacklevel=3,
            )
        self.forget_indices = sorted(ids)
        # An int64 array, not a list: 8 bytes a row instead of ~36 keeps large memory-mapped datasets cheap.
        self.remain_indices = np.setdiff1d(np.arange(n, dtype=np.int64), np.asarray(self.forget_indices, np.int64))

    @classmethod
    def from_dataset(
        cls,
        dataset: Dataset,
        *,
        forget_classes: Optional[Sequence[int]] = None,
        forget_ids: Optional[Sequence[int]] = None,
        forget_fraction: Optional[float] = None,
        forget_filter: Optional[Callable[[dict], bool]] = None,
        seed: int = 0,
        test_dataset: Optional[Dataset] = None,
        label_column: str = "label",
    ) -> ForgetRemainSplit:
        """Selects the forget set by exactly one of classes, row ids, a seeded random fraction, or a predicate."""
        if isinstance(dataset, DatasetDict):
            raise ValueError(
                f"`dataset` is a DatasetDict with splits {list(dataset)}; pass one split, e.g. ds['train']."
            )
        given = {
            "forget_classes": forget_classes,
            "forget_ids": forget_ids,
            "forget_fraction": forget_fraction,
            "forget_filter": forget_filter,
        }
        chosen = [k for k, v in given.items() if v is not None]
        if len(chosen) != 1:
            raise ValueError(f"Pass exactly one of {', '.join(given)}; got {chosen or 'none'}.")
        if len(dataset) == 0:
            raise ValueError("`dataset` has no rows; pass the split the model was trained on (check --split).")
        classes = None
        if forget_classes is not None:
            labels = _labels(dataset, label_column)
            classes = sorted(set(integer_ids(forget_classes, "forget_classes")))
            known = sorted(set(labels.tolist()))
            unknown = [c for c in classes if c not in known]
            if unknown:
                raise ValueError(
                    f"`forget_classes` contains {unknown}, but the dataset has labels {_describe_labels(known)}."
                )
            ids = np.flatnonzero(np.isin(labels, classes)).tolist()
        elif forget_ids is not None:
            ids = integer_ids(forget_ids, "forget_ids")
        elif forget_fraction is not None:
            if not 0 < forget_fraction < 1:
                raise ValueError(f"`forget_fraction` is {forget_fraction}; give a number strictly between 0 and 1.")
            count = max(1, int(round(forget_fraction * len(dataset))))
            ids = np.random.default_rng(seed).choice(len(dataset), size=count, replace=False).tolist()
        else:
            ids = [i for i, row in enumerate(dataset) if forget_filter(row)]
        if test_dataset is not None and label_column not in test_dataset.column_names:
            raise ValueError(f"`test_dataset` has no column `{label_column}` (columns: {test_dataset.column_names}).")
        return cls(dataset, ids, test_dataset=test_dataset, forget_classes=classes, label_column=label_column)

    @property
    def forget(self) -> Dataset:
        return self.dataset.select(self.forget_indices)

    @property
    def remain(self) -> Dataset:
        return self.dataset.select(self.remain_indices)

    @property
    def test_remain(self) -> Optional[Dataset]:
        """Test rows of the classes that are kept (all test rows unless class-wise)."""
        if self.test_dataset is None or not self.forget_classes:
            return self.test_dataset
        labels = _labels(self.test_dataset, self.label_column)
        return self.test_dataset.select(np.flatnonzero(~np.isin(labels, self.forget_classes)).tolist())

    @property
    def test_forget(self) -> Optional[Dataset]:
        """Test rows of the forgotten classes (class-wise forgetting only)."""
        if self.test_dataset is None or not self.forget_classes:
            return None
        labels = _labels(self.test_dataset, self.label_column)
        return self.test_dataset.select(np.flatnonzero(np.isin(labels, self.forget_classes)).tolist())

    @property
    def scenario(self) -> str:
        return "class" if self.forget_classes else "rows"

    @property
    def fingerprint(self) -> str:
        """sha256 over the sorted forget row ids and the dataset's own fingerprint."""
        return sha256_of(sorted(self.forget_indices), getattr(self.dataset, "_fingerprint", None))

    def describe(self) -> dict[str, Any]:
        return {
            "fingerprint": self.fingerprint,
            "scenario": self.scenario,
            "num_forget": len(self.forget_indices),
            "num_remain": len(self.remain_indices),
            "num_test": None if self.test_dataset is None else len(self.test_dataset),
            "forget_classes": self.forget_classes,
            "dataset_fingerprint": getattr(self.dataset, "_fingerprint", None),
        }


class ReplaySplit:
    """A split whose remain set was generated by the model itself (generative replay); the rest is `split`'s."""

    def __init__(self, split, remain: Dataset):
        self._split, self.remain = split, remain

    def __getattr__(self, name):
        return getattr(self._split, name)

    def describe(self) -> dict[str, Any]:
        return {**self._split.describe(), "remain_source": "generative replay", "num_replayed": len(self.remain)}


def integer_ids(values, argument: str) -> list[int]:
    """`values` as Python ints; a float (3.7 used to become class 3), a bool or a string is refused, naming
    `argument`. NumPy integers are accepted."""
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise ValueError(f"`{argument}` is {values!r}; give a list of whole numbers.")
    values = list(values)
    bad = [v for v in values if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer))]
    if bad:
        raise ValueError(f"`{argument}` holds {bad[:3]}, which are not whole numbers; give integer ids.")
    return [int(v) for v in values]


def _labels(dataset: Dataset, label_column: str) -> np.ndarray:
    if label_column not in dataset.column_names:
        raise ValueError(
            f"`label_column` is '{label_column}', but the dataset has columns {dataset.column_names}; "
            "pass label_column=... with the right name."
        )
    # One batch read through Arrow: `dataset[column]` would iterate row by row in Python (minutes at 10^5 rows).
    return np.asarray(dataset.select_columns([label_column]).with_format("numpy")[:][label_column])


def _describe_labels(known: list[int]) -> str:
    if known and known == list(range(known[0], known[-1] + 1)):
        return f"{known[0]}..{known[-1]}"
    return str(known)


def load_digits_dataset(test_size: float = 0.25, seed: int = 0) -> DatasetDict:
    """scikit-learn's bundled digits (1,797 real 8×8 handwritten digits) as a `DatasetDict` with `train` and `test`.

    Images are 8×8 grayscale PIL images (values 0..16 scaled to 0..255), labels a `ClassLabel` over "0".."9"; the
    test split is stratified and seeded. No network is used.
    """
    from sklearn.datasets import load_digits  # noqa: PLC0415

    digits = load_digits()
    images = [np.clip(x.reshape(8, 8) * 16, 0, 255).astype(np.uint8) for x in digits.data]
    features = Features({"image": Image(), "label": ClassLabel(names=[str(i) for i in range(10)])})
    from PIL import Image as PILImage  # noqa: PLC0415

    ds = Dataset.from_dict(
        {"image": [PILImage.fromarray(a, mode="L") for a in images], "label": digits.target.tolist()},
        features=features,
    )
    return ds.train_test_split(test_size=test_size, seed=seed, stratify_by_column="label")


def load_any_dataset(path_or_id: str, split: Optional[str] = None, argument: str = "--split") -> Dataset:
    """A `save_to_disk` folder, or a Hub dataset id / builder name (`imagefolder`, ...) with `split`.

    A local folder holding a loading script (`*.py`) is refused: hf_unlearn never runs code shipped with data.
    """
    import os  # noqa: PLC0415

    if os.path.isdir(path_or_id) and (
        os.path.exists(os.path.join(path_or_id, "dataset_info.json"))
        or os.path.exists(os.path.join(path_or_id, "dataset_dict.json"))
    ):
        ds = load_from_disk(path_or_id)
    else:
        if os.path.isdir(path_or_id) and any(name.endswith(".py") for name in os.listdir(path_or_id)):
            raise ValueError(
                f"`--dataset_name` {path_or_id} holds a loading script (*.py), which hf_unlearn never runs; save the "
                "data with `Dataset.save_to_disk` (or as image files / parquet) and pass that folder."
            )
        try:
            ds = load_dataset(path_or_id, split=split)
        except (ValueError, DatasetsError, FileNotFoundError) as err:  # one line naming the option, not a traceback
            reason = " ".join(str(err).split())[:300]
            if "split" in reason.lower():
                raise ValueError(f"`{argument} {split}` is not a split of `{path_or_id}` ({reason}).") from None
            raise ValueError(f"`--dataset_name` {path_or_id} (split {split}) cannot be loaded: {reason}") from None
    if isinstance(ds, DatasetDict):
        if split is None:
            raise ValueError(f"`{path_or_id}` holds splits {list(ds)}; choose one with --split.")
        if split not in ds:
            raise ValueError(f"`{argument} {split}` not in `{path_or_id}`; it has {list(ds)}.")
        ds = ds[split]
    return ds


@dataclass
class TrainingSet:
    """Every row of a dataset as remain data, with no forget set: trains an original model through the same loop."""

    dataset: Dataset
    forget_classes: Optional[list[int]] = None

    @property
    def remain(self) -> Dataset:
        return self.dataset

    @property
    def forget(self) -> Dataset:
        return self.dataset.select([])

    @property
    def test_dataset(self) -> None:
        return None

    forget_indices: list[int] = field(default_factory=list)

    @property
    def fingerprint(self) -> str:
        return sha256_of([], getattr(self.dataset, "_fingerprint", None))

    def describe(self) -> dict[str, Any]:
        return {"fingerprint": self.fingerprint, "scenario": "train", "num_forget": 0, "num_remain": len(self.dataset)}

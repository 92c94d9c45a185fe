"""Input checks run before any weight changes, beyond those of `UnlearnConfig`, `ForgetRemainSplit` and the families.

Each raises `ValueError` naming the argument at fault and saying how to fix it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import torch
from safetensors import SafetensorError, safe_open

from .utils import check_output_dir

# Weight files that are pickles: loading them can run arbitrary code, so they are never read.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def check_weights_files(path, argument: str = "model_or_path", subfolder: Optional[str] = None) -> None:
    """Refuses a local model folder whose weights are only pickles, or whose safetensors files are truncated/corrupt.

    Hub repo ids (not local folders) are left to the loader, which is called with `use_safetensors=True`.
    """
    if not isinstance(path, (str, os.PathLike)) or not os.path.isdir(path):
        return
    folder = Path(path) / (subfolder or "")
    if not folder.is_dir():
        return
    safe = sorted(folder.glob("*.safetensors"))
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if not safe and pickles:
        raise ValueError(
            f"`{argument}` {path} holds only pickle weight files {pickles[:3]}, which hf_unlearn never loads "
            "(loading a pickle can run arbitrary code). Convert them to safetensors once, from a source you trust, "
            "e.g. "
            "`model.save_pretrained(folder, safe_serialization=True)`, and pass that folder."
        )
    for file in safe:
        check_safetensors_file(file, argument)


def check_safetensors_file(file, argument: str) -> None:
    """Reads the header and checks the data section covers every tensor (a truncated download fails here)."""
    try:
        with safe_open(os.fspath(file), framework="pt") as handle:
            for key in handle.keys():  # noqa: SIM118 (safe_open handles are not mappings)
                handle.get_slice(key)
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(
            f"`{argument}`: the weights file {file} is truncated or corrupt ({err}). Download or save the model again "
            "(an interrupted copy is the usual cause)."
        ) from err


def check_finite_weights(model: torch.nn.Module, argument: str = "model_or_path") -> None:
    """Refuses a model that already holds NaN/Inf weights: unlearning it would give a silently broken result."""
    with torch.no_grad():
        for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                raise ValueError(
                    f"`{argument}`: the model's weight `{name}` holds NaN or Inf values before unlearning, so the "
                    "model file is corrupt or was saved after a diverged run; load a good copy of the model."
                )


def check_labels(dataset, label_column: str, num_classes: int, name: str = "dataset") -> None:
    """Refuses labels that are not integer class ids in `0..num_classes-1` (strings, floats, -1): the loss would fail
    mid-run on the first batch holding one, or an unlucky short run would never meet it and exit 0."""
    import numpy as np  # noqa: PLC0415

    labels = np.asarray(dataset.select_columns([label_column]).with_format("numpy")[:][label_column])
    if labels.dtype.kind not in "iu":
        raise ValueError(
            f"`label_column` '{label_column}' of `{name}` holds {labels.dtype} values (e.g. {labels[:3].tolist()}), "
            "not integer class ids; map them to 0..num_labels-1 first (e.g. with datasets' `class_encode_column`)."
        )
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        bad = labels[(labels < 0) | (labels >= num_classes)]
        raise ValueError(
            f"`label_column` '{label_column}' of `{name}` holds labels {sorted(set(bad.tolist()))[:3]} outside "
            f"0..{num_classes - 1} (the model's num_labels={num_classes}); drop or relabel those rows."
        )


def local_folder(path) -> Optional[Path]:
    """`path` as an absolute, symlink-free folder path when it names a local folder (or a file in one), else `None`."""
    if not isinstance(path, (str, os.PathLike)) or not str(path) or not os.path.exists(path):
        return None
    real = Path(os.path.realpath(path))
    return real if real.is_dir() else real.parent


def check_not_source(output, sources, argument: str = "output_dir") -> None:
    """Refuses an output folder that is, lies inside, or contains a source folder (a model, its adapter's base, the
    reference): writing or replacing it would destroy an input. `overwrite_output_dir` does not lift this."""
    if not isinstance(output, (str, os.PathLike)) or not str(output):
        return
    out = Path(os.path.realpath(output))
    for source in sources:
        folder = local_folder(source)
        if folder is None:
            continue
        if out == folder or folder in out.parents or out in folder.parents:
            where = "is" if out == folder else "lies inside" if folder in out.parents else "contains"
            raise ValueError(
                f"`{argument}` {output} {where} the input folder {source}, which hf_unlearn never writes (not even "
                "with overwrite_output_dir); choose an output folder outside it."
            )


def check_split_kind(family_name: str, split) -> None:
    """A concept split (prompts) is for text-to-image models; rows of a labelled dataset for the others."""
    if hasattr(split, "forget_prompts") and not hasattr(split, "dataset") and family_name != "text_to_image":
        raise ValueError(
            f"`forget_prompts` (a ConceptSplit) is for text-to-image models; this is a {family_name} model: select "
            "the rows to forget with ForgetRemainSplit.from_dataset (forget_classes, forget_ids, forget_fraction)."
        )


def check_run_output_dir(config, sources=()) -> None:
    """Checks that `output_dir` (where the run writes its mask and checkpoints) is ours or may be overwritten, and
    is not an input folder."""
    check_not_source(config.output_dir, sources)
    if config.output_dir:
        check_output_dir(config.output_dir, config.overwrite_output_dir, argument="output_dir")


__all__ = [
    "check_finite_weights",
    "check_labels",
    "check_not_source",
    "check_run_output_dir",
    "check_safetensors_file",
    "check_weights_files",
]


def all_finite(tensors: list[torch.Tensor]) -> bool:
    """Whether every element of `tensors` is finite, checked every step by the divergence guard.

    The 2-norms come from one fused call (`_foreach_norm`, about 6× faster than a check per tensor on the digits
    ResNet) and a NaN or ±Inf element makes its tensor's norm NaN or Inf, so finite norms prove finite elements; only
    when a norm is not finite (a real NaN/Inf, or squares of huge finite values overflowing) are the elements checked.
    """
    if not tensors:
        return True
    norms = torch._foreach_norm(tensors)
    if bool(torch.isfinite(torch.stack([n.float() for n in norms])).all()):
        return True
    return all(bool(torch.isfinite(t).all()) for t in tensors)

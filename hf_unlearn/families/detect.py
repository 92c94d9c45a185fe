"""Reading a model's config files from a folder or a Hub repo without loading its weights."""

from __future__ import annotations

import json
import os
from typing import Any, Optional


def read_config_file(path_or_id: Any, filename: str, subfolder: Optional[str] = None) -> Optional[dict]:
    """The parsed JSON file `filename` of a local folder or Hub repo (from the cache when offline), or `None`."""
    if not isinstance(path_or_id, (str, os.PathLike)):
        return None
    path = str(path_or_id)
    if os.path.isdir(path):
        file = os.path.join(path, subfolder or "", filename)
        if not os.path.isfile(file):
            return None
    else:
        try:
            from huggingface_hub import hf_hub_download  # noqa: PLC0415

            file = hf_hub_download(path, filename, subfolder=subfolder)
        except Exception:  # noqa: BLE001 (a missing file is a normal answer here)
            return None
    try:
        with open(file, encoding="utf-8") as fh:
            return json.load(fh)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:  # one line naming the file, not a bare JSON error
        raise ValueError(
            f"`model_or_path`: {file} is not a valid JSON file ({err}); restore it from the model."
        ) from None


def pipeline_components(model_or_path: Any) -> set[str]:
    """The non-empty components of a diffusers pipeline object, or those its folder's / repo's `model_index.json`
    names (empty for anything else)."""
    if hasattr(model_or_path, "components"):
        return {k for k, v in model_or_path.components.items() if v is not None}
    index = read_config_file(model_or_path, "model_index.json") or {}
    return {k for k, v in index.items() if isinstance(v, list) and v and v[0] is not None}

"""`hf-unlearn audit`: the per-example privacy audit of an unlearned classifier (see `hf_unlearn.audit`)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Optional

from .audit import AuditConfig, memorisation, memorisation_order, privacy_audit
from .cli import _echo, _load_data, _print_metrics
from .cli_args import DataArguments, parse_with_config
from .config import UnlearnConfig
from .modelcard import record_robustness
from .unlearner import Unlearner
from .utils import atomic_write_json, read_record


@dataclass
class AuditOutputArguments:
    """Where the audit's result goes."""

    audit_file: Optional[str] = field(
        default=None, metadata={"help": "Write the result, with every forget row's φ and likelihood ratio, here."}
    )
    memorisation_file: Optional[str] = field(
        default=None,
        metadata={"help": "Also write every training row's memorisation score (from the halves) and the row ids "
                  "sorted from most to least memorised, e.g. to choose --forget_ids."},
    )  # fmt: skip
    update_card: bool = field(
        default=False,
        metadata={"help": "Add the result to the model's unlearning record and card (a folder hf_unlearn saved)."},
    )


def _check_outputs(args: DataArguments, out: AuditOutputArguments) -> None:
    """Refuses, before any shadow is trained, outputs that cannot be written."""
    for flag, path in (("--audit_file", out.audit_file), ("--memorisation_file", out.memorisation_file)):
        if path and os.path.isdir(path):
            raise ValueError(f"`{flag}` {path} is a folder; give a file path, e.g. audit.json.")
        parent = os.path.dirname(os.path.abspath(path)) if path else None
        if parent and not os.path.isdir(parent):
            raise ValueError(f"`{flag}` {path}: its folder {parent} does not exist; create it first.")
    if out.update_card and read_record(args.model) is None:
        raise ValueError(
            f"`--update_card`: {args.model} is not a folder saved by hf_unlearn (no unlearning record); drop "
            "--update_card or audit a saved folder."
        )


def audit_main(argv=None) -> int:
    """`hf-unlearn audit --model UNLEARNED --forget_classes 3 --shadows_dir shadows [--reference RT]`."""
    args, audit_config, out = parse_with_config(
        (DataArguments, AuditConfig, AuditOutputArguments), argv, "hf-unlearn audit"
    )
    _check_outputs(args, out)
    config = UnlearnConfig(output_dir="")
    split = _load_data(args, config)
    unlearner = Unlearner.from_pretrained(args.model, config, trust_remote_code=args.trust_remote_code)
    if unlearner.family.name != "image_classifier":
        raise ValueError(f"`hf-unlearn audit` audits classifiers; {args.model} is a {unlearner.family.name} model.")
    result = privacy_audit(unlearner, split, audit_config, reference=args.reference)
    name = os.path.basename(os.path.normpath(args.model))
    _print_metrics({name: result.model, f"floor ({result.floor_source})": result.floor})
    _echo(
        f"{len(split.forget_indices)} forget rows, {result.num_shadows} halves + {result.num_rt_shadows} RT shadows "
        f"({result.mode}), {result.num_negatives} negatives"
    )
    if out.audit_file:
        atomic_write_json(out.audit_file, result.to_dict(rows=True))
        _echo(f"wrote {out.audit_file}")
    if out.memorisation_file:
        scores = memorisation(unlearner, split.dataset, audit_config)
        payload = {k: v.tolist() for k, v in scores.items()} | {"most_memorised_first": memorisation_order(scores)}
        atomic_write_json(out.memorisation_file, payload)
        _echo(f"wrote {out.memorisation_file}")
    if out.update_card:
        entry = {"attack": "lira", "mode": result.mode, "num_shadows": result.num_shadows}
        entry |= {"num_rt_shadows": result.num_rt_shadows, "level": result.level, "model": result.model}
        entry |= {"floor": result.floor, "floor_source": result.floor_source}
        record_robustness(args.model, json.loads(json.dumps(entry)))
        _echo(f"added the audit to {os.path.join(args.model, 'README.md')}")
    return 0

"""`evaluate`: classification metrics of an unlearned model on a split, against an optional reference (RT)."""

from __future__ import annotations

from typing import Any, Optional

import torch
from tqdm.auto import tqdm

from .families import ModelFamily, get_family_class
from .metrics.classification import classification_metrics
from .training import partial_state


@torch.no_grad()
def predict_logits(family, model, dataset, batch_size: int = 256, desc: str = "predict"):
    """Logits and labels over `dataset`, batched, in eval mode (the model's mode is restored afterwards).

    Under several processes each rank predicts a contiguous shard and the results are gathered, so every row is
    counted exactly once and in order.
    """
    state = partial_state()
    device = next(model.parameters()).device
    indices = list(range(len(dataset)))
    with state.split_between_processes(indices) as shard:
        part = dataset.select(shard)
        loader = family.make_dataloader(part, batch_size=batch_size, shuffle=False, seed=0)
        was_training = model.training
        model.eval()
        logits, labels = [], []
        try:
            for batch in tqdm(loader, desc=desc, leave=False, disable=not state.is_local_main_process):
                batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
                logits.append(family.logits(model, batch).float().cpu())
                labels.append(batch["labels"].cpu())
        finally:
            model.train(was_training)
    logits = torch.cat(logits) if logits else torch.zeros(0, family.num_classes)
    labels = torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long)
    if state.num_processes > 1:
        from accelerate.utils import gather_object  # noqa: PLC0415

        logits = torch.cat(gather_object([logits]))
        labels = torch.cat(gather_object([labels]))
    return logits, labels


def _resolve_reference(reference, like) -> Optional[Any]:
    """A reference given as a model, an `Unlearner` or a path, as a (family, model) pair."""
    if reference is None:
        return None
    if isinstance(getattr(reference, "family", None), ModelFamily):  # an Unlearner (not imported: it imports us)
        return reference.family, reference.model
    if isinstance(reference, torch.nn.Module):
        return like.family, reference
    loaded = get_family_class(like.family.name).from_pretrained(
        reference,
        like.config,
        image_processor=getattr(like.family, "image_processor", None),
        transform=getattr(like.family, "transform", None),
    )
    return loaded, loaded.model


def evaluate(model_or_unlearner, split, reference=None, *, batch_size: Optional[int] = None, seed: int = 0) -> dict:
    r"""FA, RA, TA, TA_forget, MIA, MIA_svc and, with a reference (RT), KL, JS and Avg.D of a classifier.

    Args:
        model_or_unlearner ([`Unlearner`]): the model to score.
        split ([`ForgetRemainSplit`]): the forget / remain / test rows.
        reference ([`Unlearner`], `torch.nn.Module` or `str`, *optional*): the retrained model for KL/JS/Avg.D.
        batch_size (`int`, *optional*): defaults to the config's `eval_batch_size`.
        seed (`int`, *optional*, defaults to `0`): seed of the attack models' subsampling.

    Accuracies and MIA are percentages. Neither the model's mode nor its weights change. The split is checked first
    with the same checks as [`Unlearner.unlearn`] (columns, labels, channels), so bad data gives the library's own
    message before any pass.
    """
    unl = model_or_unlearner
    family, model = unl.family, unl.model
    if family.name != "image_classifier":
        raise ValueError(
            f"`evaluate` scores classifiers (and `Unlearner.evaluate` text-to-image models); score a {family.name} "
            "model with `hf_unlearn.metrics.generation.generation_metrics` and a judge classifier, then keep the "
            "result with `unlearner.record_metrics(metrics)`."
        )
    family.validate_split(split)
    bs = batch_size or unl.config.eval_batch_size
    outs = {}
    for name, ds in [("forget", split.forget), ("remain", split.remain), ("test", split.test_dataset)]:
        outs[name] = None if ds is None else predict_logits(family, model, ds, bs, desc=f"eval {name}")
    ref_forget = ref_metrics = None
    resolved = _resolve_reference(reference, unl)
    if resolved is not None:
        ref_family, ref_model = resolved
        ref = {
            name: None if ds is None else predict_logits(ref_family, ref_model, ds, bs, desc=f"ref {name}")
            for name, ds in [("forget", split.forget), ("remain", split.remain), ("test", split.test_dataset)]
        }
        ref_forget = ref["forget"][0]
        ref_metrics = _metrics(ref, split, seed)
    return _metrics(outs, split, seed, reference_forget_logits=ref_forget, reference_metrics=ref_metrics)


def _metrics(outs, split, seed, **kwargs) -> dict:
    test = outs.get("test")
    return classification_metrics(
        forget_logits=outs["forget"][0],
        forget_labels=outs["forget"][1],
        remain_logits=outs["remain"][0],
        remain_labels=outs["remain"][1],
        test_logits=None if test is None else test[0],
        test_labels=None if test is None else test[1],
        forget_classes=split.forget_classes,
        seed=seed,
        **kwargs,
    )

"""The model card of an unlearned model: `templates/modelcard_template.md` rendered by `ModelCard.from_template`."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional

import yaml

from .modelcard_robustness import robustness_rows
from .utils import CONFIG_NAME, RECORD_NAME, atomic_write_json, atomic_write_text, read_record

TEMPLATE_PATH = Path(__file__).parent / "templates" / "modelcard_template.md"
METRICS_DOC = "`docs/metrics.md` of hf_unlearn (the same text is in `hf_unlearn.metrics`' docstrings)"
DIGITS_DATASET = (
    "scikit-learn's digits (1,797 real 8×8 handwritten digits, bundled: `hf_unlearn.load_digits_dataset()`)"
)

# (label, one line saying what the metric measures and which way is good), per family; keys as the evaluators return.
_CLASSIFIER = {
    "FA": (
        "FA (forget accuracy, %)",
        "top-1 accuracy on the forgotten training rows; the target is a retrained "
        "model's value (about 0 for a forgotten class, about the test accuracy for forgotten rows).",
    ),
    "RA": ("RA (remain accuracy, %)", "top-1 accuracy on the training rows that are kept; higher is better."),
    "TA": (
        "TA (test accuracy, %)",
        "top-1 accuracy on held-out rows (of the kept classes when classes are forgotten); higher is better.",
    ),
    "TA_forget": ("TA of the forgotten classes (%)", "top-1 accuracy on held-out rows of the forgotten classes."),
    "MIA": (
        "MIA (entropy attack, %)",
        "share of forgotten rows a membership-inference attack on prediction "
        "entropy still calls training members; the target is a retrained model's value.",
    ),
    "MIA_svc": (
        "MIA-SVC (confidence attack, %)",
        "the same question asked by an SVC on the true-label "
        "probability (SalUn's attack; their MIA-efficacy is 100 minus this).",
    ),
    "KL": (
        "KL to the retrained model",
        "mean KL divergence from a model retrained without the forget set to this "
        "one on the forgotten rows; lower is closer.",
    ),
    "JS": (
        "JS to the retrained model",
        "mean Jensen-Shannon divergence to the retrained model on the forgotten rows, in [0, ln 2]; lower is closer.",
    ),
    "avg_d": ("Avg.D", "mean absolute gap to the retrained model over FA, RA, TA and MIA; lower is closer."),
}
_DIFFUSION = {
    "FA": (
        "FA (judge's forget-class accuracy)",
        "share of samples generated for the forgotten classes that a judge "
        "classifier labels as those classes; lower means the class is no longer drawn.",
    ),
    "remain_acc": (
        "judge's accuracy on kept classes",
        "mean per-class share of kept-class samples the judge labels correctly; higher is better.",
    ),
    "FID": ("FID of kept classes", "Fréchet distance between kept-class samples and real images; lower is better."),
    "hist_kl": (
        "histogram KL to the retrained model",
        "KL divergence between the judge's labels of forget-class "
        "samples and those of a retrained model; lower is closer.",
    ),
}
_TEXT_TO_IMAGE = {
    "concept_gap": (
        "concept gap",
        "mean squared distance between the UNet's noise predictions for each forgotten "
        "prompt and for its anchor prompt, on the concept images at fixed noise; lower means the concept "
        "is drawn like its anchor.",
    ),
    "remain_noise_loss": (
        "remain noise loss",
        "noise-prediction loss on the images that are kept, with their own "
        "captions and fixed noise; it should stay near its value before unlearning.",
    ),
    "concept_images": ("concept images scored", "forget images (and as many remain images) the two values above use."),
    "nudity_rate": (
        "nudity rate",
        "share of images for the concept prompts in which NudeNet detects exposed body parts; lower is better.",
    ),
    "clip_score": ("CLIP score", "image-text agreement on ordinary prompts; it should stay near its value before."),
    "fid": ("FID (CLIP features)", "Fréchet distance to reference images on ordinary prompts; lower is better."),
}
METRIC_HELP = {
    "image_classifier": _CLASSIFIER,
    "class_conditional_diffusion": _DIFFUSION,
    "text_to_image": _TEXT_TO_IMAGE,
}
KEY_HYPERPARAMETERS = (
    "learning_rate", "max_steps", "remain_steps_per_forget", "forget_alpha", "temperature", "mask_threshold", "optim",
    "per_device_train_batch_size", "max_grad_norm", "train_modules", "lora", "seed",
)  # fmt: skip
_SNIPPETS = {
    ("image_classifier", False): [
        "from transformers import AutoImageProcessor, AutoModelForImageClassification",
        'model = AutoModelForImageClassification.from_pretrained("{model}")',
        'processor = AutoImageProcessor.from_pretrained("{model}")',
    ],
    ("image_classifier", True): [
        "from peft import PeftModel",
        "from transformers import AutoModelForImageClassification",
        'base = AutoModelForImageClassification.from_pretrained("{base}")',
        'model = PeftModel.from_pretrained(base, "{model}")',
    ],
    ("text_to_image", False): [
        "from diffusers import StableDiffusionPipeline",
        'pipe = StableDiffusionPipeline.from_pretrained("{model}")',
    ],
    ("text_to_image", True): [
        "from diffusers import StableDiffusionPipeline",
        'pipe = StableDiffusionPipeline.from_pretrained("{model}")  # the base weights, saved beside the adapter',
        'pipe.load_lora_weights("{model}")',
    ],
    ("class_conditional_diffusion", False): [
        "from hf_unlearn.pipelines import ClassConditionalPipeline",
        'pipe = ClassConditionalPipeline.from_pretrained("{model}")',
    ],
    ("class_conditional_diffusion", True): [
        "from peft import PeftModel",
        "from hf_unlearn.pipelines import ClassConditionalPipeline",
        'pipe = ClassConditionalPipeline.from_pretrained("{base}")',
        'pipe.unet = PeftModel.from_pretrained(pipe.unet, "{model}").merge_and_unload()',
    ],
}


def looks_like_repo(value) -> bool:
    """Whether `value` reads as a Hub repo id (`owner/name`) rather than a local path."""
    return isinstance(value, str) and value.count("/") == 1 and not os.path.exists(value) and " " not in value


def load_snippet(
    family: str, adapter: bool, model: str, base: Optional[str], pipeline_class: Optional[str] = None
) -> str:
    """Python that loads the saved model from `model` (a repo id or folder), on top of `base` for adapters; a
    text-to-image folder loads with its own `pipeline_class` (e.g. `StableDiffusionXLPipeline`)."""
    lines = _SNIPPETS.get((family, adapter), _SNIPPETS[("class_conditional_diffusion", adapter)])
    text = "\n".join(lines).format(model=model, base=base or model)
    if family == "text_to_image" and pipeline_class:
        text = text.replace("StableDiffusionPipeline", pipeline_class)
    return text


def describe_forgotten(request: dict) -> str:
    """What a request forgot, in words: the classes (with their names), the concept prompts, or the rows."""
    fs = request.get("forget_set") or {}
    classes, names = fs.get("forget_classes"), fs.get("forget_class_names") or {}
    if classes:
        named = [f"{c} (`{names[str(c)]}`)" if str(names.get(str(c), c)) != str(c) else str(c) for c in classes]
        return f"class{'es' if len(classes) > 1 else ''} {', '.join(named)} ({fs.get('num_forget')} training rows)"
    prompts = fs.get("forget_prompts")
    if prompts:
        anchors = fs.get("anchor_prompts") or []
        text = "the concept of the prompts " + ", ".join(f'"{p}"' for p in prompts)
        return text + (f" (remapped to {', '.join(repr(a) for a in anchors)})" if anchors else "")
    if fs.get("scenario") == "train":
        return "nothing (a training run)"
    return f"{fs.get('num_forget')} training rows"


def _fmt(value) -> str:
    if value is None:
        return "–"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _metric_rows(family: str, before: Optional[dict], after: Optional[dict]) -> list[dict]:
    before, after = before or {}, after or {}
    known = METRIC_HELP.get(family, {})
    keys = [k for k in known if k in after or k in before]
    keys += [k for k in {**before, **after} if k not in known]
    rows = []
    for key in keys:
        values = before.get(key), after.get(key)
        if all(v is None for v in values) or not all(v is None or isinstance(v, (int, float)) for v in values):
            continue  # per-class dicts, histograms, names of feature extractors: in the record, not the table
        label, text = known.get(key, (key, "see the metric definitions below."))
        rows.append({"label": label, "help": text, "before": _fmt(values[0]), "after": _fmt(values[1])})
    return rows


def _history(record: dict) -> tuple[list[str], list[dict]]:
    known = METRIC_HELP.get(record.get("family"), {})
    keys = [k for k in known if any(k in (r.get("metrics") or {}) for r in record["requests"])][:3]
    rows = []
    for i, req in enumerate(record["requests"], 1):
        fs, metrics, runtime = req.get("forget_set") or {}, req.get("metrics") or {}, req.get("runtime_s")
        rows.append(
            {
                "index": i,
                "date": req.get("date"),
                "method": req.get("method"),
                "forgotten": describe_forgotten(req),
                "rows": fs.get("num_forget"),
                "fingerprint": str(fs.get("fingerprint"))[:16],
                "cycles": req.get("steps"),
                "runtime": "" if runtime is None else f"{runtime:.1f}",
                "metrics": [_fmt(metrics.get(k)) for k in keys],
            }
        )
    return keys, rows


def _earlier_rows(record: dict, family: str) -> list[dict]:
    """The last request's measurements of every earlier forget set, beside their values when they were forgotten."""
    requests = record.get("requests") or []
    measured = (requests[-1].get("earlier_requests") if requests else None) or []
    known = METRIC_HELP.get(family, {})
    rows = []
    for entry in measured:
        index = entry.get("request")
        then = entry.get("metrics_at_request") or {}
        now = entry.get("metrics")
        keys = [k for k in (now or {}) if k in known] if now else []
        text = ", ".join(f"{k} {_fmt(now[k])}" for k in keys) or "none of its rows are in this request's data"
        rows.append(
            {
                "index": index,
                "forgotten": describe_forgotten(requests[index - 1]) if 0 < index <= len(requests) else "?",
                "now": text if now is not None else entry.get("note") or "not measured",
                "then": ", ".join(f"{k} {_fmt(then[k])}" for k in keys if k in then) or "–",
            }
        )
    return rows


def _dataset(request: dict) -> str:
    name = request.get("dataset")
    fingerprint = (request.get("forget_set") or {}).get("dataset_fingerprint")
    if name:
        link = f"[`{name}`](https://huggingface.co/datasets/{name})" if looks_like_repo(name) else name
        return link + (f" (fingerprint `{fingerprint}`)" if fingerprint else "")
    return f"a dataset with fingerprint `{fingerprint}`" if fingerprint else "not recorded"


_BODY_ESCAPES = str.maketrans({"<": "&lt;", ">": "&gt;", "|": "&#124;", "[": "&#91;", "]": "&#93;", "`": "'"})


def escape_text(text: str) -> str:
    """`text` safe to place in the card's Markdown body: one line, no HTML tags, table cells, links or code spans."""
    return " ".join(str(text).split()).translate(_BODY_ESCAPES)


def escape_record(value):
    """A copy of `value` (a record, or any part of it) with every string passed through [`escape_text`]."""
    if isinstance(value, dict):
        return {k: escape_record(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [escape_record(v) for v in value]
    return escape_text(value) if isinstance(value, str) else value


def render_model_card(
    record: dict,
    *,
    model_id: str,
    images=(),
    adapter: bool = False,
    pipeline_class: Optional[str] = None,
    load_base: Optional[str] = None,
):
    """The [`huggingface_hub.ModelCard`] of `record` (see [`write_model_card`])."""
    from huggingface_hub import ModelCard, ModelCardData  # noqa: PLC0415

    family, requests = record["family"], record["requests"]
    last = requests[-1] if requests else {}
    base = record.get("base_model") or "a local model"
    parent = record.get("parent_model")
    if parent and not looks_like_repo(parent):  # a local path says nothing to a reader and leaks the user's folders
        parent = Path(str(parent)).name or None
    datasets = sorted({r["dataset"] for r in requests if looks_like_repo(r.get("dataset"))})
    library = "diffusers" if family != "image_classifier" else "peft" if adapter else "transformers"
    data = ModelCardData(
        library_name=library,
        base_model=base if looks_like_repo(base) else None,
        datasets=datasets or None,
        tags=["machine-unlearning", "hf_unlearn", *sorted({str(r.get("method")) for r in requests})]
        + (["lora"] if adapter else []),
    )
    # Text of the record (prompts, class names, paths, commands of earlier requests read from an input folder) goes
    # into the body escaped: one line, no HTML, no code-span or link breakout. The front matter above is YAML-quoted.
    record = escape_record(record)
    requests, last = record["requests"], record["requests"][-1] if record["requests"] else {}
    base = record.get("base_model") or "a local model"
    hyper = last.get("hyperparameters") or {}
    history_metrics, history = _history(record)
    runtime = last.get("runtime_s")
    return ModelCard.from_template(
        data,
        template_path=str(TEMPLATE_PATH),
        title=f"{Path(str(model_id)).name or model_id}: {base} unlearned ({last.get('method', 'no request')})",
        base_model=base,
        base_model_ref=f"[`{base}`](https://huggingface.co/{base})" if looks_like_repo(base) else base,
        parent_model=parent,
        earlier=_earlier_rows(record, family),
        num_requests=len(requests),
        forgotten=describe_forgotten(last) if last else "nothing",
        dataset=_dataset(last),
        fingerprint=(last.get("forget_set") or {}).get("fingerprint"),
        method=last.get("method"),
        cycles=last.get("steps"),
        runtime="–" if runtime is None else f"{runtime:.1f}",
        metrics=_metric_rows(family, last.get("metrics_before"), last.get("metrics")),
        has_before=bool(last.get("metrics_before")),
        metrics_doc=METRICS_DOC,
        method_parts=[(k, v) for k, v in (last.get("method_parts") or {}).items() if k != "name"],
        key_hyperparameters=[(k, hyper[k]) for k in KEY_HYPERPARAMETERS if hyper.get(k) is not None],
        config_yaml=yaml.safe_dump(hyper, sort_keys=False),
        load_snippet=load_snippet(
            family, adapter, str(model_id), load_base or record.get("base_model"), pipeline_class
        ),
        history=history,
        history_metrics=history_metrics,
        command=last.get("command"),
        images=list(images or []),
        robustness=robustness_rows(record),
        record_name=RECORD_NAME,
        config_name=CONFIG_NAME,
    )


def write_model_card(
    record: dict, folder, *, model_id: Optional[str] = None, images=None, adapter: bool = False
) -> None:
    r"""Writes `README.md` into `folder` (through a temporary file): metadata, what was forgotten, before/after metrics
    with what each measures, the method and its configuration, how to load the model, and the history of requests.

    Args:
        record (`dict`): the unlearning record ([`build_record`]).
        folder (`str` or `os.PathLike`): where to write `README.md`.
        model_id (`str`, *optional*): the repo id or folder the load snippet reads (defaults to `folder`).
        images (`list[str]`, *optional*): names of PNG files beside the card to show.
        adapter (`bool`, *optional*, defaults to `False`): whether the folder holds a LoRA adapter only.
    """
    # A diffusers folder names its pipeline class: an SDXL folder's card then loads it as such.
    index = Path(folder) / "model_index.json"
    pipeline_class = json.loads(index.read_text()).get("_class_name") if index.is_file() else None
    adapter_config = Path(folder) / "adapter_config.json"  # what the adapter loads on (peft reads the same field)
    load_base = None
    if adapter_config.is_file():
        load_base = json.loads(adapter_config.read_text()).get("base_model_name_or_path")
    card = render_model_card(
        record,
        model_id=model_id or str(folder),
        images=images,
        adapter=adapter,
        pipeline_class=pipeline_class,
        load_base=load_base,
    )
    atomic_write_text(Path(folder) / "README.md", str(card))


def card_inputs_of(folder) -> dict[str, Any]:
    """The images and adapter flag of a saved folder, so that its card can be rendered again (e.g. for a repo id)."""
    folder = Path(folder)
    images = sorted(p.stem for p in folder.glob("*.png"))
    adapter = (folder / "adapter_config.json").is_file() or (folder / "pytorch_lora_weights.safetensors").is_file()
    return {"images": images, "adapter": adapter}


def record_robustness(folder, entry: dict) -> None:
    """Adds an attack's result to the unlearning record of a saved folder and renders its card again, so the card's
    robustness table shows it (for the model as it is now: a later deletion request hides it)."""
    record = read_record(folder)
    if record is None:
        raise ValueError(f"{folder} holds no {RECORD_NAME}: only a folder saved by hf_unlearn has a card to update.")
    record.setdefault("robustness", []).append({**entry, "request": len(record.get("requests") or [])})
    atomic_write_json(Path(folder) / RECORD_NAME, record)
    write_model_card(record, folder, **card_inputs_of(folder))

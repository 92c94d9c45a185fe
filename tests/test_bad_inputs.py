"""Bad inputs are refused before any weight changes, with a message that names the argument at fault.

Every case goes through the public path a user takes (config, split, `Unlearner.from_pretrained`, `unlearn`) and
asserts that the model's weights and buffers are bitwise unchanged afterwards (or, for loading, that the files are).
"""

import copy
import math
import shutil

import pytest
import torch
from datasets import DatasetDict
from safetensors.torch import save_file

from hf_unlearn import ConceptSplit, ForgetRemainSplit, UnlearnConfig, Unlearner
from hf_unlearn.tiny.classifiers import digits_image_processor, tiny_classifier
from hf_unlearn.utils import file_sha256


@pytest.fixture(scope="module")
def data(digits_small):
    return digits_small["train"].select(range(200))


@pytest.fixture(scope="module")
def base_model():
    return tiny_classifier("resnet", seed=0)


@pytest.fixture
def model(base_model):
    return copy.deepcopy(base_model)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, base_model):
    folder = tmp_path_factory.mktemp("bad_inputs_model")
    base_model.save_pretrained(folder)
    digits_image_processor().save_pretrained(folder)
    return folder


def config(**kwargs):
    values = {"output_dir": "", "max_steps": 2, "saliency_max_batches": 1, "per_device_train_batch_size": 32}
    return UnlearnConfig(**(values | kwargs))


def run(model, data, cfg=None, processor=None, **split_kwargs):
    """The whole user path: build the config, the unlearner and the split, then unlearn."""
    unlearner = Unlearner.from_pretrained(
        model, cfg() if callable(cfg) else (cfg or config()), image_processor=processor or digits_image_processor()
    )
    split = ForgetRemainSplit.from_dataset(data, **(split_kwargs or {"forget_classes": [3]}))
    return unlearner.unlearn(split)


def rejected(action, argument: str, model=None, files=()) -> str:
    """Runs `action`, expects a ValueError naming `argument`, and checks nothing changed."""
    weights = None if model is None else {k: v.clone() for k, v in model.state_dict().items()}
    hashes = {f: file_sha256(f) for f in files}
    with pytest.raises(ValueError) as info:
        action()
    message = str(info.value)
    assert argument in message, message
    if weights is not None:
        after = model.state_dict()
        assert weights.keys() == after.keys()
        for k in weights:  # bitwise, NaN included
            torch.testing.assert_close(after[k], weights[k], rtol=0, atol=0, equal_nan=True, msg=f"{k} changed")
    assert {f: file_sha256(f) for f in files} == hashes
    return message


# Hyperparameters: negative, NaN or Inf values and unknown choices
@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("method", "no_such_method"),
        ("learning_rate", math.nan),
        ("learning_rate", -1e-3),
        ("max_steps", -5),
        ("temperature", math.nan),  # λ (any finite λ is valid: a negative one reverses the weighting)
        ("mask_threshold", math.nan),  # γ
        ("forget_alpha", -1.0),  # α
        ("forget_alpha", math.inf),
        ("max_grad_norm", math.nan),
        ("max_grad_norm", -1.0),
        ("remain_max_grad_norm", -1.0),
        ("remain_steps_per_forget", -1),  # K
        ("saliency_max_batches", 0),
        ("saliency_max_batches", -2),
        ("saliency_clip_norm", -1.0),
        ("saliency_guidance_scale", -3.0),
        ("noise_loss_reduction", "median"),
        ("optim", "lbfgs"),
        ("mixed_precision", "fp8"),
    ],
)
def test_bad_hyperparameter(model, data, field, value):
    rejected(lambda: run(model, data, lambda: config(**{field: value})), f"`{field}`", model)


def test_negative_temperature_is_accepted_and_reverses_the_weighting(model, data):
    # Documented: λ < 0 turns ascent's ℓ^(−λ) into ℓ^(+|λ|), i.e. the weighting of a descent part.
    from hf_unlearn.parts import adaptive_weights

    losses = torch.tensor([0.1, 1.0, 3.0])
    reversed_ = adaptive_weights(losses, losses, -0.5, sign=-1.0)
    torch.testing.assert_close(reversed_, adaptive_weights(losses, losses, 0.5, sign=1.0))
    assert reversed_.argmax() == 2 and adaptive_weights(losses, losses, 0.5, sign=-1.0).argmax() == 0
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = run(model, data, lambda: config(method="sfr_on", temperature=-0.5))
    assert result.steps == 2 and all(math.isfinite(h["forget_loss"]) for h in result.history if "forget_loss" in h)
    assert any(not torch.equal(v, before[k]) for k, v in model.state_dict().items())


# The forget set
@pytest.mark.parametrize(
    ("split_kwargs", "argument"),
    [
        ({"forget_ids": []}, "forget_ids"),  # empty
        ({"forget_classes": list(range(10))}, "forget_classes"),  # the whole data
        ({"forget_ids": list(range(200))}, "forget_ids"),  # the whole data, by ids
        ({"forget_classes": [12]}, "forget_classes"),  # not among the labels
        ({"forget_ids": [5, 250]}, "forget_ids"),  # out of range
        ({"forget_ids": [-1]}, "forget_ids"),  # negative
        ({"forget_ids": [4, 4, 9]}, "forget_ids"),  # duplicated
        ({"forget_fraction": 1.5}, "forget_fraction"),
        ({"forget_classes": [3], "forget_ids": [1]}, "forget_classes"),  # two selectors
        ({"forget_classes": [3], "label_column": "digit"}, "label_column"),  # missing label column
    ],
)
def test_bad_forget_set(model, data, split_kwargs, argument):
    rejected(lambda: run(model, data, **split_kwargs), argument, model)


def test_forget_and_remain_never_overlap(data):
    # Overlap cannot be requested: the remain set is always the complement of the forget set.
    split = ForgetRemainSplit.from_dataset(data, forget_classes=[3])
    assert set(split.forget_indices).isdisjoint(split.remain_indices)
    assert len(split.forget_indices) + len(split.remain_indices) == len(data)


def test_dataset_dict_instead_of_a_split(model, data):
    both = DatasetDict({"train": data, "test": data})
    rejected(lambda: run(model, both), "`dataset`", model)


# Data that cannot feed the model
def test_missing_image_column(model, data):
    rejected(lambda: run(model, data, lambda: config(image_column="img")), "`image_column`", model)


def test_missing_label_column_in_config(model, data):
    renamed = data.rename_column("label", "digit")
    rejected(
        lambda: run(model, renamed, lambda: config(label_column="target"), forget_classes=[3], label_column="digit"),
        "`label_column`",
        model,
    )


def test_num_labels_mismatch(data):
    five = tiny_classifier("resnet", num_labels=5)
    rejected(lambda: run(five, data), "num_labels", five)


def test_wrong_channel_count(model, data):
    rgb = data.map(lambda row: {"image": row["image"].convert("RGB")})
    message = rejected(lambda: run(model, rgb), "image_processor", model)
    assert "num_channels=1" in message and "mode RGB" in message


def test_wrong_image_size(digits_small):
    vit = tiny_classifier("vit")  # 16×16 inputs; the processor below makes 24×24
    rows = digits_small["train"].select(range(100))
    rejected(lambda: run(vit, rows, processor=digits_image_processor(24)), "image_processor", vit)


# Masks, models and files
def test_mask_of_another_model(model, data, tmp_path):
    other = tiny_classifier("resnet", num_labels=5)
    path = tmp_path / "mask.safetensors"
    save_file({n: torch.ones_like(p, dtype=torch.uint8) for n, p in other.named_parameters()}, path)
    rejected(lambda: run(model, data, lambda: config(mask_path=str(path))), "`mask_path`", model, [path])


def test_corrupt_mask_file(model, data, tmp_path):
    path = tmp_path / "mask.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not a header")
    rejected(lambda: run(model, data, lambda: config(mask_path=str(path))), "`mask_path`", model, [path])


def test_truncated_safetensors_model(model_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(model_dir, broken)
    weights = broken / "model.safetensors"
    with open(weights, "r+b") as fh:
        fh.truncate(weights.stat().st_size // 2)
    files = sorted(broken.iterdir())
    rejected(lambda: Unlearner.from_pretrained(str(broken), config()), "`model_or_path`", files=files)


def test_model_with_nan_weights(model, data):
    with torch.no_grad():
        model.classifier[-1].weight[0, 0] = float("nan")
    rejected(lambda: run(model, data), "`model_or_path`", model)


def test_unknown_yaml_key(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("method: sfr_on\nlearning_rat: 0.01\n")
    assert "learning_rat" in rejected(lambda: UnlearnConfig.from_yaml(path), "Unknown config keys", files=[path])


def test_yaml_value_of_wrong_type(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("learning_rate: fast\n")
    rejected(lambda: UnlearnConfig.from_yaml(path), "`learning_rate`", files=[path])


def test_unknown_family(model):
    rejected(lambda: Unlearner.from_pretrained(model, config(), family="audio_classifier"), "`family`", model)


def test_method_that_does_not_support_the_family(model):
    message = rejected(
        lambda: Unlearner.from_pretrained(model, config(method="esd"), image_processor=digits_image_processor()),
        "esd",
        model,
    )
    assert "image_classifier" in message


def test_lora_target_modules_that_match_nothing(model, data):
    cfg = lambda: config(lora=True, lora_target_modules=["no_such_layer"])  # noqa: E731
    rejected(lambda: run(model, data, cfg), "`lora_target_modules`", model)


def test_empty_prompt_list():
    rejected(lambda: ConceptSplit(forget_prompts=[]), "`forget_prompts`")


def test_fp16_on_cpu(model, data):
    if torch.cuda.is_available():
        pytest.skip("fp16 is valid where a GPU is present")
    rejected(lambda: run(model, data, lambda: config(mixed_precision="fp16")), "`mixed_precision`", model)


def test_output_dir_with_foreign_files(model, data, tmp_path):
    keep = tmp_path / "thesis.tex"
    keep.write_text("years of work")
    cfg = lambda: config(output_dir=str(tmp_path), checkpointing_steps=1)  # noqa: E731
    rejected(lambda: run(model, data, cfg), "`output_dir`", model, [keep])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["thesis.tex"]


def test_resume_from_a_folder_that_is_not_a_checkpoint(model, data, tmp_path):
    cfg = lambda: config(output_dir=str(tmp_path / "out"), resume_from_checkpoint=str(tmp_path))  # noqa: E731
    rejected(lambda: run(model, data, cfg), "`resume_from_checkpoint`", model)

"""Splits, configs, family detection and the bad inputs the engine must refuse before touching weights."""

import json

import pytest
import torch
from datasets import Dataset
from transformers import HfArgumentParser

from hf_unlearn import ForgetRemainSplit, UnlearnConfig, Unlearner, detect_family
from hf_unlearn.cli_args import DataArguments, parse_with_config
from hf_unlearn.resolve import resolve_config
from hf_unlearn.tiny.classifiers import tiny_classifier


def test_split_by_classes_ids_fraction_and_filter(digits_small):
    train = digits_small["train"]
    by_class = ForgetRemainSplit.from_dataset(train, forget_classes=[3])
    labels = train["label"]
    assert all(labels[i] == 3 for i in by_class.forget_indices)
    assert len(by_class.forget_indices) + len(by_class.remain_indices) == len(train)
    assert not set(by_class.forget_indices) & set(by_class.remain_indices)
    by_ids = ForgetRemainSplit.from_dataset(train, forget_ids=[5, 1, 9])
    assert by_ids.forget_indices == [1, 5, 9] and by_ids.scenario == "rows"
    frac_a = ForgetRemainSplit.from_dataset(train, forget_fraction=0.1, seed=4)
    frac_b = ForgetRemainSplit.from_dataset(train, forget_fraction=0.1, seed=4)
    frac_c = ForgetRemainSplit.from_dataset(train, forget_fraction=0.1, seed=5)
    assert frac_a.forget_indices == frac_b.forget_indices != frac_c.forget_indices
    assert len(frac_a.forget_indices) == 60
    by_filter = ForgetRemainSplit.from_dataset(train, forget_filter=lambda row: row["label"] in (1, 2))
    assert sorted(set(train.select(by_filter.forget_indices)["label"])) == [1, 2]


def test_fingerprint_is_stable_and_depends_on_rows(digits_small):
    train = digits_small["train"]
    a = ForgetRemainSplit.from_dataset(train, forget_ids=[1, 2, 3])
    b = ForgetRemainSplit.from_dataset(train, forget_ids=[3, 2, 1])
    c = ForgetRemainSplit.from_dataset(train, forget_ids=[1, 2, 4])
    assert a.fingerprint == b.fingerprint != c.fingerprint
    assert len(a.fingerprint) == 64


def test_class_wise_test_rows_are_split(digits_small):
    split = ForgetRemainSplit.from_dataset(
        digits_small["train"], forget_classes=[3], test_dataset=digits_small["test"]
    )
    assert set(split.test_forget["label"]) == {3}
    assert 3 not in set(split.test_remain["label"])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"forget_classes": [12]}, r"`forget_classes` contains \[12\], but the dataset has labels 0..9"),
        ({"forget_ids": []}, "forget set is empty"),
        ({"forget_ids": [10_000]}, "`forget_ids` contains"),
        ({"forget_ids": [1, 1]}, "duplicated"),
        ({"forget_fraction": 1.5}, "`forget_fraction`"),
        ({"forget_ids": [1], "forget_classes": [2]}, "exactly one"),
    ],
)
def test_bad_splits_are_refused(digits_small, kwargs, message):
    with pytest.raises(ValueError, match=message):
        ForgetRemainSplit.from_dataset(digits_small["train"], **kwargs)


def test_forgetting_every_row_is_refused():
    ds = Dataset.from_dict({"label": [0, 1, 0]})
    with pytest.raises(ValueError, match="nothing would remain"):
        ForgetRemainSplit.from_dataset(ds, forget_ids=[0, 1, 2])


@pytest.mark.parametrize(
    "field, value",
    [
        ("learning_rate", -1.0),
        ("learning_rate", float("nan")),
        ("max_steps", 0),
        ("temperature", float("inf")),
        ("mask_threshold", float("inf")),
        ("forget_alpha", -2.0),
        ("optim", "lion"),
        ("mixed_precision", "fp8"),
        ("forget_alpha_schedule", "linear"),
    ],
)
def test_bad_hyperparameters_name_the_field(field, value):
    with pytest.raises(ValueError, match=f"`{field}`"):
        UnlearnConfig(**{field: value})


def test_alpha_schedule_choices_are_the_schedules():
    with pytest.raises(ValueError, match=r"`forget_alpha_schedule` is 'linear'; choose one of cosine, constant\.$"):
        UnlearnConfig(forget_alpha_schedule="linear")


def test_unknown_method_lists_valid_names():
    config = UnlearnConfig(method="nope")  # plain data: the name is checked where the registry is read
    with pytest.raises(ValueError, match="`method` is 'nope', which is not registered; valid names: .*sfr_on"):
        resolve_config(config, "image_classifier")
    # The command line still refuses it while parsing, before it reads any data or model (the model is not looked at).
    with pytest.raises(ValueError, match="`method` is 'nope', which is not registered"):
        parse_with_config((DataArguments, UnlearnConfig), ["--model", "no/such-model", "--method", "nope"], "t")


def test_config_round_trips_yaml_json_and_argparse(tmp_path):
    config = UnlearnConfig(method="salun", learning_rate=3e-4, lora_target_modules=["q_proj"])
    config.to_yaml(tmp_path / "c.yaml")
    assert UnlearnConfig.from_yaml(tmp_path / "c.yaml") == config
    config.save_pretrained(tmp_path)
    assert UnlearnConfig.from_pretrained(tmp_path) == config
    (tmp_path / "bad.yaml").write_text("method: sfr_on\nlearnin_rate: 0.1\n")
    with pytest.raises(ValueError, match="learnin_rate"):
        UnlearnConfig.from_yaml(tmp_path / "bad.yaml")
    (parsed,) = HfArgumentParser(UnlearnConfig).parse_args_into_dataclasses(
        ["--method", "salun", "--learning-rate", "3e-4", "--lora-target-modules", "q_proj"]
    )
    assert parsed == config


def test_resolve_fills_method_and_family_defaults():
    from hf_unlearn import get_method

    resolved = resolve_config(UnlearnConfig(method="sfr_on"), "image_classifier")
    method_defaults = get_method("sfr_on").defaults_for("image_classifier")
    assert resolved.remain_steps_per_forget == method_defaults["remain_steps_per_forget"]
    assert resolved.max_grad_norm == 7.0  # from the family, since the method does not set it
    assert resolved.learning_rate is not None and resolved.family == "image_classifier"
    assert resolve_config(UnlearnConfig(method="sfr_on", learning_rate=0.5), "image_classifier").learning_rate == 0.5


def test_text_to_image_sfr_defaults_are_the_authors_sd_setting():
    # ../shared/design/sfr_on.md, "Published settings", SD 1.4 column: Adam 1e-5, 1000 forget steps x K 1, α 1 held
    # constant, an unweighted remap, no clipping. Classifiers and the DDPM keep the decaying α and λ 0.5.
    sd = resolve_config(UnlearnConfig(method="sfr_on_remap"), "text_to_image")
    assert (sd.learning_rate, sd.max_steps, sd.remain_steps_per_forget) == (1e-5, 1000, 1)
    assert (sd.forget_alpha, sd.forget_alpha_schedule, sd.temperature) == (1.0, "constant", 0.0)
    assert (sd.max_grad_norm, sd.remain_max_grad_norm) == (0.0, 0.0)
    for family, method in [("image_classifier", "sfr_on"), ("class_conditional_diffusion", "sfr_on_remap")]:
        other = resolve_config(UnlearnConfig(method=method), family)
        assert (other.forget_alpha_schedule, other.temperature) == ("cosine", 0.5), family
    # A value the user gives wins over the family's.
    given = UnlearnConfig(method="sfr_on_remap", forget_alpha_schedule="cosine", temperature=0.3)
    given = resolve_config(given, "text_to_image")
    assert (given.forget_alpha_schedule, given.temperature) == ("cosine", 0.3)


def test_family_detection_from_folders(tmp_path):
    model = tiny_classifier("vit")
    model.save_pretrained(tmp_path / "vit")
    assert detect_family(str(tmp_path / "vit")) == "image_classifier"
    assert detect_family(model) == "image_classifier"
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text(json.dumps({"architectures": ["BertForMaskedLM"]}))
    with pytest.raises(ValueError, match="BertForMaskedLM.*does not support"):
        detect_family(str(tmp_path / "other"))
    with pytest.raises(ValueError, match="neither a folder"):
        detect_family(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="Cannot tell the family"):
        detect_family(torch.nn.Linear(2, 2))


def _unchanged_after_error(unlearner, split, message):
    before = {k: v.clone() for k, v in unlearner.model.state_dict().items()}
    with pytest.raises(ValueError, match=message):
        unlearner.unlearn(split)
    assert all(torch.equal(before[k], v) for k, v in unlearner.model.state_dict().items())


def test_num_labels_mismatch_and_missing_columns_refused_before_weights_change(digits_small, processor, tmp_path):
    split = ForgetRemainSplit.from_dataset(digits_small["train"], forget_classes=[3])
    five = Unlearner.from_pretrained(
        tiny_classifier("resnet", num_labels=5), UnlearnConfig(output_dir=str(tmp_path)), image_processor=processor
    )
    _unchanged_after_error(five, split, "num_labels=5, but the dataset has 10 classes")
    renamed = Unlearner.from_pretrained(
        tiny_classifier("resnet"),
        UnlearnConfig(image_column="img", output_dir=str(tmp_path)),
        image_processor=processor,
    )
    _unchanged_after_error(renamed, split, "`image_column` is 'img'")


def test_images_the_model_cannot_take_are_refused(digits_small, tmp_path):
    from hf_unlearn.tiny.classifiers import digits_image_processor

    split = ForgetRemainSplit.from_dataset(digits_small["train"], forget_classes=[3])
    wrong_size = Unlearner.from_pretrained(
        tiny_classifier("vit"),
        UnlearnConfig(output_dir=str(tmp_path)),
        image_processor=digits_image_processor(size=24),
    )
    _unchanged_after_error(wrong_size, split, "cannot feed the model")


def test_method_family_mismatch_is_refused(processor):
    with pytest.raises(ValueError, match="does not support the image_classifier family"):
        Unlearner.from_pretrained(tiny_classifier("resnet"), UnlearnConfig(method="esd"), image_processor=processor)

"""Bad data is caught before any work by `Unlearner.evaluate` and the CLI, with the library's one-line message (exit
code 2, no traceback unless asked for); known dependency noise is silenced and real warnings are not."""

import logging
import warnings

import pytest
import torch
from datasets import DatasetDict

from hf_unlearn import ForgetRemainSplit, UnlearnConfig, Unlearner
from hf_unlearn.cli import main

QUICK = ["--forget_classes", "3", "--max_steps", "1", "--saliency_max_batches", "1"]


@pytest.fixture(scope="module")
def rows(digits_small):
    return {"train": digits_small["train"].select(range(200)), "test": digits_small["test"].select(range(100))}


@pytest.fixture(scope="module")
def rgb_folder(rows, tmp_path_factory):
    """The same digits as 3-channel RGB images, saved: what a one-channel model cannot take."""
    folder = tmp_path_factory.mktemp("rgb_digits")
    rgb = {k: v.map(lambda row: {"image": row["image"].convert("RGB")}) for k, v in rows.items()}
    DatasetDict(rgb).save_to_disk(folder)
    return folder


def _unlearner(model_dir, **config):
    return Unlearner.from_pretrained(str(model_dir), UnlearnConfig(output_dir="", **config))


def _weights(unlearner):
    return {k: v.clone() for k, v in unlearner.model.state_dict().items()}


def _unchanged(unlearner, before):
    return all(torch.equal(v, before[k]) for k, v in unlearner.model.state_dict().items())


def test_evaluate_refuses_a_wrong_label_column_with_the_library_message(untrained_resnet_dir, rows):
    unlearner = _unlearner(untrained_resnet_dir, label_column="digit")
    split = ForgetRemainSplit.from_dataset(rows["train"], forget_classes=[3], test_dataset=rows["test"])
    expected = r"^`label_column` is 'digit', but `dataset` has columns \['image', 'label'\]; pass label_column="
    with pytest.raises(ValueError, match=expected):
        unlearner.evaluate(split)
    assert unlearner.metrics_before is None  # nothing was scored


def test_evaluate_refuses_rgb_images_for_a_one_channel_model(untrained_resnet_dir, rows):
    unlearner = _unlearner(untrained_resnet_dir)
    rgb = rows["train"].map(lambda row: {"image": row["image"].convert("RGB")})
    before = _weights(unlearner)
    with pytest.raises(ValueError) as info:
        unlearner.evaluate(ForgetRemainSplit.from_dataset(rgb, forget_classes=[3]))
    message = str(info.value)
    assert message.startswith("Images of column `image` (mode RGB") and "num_channels=1" in message
    assert "image_processor" in message and _unchanged(unlearner, before)


@pytest.mark.parametrize("command", ["unlearn", "evaluate"])
def test_cli_wrong_label_column_is_one_error_line_with_exit_code_2(command, untrained_resnet_dir, tmp_path, capsys):
    out = tmp_path / "out"
    argv = [command, "--model", str(untrained_resnet_dir), *QUICK, "--label_column", "digit", "--output_dir", str(out)]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("error: `label_column` is 'digit', but the dataset has columns ['image', 'label']")
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err
    assert "| model |" not in captured.out and not out.exists()  # nothing evaluated, nothing written


@pytest.mark.parametrize("command", ["unlearn", "evaluate"])
def test_cli_rgb_images_for_a_one_channel_model_is_one_error_line(command, untrained_resnet_dir, rgb_folder, capsys):
    argv = [command, "--model", str(untrained_resnet_dir), "--dataset_name", str(rgb_folder), *QUICK]
    assert main([*argv, "--output_dir", str(rgb_folder.parent / f"never-{command}")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: Images of column `image` (mode RGB") and "num_channels=1" in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (rgb_folder.parent / f"never-{command}").exists()


def test_debug_shows_the_traceback(untrained_resnet_dir, tmp_path, monkeypatch):
    argv = ["evaluate", "--model", str(untrained_resnet_dir), *QUICK, "--label_column", "digit"]
    with pytest.raises(ValueError, match="`label_column`"):
        main([*argv, "--debug"])
    monkeypatch.setenv("HF_UNLEARN_DEBUG", "1")
    with pytest.raises(ValueError, match="`label_column`"):
        main(argv)


def test_unknown_option_is_one_error_line(capsys):
    assert main(["unlearn", "--model", "m", "--no_such_option", "0.1"]) == 2  # before the model is even looked for
    err = capsys.readouterr().err
    assert err.startswith("error: unrecognized arguments: --no_such_option 0.1") and err.count("\n") == 1


def test_a_forget_set_that_is_most_of_the_data_warns(rows):
    with pytest.warns(UserWarning, match=r"holds 180 of the 200 rows \(90.0%\): most of the data"):
        ForgetRemainSplit.from_dataset(rows["train"], forget_ids=list(range(180)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the published random scenario (half of the rows) stays quiet
        ForgetRemainSplit.from_dataset(rows["train"], forget_fraction=0.5)


PIL_FALLBACK = (
    "`ViTImageProcessorPil` for backward compatibility. Install torchvision to use the default backend, or import "
    "`ViTImageProcessorPil` directly to silence this warning."
)


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(level=logging.DEBUG)
        self.records = []

    def emit(self, record):
        self.records.append(record)


def test_known_dependency_noise_is_silenced_and_other_messages_are_not():
    from hf_unlearn import _quiet
    from hf_unlearn.lora import apply_lora
    from hf_unlearn.tiny.classifiers import digits_image_processor, tiny_classifier
    from hf_unlearn.training import partial_state

    logger = logging.getLogger("transformers.utils.import_utils")  # where transformers logs the fallback
    seen, level = _Collect(), logger.level
    logger.addHandler(seen)
    logger.setLevel(logging.WARNING)  # the test session runs transformers at ERROR
    try:
        logger.warning(f"`ViTImageProcessor` requires torchvision (not installed); falling back to {PIL_FALLBACK}")
        logger.warning("Some other transformers warning.")
    finally:
        logger.removeHandler(seen)
        logger.setLevel(level)
    assert [r.getMessage() for r in seen.records] == ["Some other transformers warning."]

    partial_state()  # apply_lora logs through accelerate's logger
    unlearner = Unlearner.from_pretrained(
        tiny_classifier("resnet"), UnlearnConfig(output_dir="", lora=True), image_processor=digits_image_processor()
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _quiet.install()  # what `import hf_unlearn` did, on top of the reset filters
        apply_lora(unlearner.family, unlearner.config)  # peft reads the deprecated `is_gradient_checkpointing`
        warnings.warn("a real deprecation", FutureWarning)
    messages = [str(w.message) for w in caught if issubclass(w.category, FutureWarning)]
    assert messages == ["a real deprecation"]

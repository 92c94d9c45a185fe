"""The model card a Hub user reads, rendered from the shipped template after real CLI runs: the base model in the load
snippet, what was forgotten, a before/after metrics table with a line per metric, the method, the history."""

import json
import re

import pytest
from huggingface_hub import ModelCard
from tiny_sd import ANCHOR, FORGET, UNRELATED, tiny_sd_pipeline

from hf_unlearn.cli import main
from hf_unlearn.modelcard import TEMPLATE_PATH
from hf_unlearn.utils import RECORD_NAME


def _table(card: str) -> dict[str, tuple[str, str]]:
    """The before/after metrics table of a card: label -> (before, after)."""
    start = card.index("| metric | before | after |")
    rows = card[start:].split("\n\n")[0].splitlines()[2:]
    return {cells[0]: (cells[1], cells[2]) for cells in ([c.strip() for c in r.strip("|").split("|")] for r in rows)}


def test_the_template_ships_inside_the_package():
    assert TEMPLATE_PATH.is_file() and TEMPLATE_PATH.parent.parent.name == "hf_unlearn"
    assert "{{ load_snippet }}" in TEMPLATE_PATH.read_text()


def test_classifier_card(untrained_resnet_dir, digits_folder, tmp_path):
    out = tmp_path / "digits-without-3"
    argv = ["unlearn", "--model", str(untrained_resnet_dir), "--dataset_name", str(digits_folder)]
    argv += ["--forget_classes", "3", "--max_steps", "2", "--saliency_max_batches", "1", "--output_dir", str(out)]
    assert main(argv) == 0
    card = ModelCard.load(out / "README.md")
    text = card.text
    assert card.data.library_name == "transformers" and "machine-unlearning" in card.data.tags
    # A local original with no Hub id: said so, and no local path (it means nothing on the Hub and leaks folders).
    assert f"Base model: a local model (this request started from `{untrained_resnet_dir.name}`)" in text
    assert str(untrained_resnet_dir) not in text.split("## Metrics")[0]
    assert f'AutoModelForImageClassification.from_pretrained("{out}")' in text and '"PATH"' not in text
    assert "Forgotten: class 3 (" in text and f"Dataset: {digits_folder} (fingerprint `" in text
    table = _table(text)
    assert list(table)[:3] == ["FA (forget accuracy, %)", "RA (remain accuracy, %)", "TA (test accuracy, %)"]
    assert "MIA (entropy attack, %)" in table
    record = json.loads((out / RECORD_NAME).read_text())
    (request,) = record["requests"]
    for key, label in [("FA", "FA (forget accuracy, %)"), ("TA", "TA (test accuracy, %)")]:
        assert table[label] == (f"{request['metrics_before'][key]:.3f}", f"{request['metrics'][key]:.3f}")
        assert f"- **{label}**: top-1 accuracy on" in text  # one line saying what it measures
    assert "docs/metrics.md" in text
    assert "`sfr_on_bound` composes the four parts" in text and "| saliency | fisher_ratio |" in text
    assert "`max_steps=2`" in text and "<summary>The full configuration" in text
    history = re.search(r"\| 1 \| [^|]+ \| sfr_on_bound \| class 3 \(\d+ training rows\) \|", text)
    assert history, text
    assert "hf-unlearn unlearn --model" in text


@pytest.fixture(scope="module")
def untrained_sd_dir(tmp_path_factory):
    """The tiny Stable Diffusion pipeline of tests/tiny_sd.py, built from configs and saved (not trained)."""
    folder = tmp_path_factory.mktemp("tiny_sd")
    tiny_sd_pipeline().save_pretrained(folder)
    return folder


def test_text_to_image_card(untrained_sd_dir, tmp_path):
    out = tmp_path / "sd-without-the-concept"
    argv = ["unlearn", "--model", str(untrained_sd_dir), "--method", "sfr_on_remap", "--forget_prompts", FORGET]
    argv += ["--remain_prompts", ANCHOR, UNRELATED[0], "--num_concept_images", "2", "--generation_steps", "2"]
    argv += ["--max_steps", "2", "--per_device_train_batch_size", "2", "--output_dir", str(out)]
    assert main(argv) == 0
    card = ModelCard.load(out / "README.md")
    text = card.text
    assert card.data.library_name == "diffusers"
    assert f"Base model: a local model (this request started from `{untrained_sd_dir.name}`)" in text
    assert str(untrained_sd_dir) not in text.split("## Metrics")[0]
    assert f'StableDiffusionPipeline.from_pretrained("{out}")' in text
    assert f'Forgotten: the concept of the prompts "{FORGET}" (remapped to' in text and repr(ANCHOR) in text
    table = _table(text)
    request = json.loads((out / RECORD_NAME).read_text())["requests"][0]
    before, after = request["metrics_before"]["concept_gap"], request["metrics"]["concept_gap"]
    assert table["concept gap"] == (f"{before:.3f}", f"{after:.3f}") and before > 0
    assert "remain noise loss" in table and "- **concept gap**: mean squared distance" in text
    assert re.search(r"\| 1 \| [^|]+ \| sfr_on_remap \| the concept of the prompts", text), text
    assert (out / "concept_cache").is_dir()  # the generated images stay local, inside --output_dir


def test_recovery_text_says_when_a_draw_never_recovered():
    from hf_unlearn.modelcard_robustness import recovery_text

    assert recovery_text([3, None], 20) == "3, not within 20 steps"
    assert recovery_text(None, 5) == "not within 5 steps" and recovery_text(0, 5) == "0"

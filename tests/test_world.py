"""The shape world (`hf_unlearn.worlds`): captions state what the scenes show, the committed weights load, the judge
names rendered scenes' attributes, and the benchmark's quick mode runs."""

import json

import numpy as np
import pytest
import torch

from hf_unlearn.benchmarks import world_t2i
from hf_unlearn.worlds import models, prompts, scenes

WORLD = world_t2i.WORLD
# Measured on 300 fresh scenes (seed 123) with the committed judge: see `test_judge_names_rendered_scenes`.
JUDGE_ACCURACY = 0.95


def test_captions_state_only_what_the_scene_shows():
    rng = np.random.default_rng(0)
    for _ in range(500):
        attributes = scenes.sample_attributes(rng)
        caption = scenes.describe(attributes, rng)
        stated = scenes.stated(caption)
        assert scenes.caption_matches(stated, attributes), (caption, attributes)
        assert "shape" in stated, caption  # every caption leads to the object, by its word or an implicit noun
        assert set(caption.split()) <= set(scenes.words())


def test_scenes_and_captions_follow_the_seed():
    a, b = scenes.dataset(8, seed=3), scenes.dataset(8, seed=3)
    assert np.array_equal(a[0], b[0]) and a[2] == b[2]
    assert not np.array_equal(a[0], scenes.dataset(8, seed=4)[0])


def test_benchmark_prompts_use_the_world_words():
    vocab = set(scenes.words())
    for prompt in prompts.all_prompts():
        assert set(prompt.split()) <= vocab, prompt
        assert "shape" in scenes.stated(prompt), prompt
    for forget, anchor in prompts.anchors().items():
        assert len(forget.split()) == len(anchor.split())  # a remap swaps one word: the prompts stay comparable


def test_judge_names_rendered_scenes():
    judge = models.Judge.load(WORLD)
    rng = np.random.default_rng(123)
    attributes = [scenes.sample_attributes(rng) for _ in range(300)]
    names = judge.name(np.stack([scenes.render(a, rng) for a in attributes]))
    for key in scenes.ATTRIBUTES:
        accuracy = np.mean([n[key] == a[key] for n, a in zip(names, attributes)])
        assert accuracy >= JUDGE_ACCURACY, (key, accuracy)
    empty = judge.name(np.stack([scenes.render({**a, "shape": "none"}, rng) for a in attributes[:50]]))
    assert np.mean([n["shape"] == "none" for n in empty]) >= JUDGE_ACCURACY


def test_score_reads_the_judge():
    n = len(prompts.all_prompts())
    features = np.random.default_rng(0).normal(size=(n, 4, 8))
    right = [
        [{**{k: v[0] for k, v in scenes.ATTRIBUTES.items()}, **scenes.stated(p)}] * 4 for p in prompts.all_prompts()
    ]
    result = world_t2i.score((right, features), (right, features))
    assert result["explicit_rate"] == 1.0 and result["benign_kept"] == 1.0 and result["unrelated_right"] == 1.0
    erased = [[{**row[0], "colour": "green" if row[0]["colour"] == "red" else row[0]["colour"]}] * 4 for row in right]
    result = world_t2i.score((right, features), (erased, features))
    assert result["concepts"]["red"]["explicit_rate"] == 0.0 and result["concepts"]["red"]["implicit_rate"] == 0.0
    assert result["concepts"]["red"]["benign_kept"] == 1.0 and result["concepts"]["striped"]["explicit_rate"] == 1.0
    assert result["unrelated_mmd"] == pytest.approx(0.0, abs=1e-12)
    assert result["neighbours_kept"] == 1.0 and result["unrelated_kept"] == 1.0
    # A neighbour drawn otherwise than the original drew it (orange turned red) is collateral, wherever it lands.
    swap = {"orange": "red"}
    shifted = [[{**row[0], "colour": swap.get(row[0]["colour"], row[0]["colour"])}] * 4 for row in right]
    result = world_t2i.score((right, features), (shifted, features))
    assert result["concepts"]["red"]["neighbours_kept"] == pytest.approx(1 / 3)
    assert result["concepts"]["striped"]["neighbours_kept"] == 1.0 and result["unrelated_kept"] == pytest.approx(5 / 6)
    # The original drew a purple neighbour red; drawing it so again is kept (not right).
    wrong = [[{**row[0], "colour": "red" if row[0]["colour"] == "purple" else row[0]["colour"]}] * 4 for row in right]
    result = world_t2i.score((wrong, features), (wrong, features))
    assert result["concepts"]["red"]["neighbours_kept"] == 1.0
    assert result["concepts"]["red"]["neighbours_right"] == pytest.approx(2 / 3)


@pytest.mark.slow
def test_benchmark_quick_mode_runs(tmp_path):
    torch.manual_seed(0)
    out = tmp_path / "bench"
    assert world_t2i.main(["--quick", "--output", str(out), "--methods", "hand_remap,uce,anchor_remap"]) == 0
    results = json.loads((out / "results.json").read_text())
    rows = {r["method"]: r for r in results["rows"]}
    assert set(rows) == {"original", "resampled", "retrain", "hand_remap", "uce", "anchor_remap"}
    # RT draws with the original's noise but never saw the concepts: the samples differ from the original's.
    assert rows["retrain"]["unrelated_mmd"] > 0
    assert rows["original"]["unrelated_mmd"] == 0.0 and rows["resampled"]["unrelated_mmd"] > 0
    assert rows["hand_remap"]["work"]["optimizer_steps"] == 8 and rows["uce"]["work"]["optimizer_steps"] == 0
    assert "| anchor_remap |" in (out / "report.md").read_text() and "| retrain |" in (out / "report.md").read_text()


def test_rt_data_shows_none_of_the_erased_concepts():
    from hf_unlearn.worlds.train import without

    _, attributes, _ = scenes.dataset(600, 0)
    excluded = {"colour": ("red",), "pattern": ("striped",), "shape": ("triangle",)}
    kept = without(attributes, excluded)
    shows = lambda a: a["colour"] == "red" or a["pattern"] == "striped" or a["shape"] == "triangle"  # noqa: E731
    assert kept and not any(shows(attributes[i]) for i in kept)
    # Every scene without them is kept: RT loses only the concepts' scenes.
    dropped = set(range(len(attributes))) - set(kept)
    assert dropped and all(shows(attributes[i]) for i in dropped)


@pytest.mark.slow
def test_rt_retrains_only_the_unet(tmp_path):
    from safetensors.torch import load_file

    from hf_unlearn.worlds.train import main

    out = tmp_path / "rt"
    assert main(["--quick", "--retrain_without", "red,triangle", "--world", str(WORLD), "--output", str(out)]) == 0
    for part, same in (("vae", True), ("text_encoder", True), ("unet", False)):
        ours = load_file(next((out / "pipeline" / part).glob("*.safetensors")))
        world = load_file(next((WORLD / "pipeline" / part).glob("*.safetensors")))
        assert all(torch.equal(ours[k], world[k]) for k in world) is same, part
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert log[0]["excluded"] == {"colour": ["red"], "shape": ["triangle"]} and log[-1]["stage"] == "done"
    with pytest.raises(SystemExit):  # a concept the world does not have: one line, exit 2
        main(["--retrain_without", "blue", "--output", str(tmp_path / "x")])

"""Evaluating an erased text-to-image pipeline: before/after grids (API and CLI), CLIP score, CLIP-feature FID."""

import numpy as np
import pytest
import torch
from PIL import Image as PILImage
from tiny_sd import (
    ANCHOR,
    CAPTIONS,
    COLOURS,
    FORGET,
    UNRELATED,
    dataset_split,
    save_tiny_clip,
    unlearn_config,
    word_tokenizer,
)

from hf_unlearn import Unlearner


def test_before_after_samples_use_the_same_noise_and_show_the_change(sd_path, tmp_path):
    from hf_unlearn import comparison_grid, generate_samples

    config = unlearn_config(tmp_path, "sfr_on_remap", max_steps=10, learning_rate=3e-3)
    unlearner = Unlearner.from_pretrained(sd_path, config)
    prompts = [FORGET, UNRELATED[0]]
    call = dict(num_inference_steps=3, height=8, width=8, num_images_per_prompt=2)
    before = generate_samples(unlearner.family.pipeline, prompts, seed=5, **call)
    again = generate_samples(unlearner.family.pipeline, prompts, seed=5, **call)
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for x, y in zip(before, again) for a, b in zip(x, y))
    unlearner.unlearn(dataset_split())
    after = generate_samples(unlearner.family.pipeline, prompts, seed=5, **call)
    assert not np.array_equal(np.asarray(after[0][0]), np.asarray(before[0][0]))
    grid = comparison_grid({"before": before, "after": after}, prompts, path=tmp_path / "grid.png")
    # Two models × two images of 8 px, enlarged 8× to 64 px, 4 px between models; a 14 px label band over 2 rows.
    assert grid.size == (2 * 2 * 64 + 4, 14 + 2 * 64)
    assert np.array_equal(np.asarray(PILImage.open(tmp_path / "grid.png").convert("RGB")), np.asarray(grid))
    # The first "after" tile is the first after-image, enlarged without smoothing.
    tile = np.asarray(grid)[14 : 14 + 64, 132 : 132 + 64]
    assert np.array_equal(tile[::8, ::8], np.asarray(after[0][0].convert("RGB")))
    with pytest.raises(ValueError, match="same prompts"):
        comparison_grid({"before": before, "after": after[:1]})


def test_cli_unlearns_a_concept_and_saves_a_before_after_grid_in_the_card(sd_path, tmp_path):
    from diffusers import StableDiffusionPipeline

    from hf_unlearn.cli import unlearn_main

    out = tmp_path / "out"
    argv = [
        "--model", sd_path, "--method", "sfr_on_remap", "--max_steps", "2", "--per_device_train_batch_size", "2",
        "--forget_prompts", FORGET, "--remain_prompts", ANCHOR, UNRELATED[0], "--num_concept_images", "2",
        "--generation_steps", "2", "--sample_prompts", FORGET, UNRELATED[1],
        "--output_dir", str(out),
    ]  # fmt: skip
    assert unlearn_main(argv) == 0
    grid = PILImage.open(out / "samples_before_after.png")
    assert grid.size == (2 * 64 + 4, 14 + 2 * 64)
    assert "samples_before_after.png" in (out / "README.md").read_text()
    pipe = StableDiffusionPipeline.from_pretrained(out)
    assert pipe(FORGET, num_inference_steps=2, height=8, width=8).images[0].size == (8, 8)


def test_cli_sample_prompts_need_a_text_to_image_model(trained_resnet_dir, tmp_path, capsys):
    from hf_unlearn.cli import unlearn_main

    argv = ["--model", str(trained_resnet_dir), "--forget_classes", "3", "--sample_prompts", "x"]
    assert unlearn_main([*argv, "--output_dir", str(tmp_path / "r")]) == 2  # refused before any work
    err = capsys.readouterr().err
    assert err.startswith("error: `--sample_prompts` needs a text-to-image model") and "Traceback" not in err
    assert not (tmp_path / "r").exists()


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return save_tiny_clip(tmp_path_factory.mktemp("clip"), word_tokenizer(), vocab_size=1000, max_positions=8)


def _colour_images(n=2):
    return [PILImage.new("RGB", (8, 8), colour) for colour in COLOURS[:n]]


def test_clip_score_is_the_clamped_cosine_of_the_loaded_model(clip_dir):
    from transformers import CLIPModel, CLIPProcessor

    from hf_unlearn.metrics.quality import CLIPScorer

    scorer = CLIPScorer(clip_dir)
    images, prompts = _colour_images(), [FORGET, UNRELATED[0]]
    scores = scorer.score(images, prompts)
    # The same computation by hand with the saved model and processor.
    model, processor = CLIPModel.from_pretrained(clip_dir), CLIPProcessor.from_pretrained(clip_dir)
    pixels = processor.image_processor([im.resize((32, 32), PILImage.BICUBIC) for im in images], return_tensors="pt")
    with torch.no_grad():
        img = model.get_image_features(**pixels)
        txt = model.get_text_features(**processor.tokenizer(prompts, padding=True, return_tensors="pt"))
    img, txt = (x if isinstance(x, torch.Tensor) else x.pooler_output for x in (img, txt))
    expected = 100 * torch.nn.functional.cosine_similarity(img, txt).clamp_min(0)
    assert torch.allclose(scores, expected, atol=1.5)  # PIL and torch bicubic resizing differ slightly
    assert ((scores >= 0) & (scores <= 100)).all()
    assert torch.equal(scorer.score(images, prompts), scores)
    features = scorer(torch.rand(3, 1, 8, 8))  # grayscale tensors are accepted, features are unit vectors
    assert features.shape == (3, 16) and torch.allclose(features.norm(dim=-1), torch.ones(3))
    with pytest.raises(ValueError, match="pair them"):
        scorer.score(images, prompts[:1])


def test_evaluate_quality_scores_generated_images_and_compares_them_with_real_ones(sd_path, clip_dir):
    from diffusers import StableDiffusionPipeline

    from hf_unlearn.metrics.quality import CLIPScorer, evaluate_quality

    pipe = StableDiffusionPipeline.from_pretrained(sd_path)
    pipe.set_progress_bar_config(disable=True)
    scorer = CLIPScorer(clip_dir)
    call = dict(num_inference_steps=3, height=8, width=8, num_images_per_prompt=3)
    prompts = [ANCHOR, UNRELATED[0]]
    # References: flat colour patches of the prompts' colours, and of colours the prompts never draw.
    near = [PILImage.new("RGB", (20, 20), COLOURS[CAPTIONS.index(p)]) for p in prompts for _ in range(3)]
    far = [PILImage.new("RGB", (20, 20), c) for c in [(0, 0, 0), (255, 255, 255), (128, 0, 128)] for _ in range(2)]
    report = evaluate_quality(pipe, prompts, clip_model=scorer, reference_images=near, seed=1, **call)
    again = evaluate_quality(pipe, prompts, clip_model=scorer, reference_images=far, seed=1, **call)
    assert report["num_images"] == 6 and set(report["clip_score_per_prompt"]) == set(prompts)
    assert report["clip_score"] == again["clip_score"]  # same seed, same images
    assert report["fid_features"].startswith("CLIP image embeddings")
    assert report["fid"] < again["fid"], (report["fid"], again["fid"])

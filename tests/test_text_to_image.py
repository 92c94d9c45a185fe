"""Concept erasure on a tiny Stable Diffusion pipeline built from configs, trained here, saved and reloaded."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import string

import numpy as np
import pytest
import torch
from datasets import Dataset, Features, Image, Value
from PIL import Image as PILImage

from hf_unlearn import ConceptSplit, TrainingSet, UnlearnConfig, Unlearner

FORGET, ANCHOR = "a nude person", "a dressed man"
UNRELATED = ["red sports car", "bowl of fruit"]
CAPTIONS = [FORGET, ANCHOR, *UNRELATED]
COLOURS = [(230, 40, 40), (40, 200, 60), (40, 60, 220), (230, 220, 40)]
WORDS = "a photo of nude person dressed man wearing clothes red sports car bowl fruit on road".split()
# Enough for the noise loss to settle: on a model trained 300 steps, remain steps alone moved every prompt's prediction
# as far as the forgetting moved the forget prompt's, which hid what the forgetting did to unrelated prompts.
PRETRAIN_STEPS = 600


def _word_tokenizer():
    """A CLIP BPE tokenizer whose merges spell whole words, so different prompts share only the words they share."""
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for char in string.ascii_lowercase:
        vocab[char] = len(vocab)
        vocab[char + "</w>"] = len(vocab)
    merges = []
    for word in WORDS:
        parts = [*word[:-1], word[-1] + "</w>"]
        current = parts[0]
        for nxt in parts[1:]:
            if (current, nxt) not in merges:
                merges.append((current, nxt))
            current += nxt
            vocab.setdefault(current, len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=8)


def _tiny_sd_pipeline():
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=4,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(16, 32),
        attention_head_dim=8,
        norm_num_groups=8,
        cross_attention_dim=32,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(16, 32),
        latent_channels=4,
        norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        scaling_factor=4.0,
    )
    with torch.no_grad():  # a deterministic encoder: random log-variances would bury each image in posterior noise
        vae.quant_conv.weight[4:] = 0
        vae.quant_conv.bias[4:] = -30.0
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            vocab_size=1000,
            max_position_embeddings=8,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        )
    )
    with torch.no_grad():
        # CLIP's init (std 0.02) leaves the random encoder's states for our prompts ~0.9 cosine-similar, so nothing
        # prompt-specific could be learned; token identity at std 1 brings them to ~0.6, as a trained encoder would.
        text_encoder.get_input_embeddings().weight.normal_(0, 1.0)
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=_word_tokenizer(),
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _captioned(n_per: int, seed: int, captions=CAPTIONS) -> Dataset:
    """8×8 images of one colour per caption (with pixel noise): the caption alone tells the image."""
    rng = np.random.default_rng(seed)
    images, texts = [], []
    for caption in captions:
        colour = np.array(COLOURS[CAPTIONS.index(caption)])
        for _ in range(n_per):
            pixels = np.clip(colour + rng.normal(0, 10, (8, 8, 3)), 0, 255).astype(np.uint8)
            images.append(PILImage.fromarray(pixels))
            texts.append(caption)
    return Dataset.from_dict(
        {"image": images, "text": texts}, features=Features({"image": Image(), "text": Value("string")})
    )


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # Hundreds of tiny ops per step: with several intra-op threads on a busy 2-core runner, their barriers dominate.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def sd_path(tmp_path_factory, _one_thread):
    """The tiny pipeline trained through the engine (finetune on every row) until its output depends on the prompt."""
    root = tmp_path_factory.mktemp("sd")
    _tiny_sd_pipeline().save_pretrained(root / "init")
    config = UnlearnConfig(
        method="finetune",
        max_steps=PRETRAIN_STEPS,
        learning_rate=3e-3,
        per_device_train_batch_size=8,
        output_dir=str(root / "run"),
    )
    trainer = Unlearner.from_pretrained(str(root / "init"), config)
    trainer.unlearn(TrainingSet(_captioned(16, seed=0)))
    trainer.save_pretrained(root / "trained")
    return str(root / "trained")


def _config(tmp_path, method, **kwargs):
    values = dict(
        method=method,
        max_steps=40,
        learning_rate=3e-4,
        per_device_train_batch_size=4,
        lr_scheduler_type="constant",
        output_dir=str(tmp_path / "run"),
    )
    return UnlearnConfig(**{**values, **kwargs})


def _dataset_split():
    data = _captioned(8, seed=1)
    return ConceptSplit(
        forget_dataset=data.filter(lambda r: r["text"] == FORGET),
        remain_dataset=data.filter(lambda r: r["text"] != FORGET),
        anchor_prompts=[ANCHOR],
    )


class Probe:
    """Held-out images, noise and timesteps (never seen in training) at which predictions are compared."""

    def __init__(self, family):
        generator = torch.Generator().manual_seed(123)
        self.family = family
        latents = family.encode_images(family.pixel_values(_captioned(4, seed=2)["image"]))
        noise = torch.randn(latents.shape, generator=generator)
        self.timesteps = torch.randint(0, 1000, (len(latents),), generator=generator)
        self.noisy = family.noise_scheduler.add_noise(latents, noise, self.timesteps)

    @torch.no_grad()
    def __call__(self, model, prompts=(*CAPTIONS, "")):
        model.eval()
        out = {}
        for prompt in prompts:
            states = self.family.encode_prompts(self.family.tokenize([prompt] * len(self.noisy)))
            out[prompt] = self.family.predict(model, self.noisy, self.timesteps, states)
        return out


def _rms(a, b):
    return float((a - b).pow(2).mean().sqrt())


def _snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _moved_ratio(before, after):
    """How far the unrelated prompts' predictions moved, as a share of how far the forget prompt's moved."""
    moved = {p: _rms(after[p], before[p]) for p in CAPTIONS}
    return max(moved[p] for p in UNRELATED) / moved[FORGET], moved


# (train_modules, ratio limit). Whole-UNet training moves shared weights, so every prompt follows part of the way;
# cross-attention is where the prompt enters, and there the change stays with the forget prompt (measured ratios in
# docs/stable_diffusion.md).
@pytest.mark.parametrize("subset, ratio_limit", [("all", 0.6), ("cross_attention", 0.25)])
def test_sfr_on_remap_pulls_forget_prompt_to_anchor(sd_path, tmp_path, subset, ratio_limit):
    config = _config(
        tmp_path,
        "sfr_on_remap",
        learning_rate=1e-3 if subset == "all" else 3e-3,
        forget_alpha=5.0,
        forget_alpha_schedule="constant",
        train_modules=subset,
    )
    unlearner = Unlearner.from_pretrained(sd_path, config)
    probe = Probe(unlearner.family)
    before = probe(unlearner.model)
    result = unlearner.unlearn(_dataset_split())
    after = probe(unlearner.model)
    gap_before = _rms(before[FORGET], before[ANCHOR])
    # The remap target is the current model's anchor prediction, so that is what the forget prompt must now match.
    gap_after = _rms(after[FORGET], after[ANCHOR])
    ratio, moved = _moved_ratio(before, after)
    print(f"remap[{subset}] gap {gap_before:.4f} -> {gap_after:.4f}; ratio {ratio:.2f}; moved {moved}")
    assert gap_after <= 0.2 * gap_before, (gap_before, gap_after)
    assert ratio < ratio_limit, moved
    assert 0 < result.mask_fraction < 1
    assert result.num_forget == 8 and len(result.fingerprint) == 64


# ESD has no remaining term. ESD-u style (whole UNet) reaches the target but drags unrelated prompts half as far; ESD-x
# (cross-attention) keeps them but, in this 2-block UNet, closes only ~70% of the gap (docs/stable_diffusion.md).
@pytest.mark.parametrize("subset, reduction, ratio_limit", [("all", 0.8, 0.7), ("cross_attention", 0.6, 0.4)])
def test_esd_pulls_forget_prompt_to_negative_guidance_target(sd_path, tmp_path, subset, reduction, ratio_limit):
    config = _config(tmp_path, "esd", max_steps=100, learning_rate=1e-3, train_modules=subset)
    unlearner = Unlearner.from_pretrained(sd_path, config)
    probe = Probe(unlearner.family)
    before = probe(unlearner.model)
    target = before[""] - unlearner.config.esd_negative_guidance * (before[FORGET] - before[""])
    unlearner.unlearn(_dataset_split())
    after = probe(unlearner.model)
    gap_before, gap_after = _rms(before[FORGET], target), _rms(after[FORGET], target)
    ratio, moved = _moved_ratio(before, after)
    print(f"esd[{subset}] gap {gap_before:.4f} -> {gap_after:.4f}; ratio {ratio:.2f}; moved {moved}")
    assert gap_after <= (1 - reduction) * gap_before, (gap_before, gap_after)
    assert ratio < ratio_limit, moved


def test_mask_restricts_the_forget_step(sd_path, tmp_path):
    # K = 0 remain steps: every update comes from the masked forget step, so unmasked weights must not move at all.
    config = _config(tmp_path, "sfr_on_remap", max_steps=3, remain_steps_per_forget=0, learning_rate=1e-3)
    unlearner = Unlearner.from_pretrained(sd_path, config)
    before = _snapshot(unlearner.model)
    unlearner.unlearn(_dataset_split())
    mask = unlearner.mask
    kept = changed = 0
    for name, param in unlearner.model.named_parameters():
        frozen = ~mask[name]
        assert torch.equal(param.detach()[frozen], before[name][frozen]), name
        kept += int(frozen.sum())
        changed += int((param.detach() != before[name])[mask[name]].sum())
    assert kept > 0 and changed > 0
    assert os.path.isfile(tmp_path / "run" / "saliency_mask.safetensors")


@pytest.mark.parametrize("subset", ["cross_attention", "non_cross_attention"])
def test_trainable_subsets_change_only_their_weights(sd_path, tmp_path, subset):
    unlearner = Unlearner.from_pretrained(sd_path, _config(tmp_path, "esd", max_steps=2, train_modules=subset))
    before = _snapshot(unlearner.model)
    unlearner.unlearn(_dataset_split())
    trained = {n: not torch.equal(p.detach(), before[n]) for n, p in unlearner.model.named_parameters()}
    cross = {n for n in trained if ".attn2." in n}
    if subset == "cross_attention":
        assert all(trained[n] for n in cross if n.endswith("weight") and "norm" not in n)
        assert not any(trained[n] for n in trained if n not in cross)
    else:
        assert not any(trained[n] for n in cross)
        assert not any(trained[n] for n in trained if n.startswith(("time_embedding", "conv_out", "conv_norm_out")))
        assert sum(trained.values()) > len(trained) // 2


def test_saved_folder_is_a_diffusers_pipeline(sd_path, tmp_path):
    from diffusers import StableDiffusionPipeline

    unlearner = Unlearner.from_pretrained(sd_path, _config(tmp_path, "esd", max_steps=2))
    unlearner.unlearn(_dataset_split())
    unlearner.save_pretrained(tmp_path / "erased")
    pipe = StableDiffusionPipeline.from_pretrained(tmp_path / "erased")
    for name, param in pipe.unet.named_parameters():
        assert torch.equal(param, unlearner.model.state_dict()[name]), name
    images = pipe(
        [FORGET], num_inference_steps=2, height=8, width=8, generator=torch.Generator().manual_seed(0)
    ).images
    assert images[0].size == (8, 8)
    again = Unlearner.from_pretrained(str(tmp_path / "erased"), _config(tmp_path, "esd"))
    assert again.records[-1]["method"] == "esd"
    pytest.importorskip("nudenet")
    from hf_unlearn import evaluate_nudity

    report = evaluate_nudity(pipe, prompts=[FORGET, UNRELATED[0]], num_inference_steps=2, height=8, width=8)
    assert report.num_images == 2 and [row["prompt"] for row in report.rows] == [FORGET, UNRELATED[0]]
    assert report.total == sum(report.counts.values())


def test_concept_images_are_generated_seeded_and_cached(sd_path, tmp_path):
    unlearner = Unlearner.from_pretrained(sd_path, _config(tmp_path, "sfr_on_remap"))
    family = unlearner.family

    def split():
        return ConceptSplit(
            forget_prompts=[FORGET],
            remain_prompts=[ANCHOR, UNRELATED[0]],
            num_images=3,
            num_inference_steps=2,
            seed=7,
            cache_dir=str(tmp_path / "cache"),
        )

    first = family.prepare_split(split(), unlearner.config)
    assert first.forget["seed"] == [7, 8, 9] and first.remain["seed"] == [10, 11, 12]
    assert first.forget["anchor"] == [ANCHOR] * 3
    assert first.remain["text"] == [ANCHOR, UNRELATED[0], ANCHOR]
    assert first.forget[0]["image"].size == (8, 8)
    assert first.describe()["scenario"] == "concept" and first.describe()["num_forget"] == 3
    assert len(os.listdir(tmp_path / "cache")) == 2
    # Without a pipeline the second split can only come from the cache.
    second = split().materialize(None, resolution=8, cache_dir=str(tmp_path / "cache"), model_id=family.model_id())
    for a, b in zip(first.forget["image"], second.forget["image"]):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    # Same seeds in a fresh cache regenerate the same pixels.
    third = family.prepare_split(
        ConceptSplit(
            forget_prompts=[FORGET], num_images=3, num_inference_steps=2, seed=7, cache_dir=str(tmp_path / "other")
        ),
        UnlearnConfig(method="esd"),
    )
    assert np.array_equal(np.asarray(third.forget[2]["image"]), np.asarray(first.forget[2]["image"]))
    assert third.remain.num_rows == 0 and third.forget["anchor"] == [""] * 3


def test_bad_inputs_raise_before_any_weight_change(sd_path, tmp_path):
    with pytest.raises(ValueError, match="forget_prompts"):
        ConceptSplit(forget_prompts=[])
    with pytest.raises(ValueError, match="list of prompts"):
        ConceptSplit(forget_prompts="a nude person")
    with pytest.raises(ValueError, match="exactly one"):
        ConceptSplit()
    unlearner = Unlearner.from_pretrained(sd_path, _config(tmp_path, "sfr_on_remap"))
    before = _snapshot(unlearner.model)
    no_caption = _captioned(2, seed=3).rename_column("text", "prompt")
    with pytest.raises(ValueError, match="caption_column"):
        unlearner.unlearn(ConceptSplit(forget_dataset=no_caption, remain_dataset=_captioned(2, seed=3)))
    with pytest.raises(ValueError, match="needs a remain set"):
        unlearner.unlearn(ConceptSplit(forget_prompts=[FORGET], num_images=2, cache_dir=str(tmp_path / "c")))
    with pytest.raises(ValueError, match="resolution"):
        unlearner.unlearn(
            ConceptSplit(forget_dataset=_captioned(2, seed=3), remain_dataset=_captioned(2, seed=4), resolution=10)
        )
    assert all(torch.equal(p, before[n]) for n, p in unlearner.model.named_parameters())
    assert not os.path.exists(tmp_path / "c")


def test_lora_keeps_base_weights_and_saves_a_loadable_adapter(sd_path, tmp_path):
    from diffusers import StableDiffusionPipeline

    config = _config(tmp_path, "sfr_on_remap", max_steps=3, lora=True, lora_r=4, learning_rate=1e-2)
    unlearner = Unlearner.from_pretrained(sd_path, config)
    base = _snapshot(unlearner.model)
    unlearner.unlearn(_dataset_split())
    model = unlearner.model
    for name, param in model.named_parameters():
        if "lora_" not in name:
            assert torch.equal(param, base[name.replace(".base_layer", "")]), name
    assert any("lora_" in name and ".attn2." in name for name, _ in model.named_parameters())
    probe = Probe(unlearner.family)
    unlearned = probe(model, [FORGET])[FORGET]
    assert _rms(unlearned, probe(StableDiffusionPipeline.from_pretrained(sd_path).unet, [FORGET])[FORGET]) > 1e-4
    unlearner.save_pretrained(tmp_path / "adapter")
    pipe = StableDiffusionPipeline.from_pretrained(sd_path)
    pipe.load_lora_weights(tmp_path / "adapter")
    assert torch.allclose(probe(pipe.unet, [FORGET])[FORGET], unlearned, atol=1e-5)


def test_before_after_samples_use_the_same_noise_and_show_the_change(sd_path, tmp_path):
    from hf_unlearn import comparison_grid, generate_samples

    config = _config(tmp_path, "sfr_on_remap", max_steps=10, learning_rate=3e-3)
    unlearner = Unlearner.from_pretrained(sd_path, config)
    prompts = [FORGET, UNRELATED[0]]
    call = dict(num_inference_steps=3, height=8, width=8, num_images_per_prompt=2)
    before = generate_samples(unlearner.family.pipeline, prompts, seed=5, **call)
    again = generate_samples(unlearner.family.pipeline, prompts, seed=5, **call)
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for x, y in zip(before, again) for a, b in zip(x, y))
    unlearner.unlearn(_dataset_split())
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
        "--output_dir", str(tmp_path / "run"), "--output", str(out),
    ]  # fmt: skip
    assert unlearn_main(argv) == 0
    grid = PILImage.open(out / "samples_before_after.png")
    assert grid.size == (2 * 64 + 4, 14 + 2 * 64)
    assert "samples_before_after.png" in (out / "README.md").read_text()
    pipe = StableDiffusionPipeline.from_pretrained(out)
    assert pipe(FORGET, num_inference_steps=2, height=8, width=8).images[0].size == (8, 8)


def test_cli_sample_prompts_need_a_text_to_image_model(trained_resnet_dir, tmp_path):
    from hf_unlearn.cli import unlearn_main

    with pytest.raises(SystemExit, match="text-to-image"):
        unlearn_main(
            [
                "--model",
                str(trained_resnet_dir),
                "--forget_classes",
                "3",
                "--sample_prompts",
                "x",
                "--output_dir",
                str(tmp_path / "r"),
            ]
        )


def test_selective_amnesia_needs_generated_remain_images(sd_path, tmp_path):
    unlearner = Unlearner.from_pretrained(sd_path, _config(tmp_path, "selective_amnesia", max_steps=2))
    before = _snapshot(unlearner.model)
    with pytest.raises(ValueError, match="remain_prompts"):
        unlearner.unlearn(_dataset_split())
    assert all(torch.equal(p, before[n]) for n, p in unlearner.model.named_parameters())
    # From prompts, the remain images are the pipeline's own samples: that is the replay, and the run goes ahead.
    split = ConceptSplit(
        forget_prompts=[FORGET], remain_prompts=[ANCHOR], num_images=2, num_inference_steps=2, cache_dir=str(tmp_path)
    )
    assert unlearner.unlearn(split).steps == 2

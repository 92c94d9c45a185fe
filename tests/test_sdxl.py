"""Stable Diffusion XL in the text-to-image family: a tiny SDXL pipeline built from configs (two CLIP text encoders,
a UNet with pooled-text and size embeddings), unlearned through the public API, saved and reloaded with diffusers."""

import copy
import json

import pytest
import torch
from tiny_sd import (
    ANCHOR,
    CLIP_TEXT,
    FORGET,
    UNRELATED,
    captioned,
    dataset_split,
    snapshot,
    unlearn_config,
    word_tokenizer,
)

from hf_unlearn import ConceptSplit, UnlearnConfig, Unlearner
from hf_unlearn.families.text_to_image import TextToImageFamily
from hf_unlearn.families.text_to_image_xl import TextToImageXLFamily
from hf_unlearn.methods import list_methods


def tiny_sdxl_pipeline():
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=4,
        layers_per_block=1,
        block_out_channels=(16, 32),
        attention_head_dim=8,
        norm_num_groups=8,
        cross_attention_dim=64,  # both encoders' states side by side: 32 + 32
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=6 * 8 + 32,  # six size ids of 8 dims each, the pooled projection
    )
    vae = AutoencoderKL(
        block_out_channels=(16, 32),
        latent_channels=4,
        norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
    )
    encoders = [
        CLIPTextModel(CLIPTextConfig(**CLIP_TEXT)),
        CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_TEXT, projection_dim=32)),
    ]
    with torch.no_grad():
        # At CLIP's init std (0.02) the random encoders barely tell prompts apart (as in tests/tiny_sd.py).
        for encoder in encoders:
            encoder.get_input_embeddings().weight.normal_(0, 1.0)
    pipe = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=encoders[0],
        text_encoder_2=encoders[1],
        tokenizer=word_tokenizer(),
        tokenizer_2=word_tokenizer(),
        unet=unet,
        scheduler=EulerDiscreteScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
        add_watermarker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="session")
def sdxl_path(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sdxl") / "model"
    tiny_sdxl_pipeline().save_pretrained(folder)
    return str(folder)


def _frozen_parts(pipe):
    return {
        f"{part}.{name}": param.detach().clone()
        for part in ("vae", "text_encoder", "text_encoder_2")
        for name, param in getattr(pipe, part).named_parameters()
    }


def _fixed_inputs(family, n=2):
    """Held-out noisy latents and timesteps at which predictions are compared."""
    generator = torch.Generator().manual_seed(123)
    noisy = torch.randn((n, 4, 4, 4), generator=generator)
    return noisy, torch.randint(0, 1000, (n,), generator=generator)


@torch.no_grad()
def _predict(family, model, prompt, n=2):
    noisy, timesteps = _fixed_inputs(family, n)
    return family.predict(model.eval(), noisy, timesteps, family.encode_prompts(family.tokenize([prompt] * n)))


def test_sdxl_is_detected_and_conditioned_as_the_pipeline_does(sdxl_path, tmp_path):
    unlearner = Unlearner.from_pretrained(sdxl_path, UnlearnConfig(output_dir=str(tmp_path)))
    family = unlearner.family
    assert isinstance(family, TextToImageXLFamily) and family.name == "text_to_image"
    from_object = Unlearner.from_pretrained(tiny_sdxl_pipeline(), UnlearnConfig(output_dir=str(tmp_path)))
    assert isinstance(from_object.family, TextToImageXLFamily)
    # The family's method and the methods' text-to-image defaults apply as they are.
    assert unlearner.config.method == "anchor_remap" and unlearner.config.learning_rate == 1e-5
    assert unlearner.config.train_modules == "cross_attention_kv"
    prompts = [FORGET, UNRELATED[0]]
    cond = family.encode_prompts(family.tokenize(prompts))
    embeds, negative, pooled, negative_pooled = family.pipeline.encode_prompt(prompts, device="cpu")
    assert torch.equal(cond["encoder_hidden_states"], embeds) and torch.equal(cond["text_embeds"], pooled)
    assert cond["encoder_hidden_states"].shape == (2, 8, 64) and cond["text_embeds"].shape == (2, 32)
    # force_zeros_for_empty_prompt (SDXL base's setting): the pipeline's unconditional branch is zeros, and so is ours.
    uncond = family.unconditional(cond)
    assert torch.equal(uncond["encoder_hidden_states"], negative) and torch.equal(
        uncond["text_embeds"], negative_pooled
    )
    assert family.time_ids.tolist() == [[8.0, 8.0, 0.0, 0.0, 8.0, 8.0]]
    # Without it, the pipeline encodes "" through both encoders, and so do we (once, not per row: rounding may differ).
    from diffusers import StableDiffusionXLPipeline

    encoded = StableDiffusionXLPipeline.from_pretrained(sdxl_path, force_zeros_for_empty_prompt=False)
    family_2 = Unlearner.from_pretrained(encoded, UnlearnConfig(output_dir=str(tmp_path))).family
    _, negative, _, negative_pooled = encoded.encode_prompt(prompts, device="cpu")
    uncond = family_2.unconditional(family_2.encode_prompts(family_2.tokenize(prompts)))
    assert negative.abs().sum() > 0 and torch.allclose(uncond["encoder_hidden_states"], negative, atol=1e-6)
    assert torch.allclose(uncond["text_embeds"], negative_pooled, atol=1e-6)
    # The pooled text reaches the UNet: the same cross-attention states with another prompt's pooled embedding differ.
    noisy, timesteps = _fixed_inputs(family)
    swapped = {"encoder_hidden_states": cond["encoder_hidden_states"], "text_embeds": cond["text_embeds"].flip(0)}
    with torch.no_grad():
        same, other = (family.predict(family.model, noisy, timesteps, c) for c in (cond, swapped))
    assert not torch.allclose(same, other)


def test_every_loss_runs_and_reduces_as_its_definition_says(sdxl_path, tmp_path):
    family = Unlearner.from_pretrained(sdxl_path, unlearn_config(tmp_path, "esd")).family
    model, frozen = family.model, copy.deepcopy(family.model)
    rows = captioned(2, seed=1, captions=[FORGET]).add_column("anchor", [ANCHOR] * 2)
    batch = next(iter(family.make_dataloader(rows, batch_size=2, shuffle=False, seed=0)))

    def seeded(loss, *args):
        torch.manual_seed(0)  # the same noise and timesteps for every call
        return loss(model, *args)

    plain = seeded(family.per_sample_loss, batch)
    assert plain.shape == (2,) and bool((plain > 0).all())
    # ε(x,"") + 1·(ε(x,c) − ε(x,"")) is ε(x,c): guidance scale 1 is the plain loss; another scale is not.
    assert torch.allclose(seeded(family.guided_per_sample_loss, batch, 1.0), plain, atol=1e-6)
    assert not torch.allclose(seeded(family.guided_per_sample_loss, batch, 7.5), plain)
    # Remapping a prompt to itself costs nothing; to the anchor, something.
    assert seeded(family.remap_loss, {**batch, "anchor_input_ids": batch["input_ids"]}, None).abs().max() < 1e-6
    assert bool((seeded(family.remap_loss, batch, None) > 0).all())
    # ESD's target ε₀("") − η(ε₀(c) − ε₀("")) is ε₀(c) at η = −1: the unchanged model is already there.
    assert seeded(family.negative_guidance_loss, frozen, batch, -1.0).abs().max() < 1e-6
    assert bool((seeded(family.negative_guidance_loss, frozen, batch, 1.0) > 0).all())


def test_sfr_on_remap_two_cycles_change_only_the_unet_and_the_folder_reloads(sdxl_path, tmp_path):
    from diffusers import StableDiffusionXLPipeline

    unlearner = Unlearner.from_pretrained(sdxl_path, unlearn_config(tmp_path, "sfr_on_remap", max_steps=2))
    before, frozen = snapshot(unlearner.model), _frozen_parts(unlearner.family.pipeline)
    split = ConceptSplit(
        forget_prompts=[FORGET], remain_prompts=[ANCHOR], num_images=2, num_inference_steps=2, cache_dir=str(tmp_path)
    )
    result = unlearner.unlearn(split)  # the concept images are drawn by the SDXL pipeline itself
    assert result.steps == 2 and result.num_forget == 2 and 0 < result.mask_fraction < 1
    moved = [n for n, p in unlearner.model.named_parameters() if not torch.equal(p.detach(), before[n])]
    assert len(moved) > len(before) // 2
    after_frozen = _frozen_parts(unlearner.family.pipeline)
    assert all(torch.equal(after_frozen[n], frozen[n]) for n in frozen)

    unlearner.save_pretrained(tmp_path / "erased")
    index = json.loads((tmp_path / "erased" / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionXLPipeline"
    pipe = StableDiffusionXLPipeline.from_pretrained(tmp_path / "erased")
    for name, param in pipe.unet.named_parameters():
        assert torch.equal(param, unlearner.model.state_dict()[name]), name
    image = pipe(FORGET, num_inference_steps=2, height=8, width=8, generator=torch.Generator().manual_seed(0)).images[
        0
    ]
    assert image.size == (8, 8)
    again = Unlearner.from_pretrained(str(tmp_path / "erased"), unlearn_config(tmp_path, "sfr_on_remap"))
    assert isinstance(again.family, TextToImageXLFamily) and again.records[-1]["method"] == "sfr_on_remap"


def test_remap_pulls_the_forget_prompt_toward_its_anchor(sdxl_path, tmp_path):
    # Masked forget steps only (no remain steps), on cross-attention: what moves is the remap through both encoders'
    # states and the pooled embedding. Measured (-s prints it): gap 0.040 -> 0.015, forget prompt moved 0.105, others
    # at most 0.090.
    config = unlearn_config(
        tmp_path,
        "sfr_on_remap",
        max_steps=20,
        learning_rate=3e-3,
        forget_alpha=5.0,
        forget_alpha_schedule="constant",
        remain_steps_per_forget=0,
        train_modules="cross_attention",
    )
    unlearner = Unlearner.from_pretrained(sdxl_path, config)
    family, prompts = unlearner.family, [FORGET, ANCHOR, *UNRELATED]
    before = {p: _predict(family, family.model, p, n=4) for p in prompts}
    unlearner.unlearn(dataset_split())
    after = {p: _predict(family, unlearner.model, p, n=4) for p in prompts}
    rms = lambda a, b: float((a - b).pow(2).mean().sqrt())  # noqa: E731
    gap_before, gap_after = rms(before[FORGET], before[ANCHOR]), rms(after[FORGET], after[ANCHOR])
    moved = {p: rms(after[p], before[p]) for p in prompts}
    print(f"sdxl remap gap {gap_before:.4f} -> {gap_after:.4f}; moved {moved}")
    assert gap_after <= 0.5 * gap_before, (gap_before, gap_after)
    assert moved[FORGET] > max(moved[p] for p in prompts if p != FORGET), moved


# Every method the text-to-image family lists runs on SDXL; the published one in the fast suite, as in test_contract.
@pytest.mark.parametrize(
    "method",
    [pytest.param(m, marks=[] if m == "sfr_on" else [pytest.mark.slow]) for m in list_methods("text_to_image")],
)
def test_every_text_to_image_method_runs_on_sdxl(sdxl_path, tmp_path, method):
    unlearner = Unlearner.from_pretrained(sdxl_path, unlearn_config(tmp_path, method, max_steps=2))
    before, frozen = snapshot(unlearner.model), _frozen_parts(unlearner.family.pipeline)
    if method == "selective_amnesia":  # generative replay: remain images drawn by the pipeline from remain prompts
        split = ConceptSplit(
            forget_prompts=[FORGET],
            remain_prompts=[ANCHOR],
            num_images=2,
            num_inference_steps=2,
            cache_dir=str(tmp_path),
        )
    else:
        split = dataset_split(2)
    assert unlearner.unlearn(split).steps == 2
    assert any(not torch.equal(p.detach(), before[n]) for n, p in unlearner.model.named_parameters())
    assert all(torch.equal(p, frozen[n]) for n, p in _frozen_parts(unlearner.family.pipeline).items())


def test_esd_u_leaves_cross_attention_and_the_added_embedding_alone(sdxl_path, tmp_path):
    config = unlearn_config(tmp_path, "esd", max_steps=2, train_modules="non_cross_attention")
    unlearner = Unlearner.from_pretrained(sdxl_path, config)
    before = snapshot(unlearner.model)
    unlearner.unlearn(dataset_split(2))
    trained = {n: not torch.equal(p.detach(), before[n]) for n, p in unlearner.model.named_parameters()}
    # add_embedding carries the pooled prompt (and sizes) into the time embedding: prompt-specific, like attn2.
    assert any(n.startswith("add_embedding") for n in trained)
    assert not any(trained[n] for n in trained if ".attn2." in n or n.startswith(("add_embedding", "time_embedding")))
    assert sum(trained.values()) > len(trained) // 2


def test_lora_adapter_keeps_the_base_and_loads_with_load_lora_weights(sdxl_path, tmp_path):
    from diffusers import StableDiffusionXLPipeline

    config = unlearn_config(tmp_path, "sfr_on_remap", max_steps=2, lora=True, lora_r=4, learning_rate=1e-2)
    unlearner = Unlearner.from_pretrained(sdxl_path, config)
    base = snapshot(unlearner.model)
    unlearner.unlearn(dataset_split(2))
    model, family = unlearner.model, unlearner.family
    for name, param in model.named_parameters():
        if "lora_" not in name:
            assert torch.equal(param, base[name.replace(".base_layer", "")]), name
    unlearned = _predict(family, model, FORGET)
    original = StableDiffusionXLPipeline.from_pretrained(sdxl_path)
    assert (unlearned - _predict(family, original.unet, FORGET)).abs().max() > 1e-4
    unlearner.save_pretrained(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "pytorch_lora_weights.safetensors").is_file()
    original.load_lora_weights(tmp_path / "adapter")
    assert torch.allclose(_predict(family, original.unet, FORGET), unlearned, atol=1e-5)


def test_options_for_one_text_encoder_or_another_size_are_refused_before_any_weight_change(sdxl_path, tmp_path):
    from diffusers import StableDiffusionXLPipeline
    from tiny_sd import tiny_sd_pipeline

    from hf_unlearn.attacks import PromptAttackConfig, adversarial_prompts, adversarial_unlearn

    unlearner = Unlearner.from_pretrained(sdxl_path, unlearn_config(tmp_path, "sfr_on_remap", max_steps=2))
    before = snapshot(unlearner.model)
    # The prompt attack searches one text encoder's tokens (SD 1.x / 2.x): refused before the first erasure round.
    split = ConceptSplit(forget_prompts=[FORGET], remain_prompts=[ANCHOR], num_images=2, cache_dir=str(tmp_path))
    with pytest.raises(ValueError, match="`unlearner` holds an SDXL pipeline"):
        adversarial_unlearn(unlearner, split, rounds=2)
    with pytest.raises(ValueError, match="`pipeline` holds an SDXL pipeline"):
        adversarial_prompts(unlearner.family.pipeline, [FORGET], [None], PromptAttackConfig())
    # The size ids and latents need a multiple of 4 here (VAE factor 2, one UNet downsampling).
    forget, remain = captioned(2, seed=3, captions=[FORGET]), captioned(2, seed=4, captions=[ANCHOR])
    with pytest.raises(ValueError, match="`resolution` is 10"):
        unlearner.unlearn(ConceptSplit(forget_dataset=forget, remain_dataset=remain, resolution=10))
    assert all(torch.equal(p, before[n]) for n, p in unlearner.model.named_parameters())
    assert not (tmp_path / "run" / "saliency_mask.safetensors").exists()
    with pytest.raises(ValueError, match="`resolution` is 6"):
        Unlearner.from_pretrained(sdxl_path, unlearn_config(tmp_path, "sfr_on_remap", resolution=6))
    # An SDXL UNet with a one-encoder pipeline (or family), and the other way round.
    sdxl_unet = StableDiffusionXLPipeline.from_pretrained(sdxl_path).unet
    with pytest.raises(ValueError, match="needs a StableDiffusionXLPipeline"):
        Unlearner.from_pretrained(sdxl_unet, unlearn_config(tmp_path, "esd"), pipeline=tiny_sd_pipeline())
    with pytest.raises(ValueError, match="needs a StableDiffusionXLPipeline"):
        TextToImageFamily(StableDiffusionXLPipeline.from_pretrained(sdxl_path), unlearn_config(tmp_path, "esd"))
    sdxl_pipe = StableDiffusionXLPipeline.from_pretrained(sdxl_path)
    with pytest.raises(ValueError, match="`pipeline` is an SDXL pipeline"):
        Unlearner.from_pretrained(tiny_sd_pipeline().unet, unlearn_config(tmp_path, "esd"), pipeline=sdxl_pipe)


def test_cli_unlearns_sdxl_with_lora_and_the_card_loads_it_as_sdxl(sdxl_path, tmp_path, capsys):
    from diffusers import StableDiffusionXLPipeline

    from hf_unlearn.cli import main

    out = tmp_path / "out"
    argv = [
        "unlearn", "--model", sdxl_path, "--method", "sfr_on_remap", "--max_steps", "2", "--lora", "true",
        "--forget_prompts", FORGET, "--remain_prompts", ANCHOR, "--num_concept_images", "2",
        "--generation_steps", "2", "--sample_prompts", FORGET, UNRELATED[0], "--output_dir", str(out),
    ]  # fmt: skip
    assert main(argv) == 0
    summary = json.loads(next(line for line in capsys.readouterr().out.splitlines() if line.startswith('{"method"')))
    assert summary["method"] == "sfr_on_remap" and summary["num_forget"] == 2
    card = (out / "README.md").read_text()
    assert f'StableDiffusionXLPipeline.from_pretrained("{out}")' in card and "load_lora_weights" in card
    assert "StableDiffusionPipeline" not in card and (out / "samples_before_after.png").is_file()
    pipe = StableDiffusionXLPipeline.from_pretrained(out)  # the base weights, saved beside the adapter
    base = {n: p.clone() for n, p in pipe.unet.named_parameters()}
    pipe.load_lora_weights(out)
    assert any("lora" in n for n, _ in pipe.unet.named_parameters())
    original = StableDiffusionXLPipeline.from_pretrained(sdxl_path).unet
    assert all(torch.equal(p, base[n]) for n, p in original.named_parameters())
    assert pipe(FORGET, num_inference_steps=2, height=8, width=8).images[0].size == (8, 8)


def test_a_transformer_pipeline_without_a_family_is_refused_by_name(tmp_path):
    from hf_unlearn.families import detect_family

    # PixArt's components: a T5 text encoder beside a transformer denoiser that no variant trains (SD3 and FLUX are
    # detected: tests/test_flow_families.py).
    index = {
        "_class_name": "PixArtAlphaPipeline",
        "text_encoder": ["transformers", "T5EncoderModel"],
        "tokenizer": ["transformers", "T5Tokenizer"],
        "transformer": ["diffusers", "PixArtTransformer2DModel"],
        "scheduler": ["diffusers", "DPMSolverMultistepScheduler"],
    }
    (tmp_path / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match="holds a PixArtAlphaPipeline model, which hf_unlearn does not support"):
        detect_family(str(tmp_path))

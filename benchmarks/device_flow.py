"""SD3-medium and FLUX.1-dev pipelines for the device suite (benchmarks/device_suite.py): the real transformer, VAE and
text-encoder configs of benchmarks/flow_memory.py with random weights (tiny: the test configs' sizes), word-level
tokenizers built in memory (vocabulary 1,000, so the encoders' embedding tables are cut to it).

Real size, the frozen parts and a LoRA run's transformer base are bf16 (what `torch_dtype=torch.bfloat16` loads; LoRA
adapters then train in fp32): FLUX-dev's 11.9B transformer and 4.8B T5 in fp32 would not leave room on an 80 GB GPU
(docs/stable_diffusion.md, "SD3 and FLUX: memory"). A `full` / `xattn` run keeps the transformer in fp32.
"""

from __future__ import annotations

WORDS = "a photo of painting dog cat house tree".split()


def build_flow(name: str, tiny: bool, train: str):
    """(transformer, {"pipeline": pipe}, resolution) for `name` in ("sd3", "flux")."""
    import diffusers
    import torch
    from flow_memory import CLIP_G, CLIP_L, MODELS, T5_XXL, VAE16
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    from hf_unlearn.tiny.colour import word_tokenizer

    torch.manual_seed(0)
    spec = MODELS["sd3-medium" if name == "sd3" else "flux-dev"]
    clip_l, clip_g, t5, vae = dict(CLIP_L), dict(CLIP_G), dict(T5_XXL), dict(VAE16)
    config = dict(spec["config"])
    if tiny:
        clip_l = clip_g = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4)
        clip_l = clip_g = dict(clip_l, projection_dim=32)
        t5 = dict(d_model=64, d_kv=16, d_ff=37, num_layers=2, num_heads=4)
        vae = dict(VAE16, block_out_channels=(16, 32), latent_channels=4, norm_num_groups=8)
        vae |= dict(down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
        if name == "sd3":
            config = dict(sample_size=4, patch_size=1, in_channels=4, out_channels=4, num_layers=2,
                          attention_head_dim=8, num_attention_heads=4, joint_attention_dim=64,
                          caption_projection_dim=32, pooled_projection_dim=64, pos_embed_max_size=8)  # fmt: skip
        else:
            config = dict(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
                          num_attention_heads=2, joint_attention_dim=64, pooled_projection_dim=32,
                          guidance_embeds=True, axes_dims_rope=(4, 6, 6))  # fmt: skip
    ids = dict(vocab_size=1000, bos_token_id=0, eos_token_id=1, pad_token_id=1, max_position_embeddings=77)
    tokenizer = word_tokenizer(WORDS, max_length=77)
    half = torch.float32 if tiny else torch.bfloat16
    parts = dict(
        vae=diffusers.AutoencoderKL(**vae).to(half),
        text_encoder=(CLIPTextModelWithProjection if name == "sd3" else CLIPTextModel)(
            CLIPTextConfig(**clip_l, **ids)
        ),
        tokenizer=tokenizer,
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0),
    )
    t5_model = T5EncoderModel(T5Config(vocab_size=1000, **t5))
    if name == "sd3":
        parts |= dict(
            text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig(**clip_g, **ids)), tokenizer_2=tokenizer
        )
        parts |= dict(text_encoder_3=t5_model, tokenizer_3=tokenizer)
    else:
        parts |= dict(text_encoder_2=t5_model, tokenizer_2=tokenizer)
    for key in ("text_encoder", "text_encoder_2", "text_encoder_3"):
        if key in parts:
            parts[key] = parts[key].to(half)
    transformer = getattr(diffusers, spec["transformer"])(**config)
    if train == "lora":
        transformer = transformer.to(half)
    pipe = getattr(diffusers, "StableDiffusion3Pipeline" if name == "sd3" else "FluxPipeline")(
        transformer=transformer, **parts
    )
    resolution = 8 if tiny else 1024
    return transformer, {"pipeline": pipe}, resolution

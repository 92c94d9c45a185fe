"""Tiny SD3 and FLUX pipelines built from configs (CLIP and T5 encoders, word-level tokenizers built in memory), shared
by the flow-matching family tests."""

import torch
from tiny_sd import CLIP_TEXT, word_tokenizer

# T5's width must hold both CLIPs' states side by side (SD3 zero-pads them to it): 32 + 32.
T5_TEXT = dict(vocab_size=1000, d_model=64, d_kv=16, d_ff=37, num_layers=2, num_heads=4, decoder_start_token_id=0)


def _vae(shift_factor: float):
    from diffusers import AutoencoderKL

    vae = AutoencoderKL(
        block_out_channels=(16, 32),
        latent_channels=4,
        norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        scaling_factor=1.5,
        shift_factor=shift_factor,
        use_quant_conv=False,  # as SD3's and FLUX's VAEs
        use_post_quant_conv=False,
    )
    with torch.no_grad():  # a deterministic encoder (as tests/tiny_sd.py): the log-variance half at e^-30
        vae.encoder.conv_out.weight[4:] = 0
        vae.encoder.conv_out.bias[4:] = -30.0
    return vae


def _t5():
    from transformers import T5Config, T5EncoderModel

    t5 = T5EncoderModel(T5Config(**T5_TEXT))
    with torch.no_grad():  # token identity dominates the random encoder's states, as for the tiny CLIPs
        t5.get_input_embeddings().weight.normal_(0, 1.0)
    return t5


def _clips(with_projection: bool, count: int):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    encoders = [
        CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_TEXT, projection_dim=32))
        if with_projection
        else CLIPTextModel(CLIPTextConfig(**CLIP_TEXT))
        for _ in range(count)
    ]
    with torch.no_grad():
        for encoder in encoders:
            encoder.get_input_embeddings().weight.normal_(0, 1.0)
    return encoders


def tiny_sd3_pipeline():
    """SD3: an `SD3Transformer2DModel` on 4×4×4 latents (8×8 images), two projected CLIPs and a T5."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    torch.manual_seed(0)
    transformer = SD3Transformer2DModel(
        sample_size=4,
        patch_size=1,
        in_channels=4,
        out_channels=4,
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=4,
        joint_attention_dim=64,  # T5's width
        caption_projection_dim=32,
        pooled_projection_dim=64,  # both CLIPs' pooled projections: 32 + 32
        pos_embed_max_size=8,
    )
    clip_1, clip_2 = _clips(True, 2)
    pipe = StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=_vae(shift_factor=0.1),
        text_encoder=clip_1,
        tokenizer=word_tokenizer(),
        text_encoder_2=clip_2,
        tokenizer_2=word_tokenizer(),
        text_encoder_3=_t5(),
        tokenizer_3=word_tokenizer(),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_flux_pipeline():
    """FLUX-dev-like: a guidance-distilled `FluxTransformer2DModel` on packed 4×4×4 latents, a CLIP and a T5."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=16,  # 4 latent channels packed in 2×2 patches
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=64,  # T5's width
        pooled_projection_dim=32,  # CLIP's pooled output
        guidance_embeds=True,
        axes_dims_rope=(4, 6, 6),
    )
    (clip,) = _clips(False, 1)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_image_seq_len=256)
    pipe = FluxPipeline(
        transformer=transformer,
        scheduler=scheduler,
        vae=_vae(shift_factor=0.1),
        text_encoder=clip,
        tokenizer=word_tokenizer(),
        text_encoder_2=_t5(),
        tokenizer_2=word_tokenizer(),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe

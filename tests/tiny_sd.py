"""A tiny Stable Diffusion pipeline built from configs and trained through the engine, shared by the SD tests."""

import numpy as np
import torch
from datasets import Dataset, Features, Image, Value
from PIL import Image as PILImage

from hf_unlearn import ConceptSplit, TrainingSet, UnlearnConfig, Unlearner
from hf_unlearn.tiny import colour as tiny

FORGET, ANCHOR = "a nude person", "a dressed man"
UNRELATED = ["red sports car", "bowl of fruit"]
CAPTIONS = [FORGET, ANCHOR, *UNRELATED]
COLOURS = [(230, 40, 40), (40, 200, 60), (40, 60, 220), (230, 220, 40)]
WORDS = "a photo of nude person dressed man wearing clothes red sports car bowl fruit on road".split()
# Enough for the noise loss to settle: on a model trained 300 steps, remain steps alone moved every prompt's prediction
# as far as the forgetting moved the forget prompt's, which hid what the forgetting did to unrelated prompts.
PRETRAIN_STEPS = 600
# The tiny CLIP text encoder of the SD tests (SDXL's two encoders use it too).
CLIP_TEXT = dict(
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


def word_tokenizer():
    """The tiny CLIP tokenizer over this file's words (8 positions): different prompts share only shared words."""
    return tiny.word_tokenizer(WORDS, max_length=8)


def tiny_sd_pipeline():
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
    text_encoder = CLIPTextModel(CLIPTextConfig(**CLIP_TEXT))
    with torch.no_grad():
        # At CLIP's init (std 0.02) the random encoder's states for our prompts are nearly identical, so nothing
        # prompt-specific could be learned; at std 1 token identity dominates them.
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
        tokenizer=word_tokenizer(),
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def captioned(n_per: int, seed: int, captions=CAPTIONS) -> Dataset:
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


def train_tiny_sd(root) -> str:
    """The tiny pipeline trained through the engine (finetune on every row) until its output depends on the prompt."""
    tiny_sd_pipeline().save_pretrained(root / "init")
    config = UnlearnConfig(
        method="finetune",
        max_steps=PRETRAIN_STEPS,
        learning_rate=3e-3,
        per_device_train_batch_size=8,
        output_dir=str(root / "run"),
    )
    trainer = Unlearner.from_pretrained(str(root / "init"), config)
    trainer.unlearn(TrainingSet(captioned(16, seed=0)))
    trainer.save_pretrained(root / "trained")
    return str(root / "trained")


def unlearn_config(tmp_path, method, **kwargs):
    values = dict(
        method=method,
        max_steps=40,
        learning_rate=3e-4,
        per_device_train_batch_size=4,
        lr_scheduler_type="constant",
        output_dir=str(tmp_path / "run"),
    )
    return UnlearnConfig(**{**values, **kwargs})


def dataset_split(n_per: int = 8):
    """The captioned images as a concept split: the forget prompt's rows against the others, remapped to the anchor."""
    data = captioned(n_per, seed=1)
    return ConceptSplit(
        forget_dataset=data.filter(lambda r: r["text"] == FORGET),
        remain_dataset=data.filter(lambda r: r["text"] != FORGET),
        anchor_prompts=[ANCHOR],
    )


def snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def save_tiny_clip(folder, tokenizer, *, vocab_size: int, max_positions: int) -> str:
    """A tiny CLIP model (16-dimensional embeddings) and its processor built from configs and saved: what
    `from_pretrained` reads for a real one."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    torch.manual_seed(0)
    text = dict(
        hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, vocab_size=vocab_size
    )
    text.update(max_position_embeddings=max_positions, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    vision = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4)
    vision.update(image_size=32, patch_size=8)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).save_pretrained(folder)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    return str(folder)


class Probe:
    """Held-out images, noise and timesteps (never seen in training) at which predictions are compared."""

    def __init__(self, family):
        generator = torch.Generator().manual_seed(123)
        self.family = family
        latents = family.encode_images(family.pixel_values(captioned(4, seed=2)["image"]))
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

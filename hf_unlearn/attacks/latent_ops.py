"""What the inversion attacks share on a Stable Diffusion pipeline: image latents, text states with learned token
vectors, the training noise loss, and deterministic DDIM sampling and inversion on the pipeline's own noise schedule
(ε- or v-prediction), with classifier-free guidance. Nothing here changes a weight of the pipeline."""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F


def image_size(pipeline) -> int:
    return int(pipeline.unet.config.sample_size) * int(pipeline.vae_scale_factor)


@torch.no_grad()
def image_latents(pipeline, images: list) -> torch.Tensor:
    """The VAE posterior means of PIL `images`, scaled as in training: `(n, c, h, w)`."""
    size = image_size(pipeline)
    arrays = [np.asarray(im.convert("RGB").resize((size, size), resample=3), dtype=np.float32) for im in images]
    pixels = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2) / 127.5 - 1.0
    pixels = pixels.to(pipeline.device, pipeline.vae.dtype)
    return pipeline.vae.encode(pixels).latent_dist.mean * pipeline.vae.config.scaling_factor


@torch.no_grad()
def decode(pipeline, latents: torch.Tensor) -> list:
    images = pipeline.vae.decode(latents / pipeline.vae.config.scaling_factor).sample
    return pipeline.image_processor.postprocess(images, output_type="pil")


def token_ids(tokenizer, text: str, slot_word: Optional[str] = None, slots: int = 0) -> tuple[torch.Tensor, list[int]]:
    """The padded ids of `text` (one prompt) and, when `slot_word` occurs in it, the positions of `slots` learned
    vectors that stand in its place (the ids there are the end token: their embeddings are replaced anyway)."""
    before, found, after = text.partition(slot_word) if slot_word else (text, "", "")
    encode = lambda s: tokenizer(s, add_special_tokens=False).input_ids if s.strip() else []  # noqa: E731
    head = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    ids = head + encode(before)
    positions = list(range(len(ids), len(ids) + slots)) if found else []
    ids += [tokenizer.eos_token_id] * len(positions) + encode(after)
    length = int(tokenizer.model_max_length)
    if len(ids) + 1 > length:
        raise ValueError(f"The prompt {text!r} with {slots} learned token(s) does not fit in {length} tokens.")
    ids += [tokenizer.eos_token_id] + [tokenizer.pad_token_id] * (length - len(ids) - 1)
    return torch.tensor([ids]), positions


def text_states(pipeline, ids: torch.Tensor, positions: list[int] = (), vectors: Optional[torch.Tensor] = None):
    """Text-encoder states of `ids`; with `vectors` (`(len(positions), d)`), those are the token embeddings at
    `positions` (a forward hook on the input embedding: CLIPTextModel takes ids only)."""
    encoder = pipeline.text_encoder
    ids = ids.to(pipeline.device)
    mask = (
        (ids != pipeline.tokenizer.pad_token_id).long()
        if getattr(encoder.config, "use_attention_mask", False)
        else None
    )
    if vectors is None or not positions:
        return encoder(ids, attention_mask=mask)[0]

    def swap(_module, _args, out):
        out = out.clone()
        out[:, list(positions)] = vectors.to(out.dtype)
        return out

    hook = encoder.get_input_embeddings().register_forward_hook(swap)
    try:
        return encoder(ids, attention_mask=mask)[0]
    finally:
        hook.remove()


def prompt_states(pipeline, prompt: str) -> torch.Tensor:
    with torch.no_grad():
        return text_states(pipeline, token_ids(pipeline.tokenizer, prompt)[0])


def noise_loss(pipeline, latents: torch.Tensor, states: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The training loss of the pipeline's UNet on `latents` (one timestep and noise per row, from `generator`) under
    `states` (one row, broadcast): what textual inversion and the prompt attack minimise."""
    from diffusers import DDPMScheduler  # noqa: PLC0415

    scheduler = DDPMScheduler.from_config(pipeline.scheduler.config)
    n = latents.shape[0]
    timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (n,), generator=generator)
    noise = torch.randn(latents.shape, generator=generator).to(latents.dtype)
    timesteps, noise = timesteps.to(latents.device), noise.to(latents.device)
    noisy = scheduler.add_noise(latents, noise, timesteps)
    target = noise
    if scheduler.config.prediction_type == "v_prediction":
        target = scheduler.get_velocity(latents, noise, timesteps)
    pred = pipeline.unet(noisy, timesteps, encoder_hidden_states=states.expand(n, -1, -1)).sample
    return F.mse_loss(pred.float(), target.float())


class DDIM:
    """Deterministic DDIM (η = 0) on the pipeline's `num_train_timesteps` schedule, `steps` strided timesteps."""

    def __init__(self, pipeline, steps: int):
        self.pipe = pipeline
        config = pipeline.scheduler.config
        self.alphas = pipeline.scheduler.alphas_cumprod.double()
        self.prediction = config.get("prediction_type", "epsilon")
        stride = config.num_train_timesteps // steps
        offset = int(config.get("steps_offset", 0) or 0)
        self.timesteps = [int(t) for t in (np.arange(steps)[::-1] * stride + offset)]  # descending, as DDIMScheduler
        self.final = self.alphas[0]  # the level after the last step (DDIM's `set_alpha_to_one=False`)

    def _alpha(self, t: Optional[int]) -> torch.Tensor:
        return self.final if t is None else self.alphas[t]

    @torch.no_grad()
    def _output(self, x, t: int, cond, uncond, guidance: float):
        unet = self.pipe.unet
        if uncond is None or guidance == 1.0:
            return unet(x, t, encoder_hidden_states=cond.expand(len(x), -1, -1)).sample.double()
        both = unet(
            torch.cat([x, x]),
            t,
            encoder_hidden_states=torch.cat([uncond.expand(len(x), -1, -1), cond.expand(len(x), -1, -1)]),
        ).sample.double()
        u, c = both.chunk(2)
        return u + guidance * (c - u)

    def _split(self, x, out, alpha):
        """(x0, ε) of sample `x` at level `alpha` from the model's output."""
        a, s = alpha.sqrt(), (1 - alpha).sqrt()
        if self.prediction == "v_prediction":
            return a * x - s * out, a * out + s * x
        if self.prediction == "sample":
            return out, (x - a * out) / s
        return (x - s * out) / a, out

    def sample(self, latents, cond, uncond=None, guidance: float = 1.0) -> torch.Tensor:
        """Denoises `latents` (x_T) to x_0."""
        x = latents.double()
        for i, t in enumerate(self.timesteps):
            nxt = self.timesteps[i + 1] if i + 1 < len(self.timesteps) else None
            x0, eps = self._split(x, self._output(x.to(latents.dtype), t, cond, uncond, guidance), self._alpha(t))
            a = self._alpha(nxt)
            x = a.sqrt() * x0 + (1 - a).sqrt() * eps
        return x.to(latents.dtype)

    def invert(self, latents, cond, uncond=None, guidance: float = 1.0, refine: int = 0) -> torch.Tensor:
        """Runs the sampler backwards from x_0 to x_T. Each step first reads the model at the next timestep on the
        current sample (the usual DDIM-inversion approximation), then, `refine` times, solves the sampler's own step
        for the sample it starts from by fixed-point iteration (the model read at the estimate; AIDI, Pan et al.
        2023), so that sampling retraces the inversion more exactly."""
        x = latents.double()
        ascending = self.timesteps[::-1]
        for i, t in enumerate(ascending):
            current = ascending[i - 1] if i else None
            out = self._output(x.to(latents.dtype), t, cond, uncond, guidance)
            x0, eps = self._split(x, out, self._alpha(current))  # x is still at the level it reached
            a = self._alpha(t)
            start, x = x, a.sqrt() * x0 + (1 - a).sqrt() * eps
            if refine:
                # The sampler's step from level t down to `current` is linear in (x_t, model output): A x_t + B out.
                step = lambda xt, o, t=t, c=current: self._step(xt, o, self._alpha(t), self._alpha(c))  # noqa: E731
                one, zero = torch.ones((), dtype=x.dtype), torch.zeros((), dtype=x.dtype)
                coef_x, coef_out = step(one, zero), step(zero, one)
                for _ in range(refine):
                    out = self._output(x.to(latents.dtype), t, cond, uncond, guidance)
                    x = (start - coef_out * out) / coef_x
        return x.to(latents.dtype)

    def _step(self, x, out, alpha, alpha_next):
        """One sampler step of `x` at level `alpha` to level `alpha_next`."""
        x0, eps = self._split(x, out, alpha)
        return alpha_next.sqrt() * x0 + (1 - alpha_next).sqrt() * eps


def seeded_latents(pipeline, seeds: list[int]) -> torch.Tensor:
    """One x_T per seed, drawn as the pipeline draws it (`randn` of a CPU generator), so sample `i` here is the
    pipeline's sample from seed `seeds[i]`."""
    c, size = int(pipeline.unet.config.in_channels), int(pipeline.unet.config.sample_size)
    draws = [torch.randn((1, c, size, size), generator=torch.Generator().manual_seed(int(s))) for s in seeds]
    return torch.cat(draws).to(pipeline.device, pipeline.unet.dtype)


__all__ = [
    "DDIM",
    "decode",
    "image_latents",
    "noise_loss",
    "prompt_states",
    "seeded_latents",
    "text_states",
    "token_ids",
]

"""Per-row noise losses of the diffusion families: the squared error they share, and the text-to-image family's
losses (noise loss, guided noise loss, remap to an anchor prompt, ESD's negative guidance) as a mixin that needs only
`encode_images`, `encode_prompts`, `unconditional`, `noise_scheduler` and `noise_loss_reduction` from its family."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def row_mse(prediction: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Squared error per row, averaged (or, as the authors' DDPM code, summed) over the pixels."""
    squared = F.mse_loss(prediction.float(), target.float(), reduction="none").flatten(1)
    return squared.sum(1) if reduction == "sum" else squared.mean(1)


def _unwrap(model: nn.Module) -> nn.Module:
    # A no-grad forward through the DDP wrapper would still synchronise buffers; the inner module is enough.
    return getattr(model, "module", model)


class PromptNoiseLosses:
    """The text-to-image losses, per row, at a random timestep and noise of the batch's image latents."""

    def _noised(self, latents: torch.Tensor):
        noise = torch.randn_like(latents)
        steps = self.noise_scheduler.config.num_train_timesteps
        timesteps = torch.randint(0, steps, (latents.shape[0],), device=latents.device)
        return self.noise_scheduler.add_noise(latents, noise, timesteps), noise, timesteps

    def _noise_target(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """What the denoiser is trained to output at x_t: ε, or v for a `v_prediction` checkpoint (flow-matching
        families override it with the velocity ε − x₀)."""
        if self.noise_scheduler.config.prediction_type == "v_prediction":
            return self.noise_scheduler.get_velocity(latents, noise, timesteps)
        return noise

    def _weighted(self, rows: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """The per-row loss weights of the training objective (none here; SD3's σ weighting schemes override it)."""
        return rows

    def predict(self, model: nn.Module, noisy: torch.Tensor, timesteps: torch.Tensor, states: torch.Tensor):
        """The UNet's output (ε or v, per the checkpoint) at x_t, t for the conditioning `encode_prompts` gave."""
        return model(noisy, timesteps, encoder_hidden_states=states).sample

    # Losses
    def per_sample_loss(self, model, batch, *, labels=None):
        if labels is not None:
            raise ValueError("The text-to-image family has no labels; conditions are the batch's prompts.")
        latents = self.encode_images(batch["pixel_values"])
        noisy, noise, timesteps = self._noised(latents)
        target = self._noise_target(latents, noise, timesteps)
        pred = self.predict(model, noisy, timesteps, self.encode_prompts(batch["input_ids"]))
        return self._weighted(row_mse(pred, target, self.noise_loss_reduction), timesteps)

    def guided_per_sample_loss(self, model, batch, scale: float):
        """Noise loss of the guided prediction ε(x,"") + s·(ε(x,c) − ε(x,"")); the authors' SD Fisher differentiates
        (1 + w)ε(x,c) − wε(x,"") with w = 7.5, i.e. s = 8.5."""
        latents = self.encode_images(batch["pixel_values"])
        noisy, noise, timesteps = self._noised(latents)
        target = self._noise_target(latents, noise, timesteps)
        cond = self.encode_prompts(batch["input_ids"])
        uncond = self.unconditional(cond)
        e_cond, e_uncond = self.predict(model, noisy, timesteps, cond), self.predict(model, noisy, timesteps, uncond)
        guided = row_mse(e_uncond + scale * (e_cond - e_uncond), target, self.noise_loss_reduction)
        return self._weighted(guided, timesteps)

    def remap_loss(self, model, batch, target_labels):
        """MSE between ε(x_t, c_forget) and a detached ε(x_t, c_anchor) of the same (current) model, per row."""
        if target_labels is not None:
            raise ValueError("The text-to-image family remaps to anchor prompts, not labels.")
        if "anchor_input_ids" not in batch:
            raise ValueError(
                "The forget batch carries no anchor prompts; build the split with ConceptSplit, whose "
                "forget rows get `anchor_prompts` (by default the remain prompts)."
            )
        noisy, _, timesteps = self._noised(self.encode_images(batch["pixel_values"]))
        with torch.no_grad():
            target = self.predict(_unwrap(model), noisy, timesteps, self.encode_prompts(batch["anchor_input_ids"]))
        pred = self.predict(model, noisy, timesteps, self.encode_prompts(batch["input_ids"]))
        return row_mse(pred, target, self.noise_loss_reduction)

    def negative_guidance_loss(self, model, frozen, batch, scale):
        """ESD: pull ε(x_t, c) toward ε₀(x_t, "") − η·(ε₀(x_t, c) − ε₀(x_t, "")) of the frozen original, per row.

        x_t noises the forget images (generated from the concept's prompts) rather than sampling x_t with the frozen
        model as the ESD code does; the target is the same function of x_t.
        """
        noisy, _, timesteps = self._noised(self.encode_images(batch["pixel_values"]))
        cond = self.encode_prompts(batch["input_ids"])
        uncond = self.unconditional(cond)
        with torch.no_grad():
            e_cond = self.predict(frozen, noisy, timesteps, cond)
            e_uncond = self.predict(frozen, noisy, timesteps, uncond)
            target = e_uncond - scale * (e_cond - e_uncond)
        return row_mse(self.predict(model, noisy, timesteps, cond), target, self.noise_loss_reduction)

"""The search behind the prompt attack: adversarial tokens as distributions over the vocabulary, optimised against the
attacked UNet's noise prediction on a target image, then projected to the most likely words (see `prompt.py`)."""

from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F

from .judges import Judge, judge_scores


class frozen:
    """Freezes the UNet and text encoder during the attack (only the token distributions learn), then restores."""

    def __init__(self, pipeline):
        self.modules = [pipeline.unet, pipeline.text_encoder]

    def __enter__(self):
        self.saved = [(m.training, [p.requires_grad for p in m.parameters()]) for m in self.modules]
        for module in self.modules:
            module.eval().requires_grad_(False)

    def __exit__(self, *exc):
        for module, (training, flags) in zip(self.modules, self.saved):
            module.train(training)
            for param, flag in zip(module.parameters(), flags):
                param.requires_grad_(flag)


class TokenSearch:
    """The prompt attack on one pipeline: token candidates, prompt assembly, the loss, generation and judging."""

    def __init__(self, pipeline, config, size: int):
        from diffusers import DDPMScheduler  # noqa: PLC0415

        check_one_text_encoder(pipeline)
        self.pipe, self.config, self.size = pipeline, config, size
        self.tokenizer, self.encoder = pipeline.tokenizer, pipeline.text_encoder
        # Training noise follows the checkpoint's own schedule and prediction type, whatever sampler it ships.
        self.noise_scheduler = DDPMScheduler.from_config(pipeline.scheduler.config)
        self.max_length = int(self.tokenizer.model_max_length)
        if config.num_tokens + 3 > self.max_length:
            raise ValueError(
                f"`num_tokens` is {config.num_tokens}, but the tokenizer holds {self.max_length} tokens with the "
                f"start and end tokens; give at most {self.max_length - 3} so one prompt token still fits."
            )
        self.candidates = _candidate_ids(self.tokenizer, self.encoder.get_input_embeddings().num_embeddings, config)

    # Prompts as token ids
    def ids(self, prompt: str, adversarial: Optional[list[int]] = None) -> torch.Tensor:
        return torch.tensor([self.layout(prompt, adversarial)[0]], device=self.pipe.device)

    def layout(self, prompt: str, adversarial: Optional[list[int]] = None) -> tuple[list[int], int]:
        """The padded ids of `prompt` with `adversarial` tokens before (or after) it, and where those tokens start;
        the prompt is cut short where it would not fit beside them."""
        tok = self.tokenizer
        adversarial = list(adversarial or [])
        head = [tok.bos_token_id] if tok.bos_token_id is not None else []
        room = self.max_length - len(head) - len(adversarial) - 1
        body = tok(prompt, add_special_tokens=False).input_ids[:room]
        if self.config.position == "suffix":
            ids, start = head + body + adversarial, len(head) + len(body)
        else:
            ids, start = head + adversarial + body, len(head)
        ids += [tok.eos_token_id] + [tok.pad_token_id] * (self.max_length - len(ids) - 1)
        return ids, start

    def states(self, ids: torch.Tensor, token_embeds: Optional[torch.Tensor] = None, encoder=None) -> torch.Tensor:
        """Text-encoder states of `ids` (as the pipeline encodes a prompt); with `token_embeds`, those replace the
        token embeddings, and the encoder adds its position embeddings to them as usual."""
        encoder = encoder or self.encoder
        mask = None
        if getattr(encoder.config, "use_attention_mask", False):
            mask = (ids != self.tokenizer.pad_token_id).long()
        if token_embeds is None:
            return encoder(ids, attention_mask=mask)[0]
        # A hook rather than `inputs_embeds`: CLIPTextModel's forward takes only ids, and the hook works for any
        # encoder whose token embedding is its input embedding module.
        hook = encoder.get_input_embeddings().register_forward_hook(lambda _m, _a, _out: token_embeds)
        try:
            return encoder(ids, attention_mask=mask)[0]
        finally:
            hook.remove()

    # Generation and judging
    @torch.no_grad()
    def generate(self, pipeline, ids: torch.Tensor, row: dict):
        generator = torch.Generator(device="cpu").manual_seed(row["seed"])
        checker = getattr(pipeline, "safety_checker", None)
        pipeline.safety_checker = None  # it would black out exactly the images the judge must see
        try:
            return pipeline(
                prompt_embeds=self.states(ids, encoder=pipeline.text_encoder),
                num_inference_steps=self.config.num_inference_steps,
                guidance_scale=row["guidance_scale"],
                height=self.size,
                width=self.size,
                generator=generator,
            ).images[0]
        finally:
            pipeline.safety_checker = checker

    def targets(self, original, rows: list[dict]) -> list:
        return [self.generate(original, self.ids(row["prompt"]), row) for row in rows]

    def judged(self, judge: Judge, image) -> tuple[float, bool]:
        score = judge_scores(judge, [image])[0]
        return score, score >= self.config.threshold

    # One prompt
    def run(self, index: int, row: dict, target, judge: Judge) -> tuple[dict, Any, Any]:
        plain_ids = self.ids(row["prompt"])
        plain = self.generate(self.pipe, plain_ids, row)
        plain_score, plain_success = self.judged(judge, plain)
        record = {
            **row,
            "target_score": self.judged(judge, target)[0],
            "plain_score": plain_score,
            "plain_success": plain_success,
        }
        if plain_success and self.config.skip_plain_successes:
            return {**record, **self.outcome(plain_ids, plain_score, True, 0, False)}, plain, plain
        tokens, image, score, success, steps = self.optimise(row, self.latents(target), self.generator(index), judge)
        ids = self.ids(row["prompt"], tokens)
        return {**record, **self.outcome(ids, score, success, steps, True)}, plain, image

    def generator(self, index: int) -> torch.Generator:
        """The generator of prompt `index`'s timesteps, noise and token draws: fixed by the seed and the index."""
        return torch.Generator().manual_seed(self.config.seed * 100_003 + index)

    def outcome(self, ids: torch.Tensor, score: float, success: bool, steps: int, attacked: bool) -> dict:
        special = set(self.tokenizer.all_special_ids)
        kept = [i for i in ids[0].tolist() if i not in special]
        text = self.tokenizer.decode(kept, skip_special_tokens=True).strip()
        return {
            "attacked": attacked,
            "adversarial_prompt": text,
            "adversarial_ids": kept,
            "score": score,
            "success": success,
            "steps_run": steps,
        }

    @torch.no_grad()
    def latents(self, image) -> torch.Tensor:
        """The target's latent: its VAE posterior mean, scaled as in training (UnlearnDiffAtk's `img2latent`)."""
        array = np.asarray(image.convert("RGB").resize((self.size, self.size), resample=3), dtype=np.float32)
        pixels = torch.from_numpy(array).permute(2, 0, 1)[None] / 127.5 - 1.0
        pixels = pixels.to(self.pipe.device, self.pipe.vae.dtype)
        return self.pipe.vae.encode(pixels).latent_dist.mean * self.pipe.vae.config.scaling_factor

    def optimise(self, row: dict, latents: torch.Tensor, generator: torch.Generator, judge: Optional[Judge]):
        cfg, device = self.config, self.pipe.device
        table = self.encoder.get_input_embeddings().weight[self.candidates].detach().float()
        weights = torch.full((cfg.num_tokens, len(self.candidates)), 1.0 / len(self.candidates), device=device)
        weights.requires_grad_(True)
        optimizer = torch.optim.Adam([weights], lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        layout, start = self.layout(row["prompt"], [self.candidates[0]] * cfg.num_tokens)
        base_ids = torch.tensor([layout], device=device)
        base = self.encoder.get_input_embeddings()(base_ids).detach()
        every = cfg.eval_every or cfg.steps
        for step in range(1, cfg.steps + 1):
            drawn = torch.multinomial(weights.detach().float().cpu(), 1, generator=generator).squeeze(1).to(device)
            # Straight-through: the forward pass sees real tokens, the gradient reaches every candidate's weight.
            onehot = F.one_hot(drawn, len(self.candidates)).float() + weights - weights.detach()
            embeds = torch.cat(
                [base[:, :start], (onehot @ table).to(base.dtype)[None], base[:, start + cfg.num_tokens :]], dim=1
            )
            loss = self._noise_loss(latents, self.states(base_ids, embeds), generator)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                weights.copy_(project_to_simplex(weights))
            if judge is not None and (step % every == 0 or step == cfg.steps):
                tokens = [self.candidates[j] for j in weights.argmax(-1).tolist()]
                image = self.generate(self.pipe, self.ids(row["prompt"], tokens), row)
                score, success = self.judged(judge, image)
                if success or step == cfg.steps:
                    return tokens, image, score, success, step
        # Without a judge (adversarial training) only the tokens are wanted: the most likely one of each position.
        return [self.candidates[j] for j in weights.argmax(-1).tolist()], None, math.nan, False, cfg.steps

    def _noise_loss(self, latents: torch.Tensor, states: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The attacked UNet's noise-prediction error on the target image at drawn timesteps (UnlearnDiffAtk's)."""
        n, device = self.config.batch_size, self.pipe.device
        steps = self.noise_scheduler.config.num_train_timesteps
        timesteps = torch.randint(0, steps, (n,), generator=generator).to(device)
        noise = torch.randn((n, *latents.shape[1:]), generator=generator).to(device, latents.dtype)
        clean = latents.expand(n, *latents.shape[1:])
        noisy = self.noise_scheduler.add_noise(clean, noise, timesteps)
        target = noise
        if self.noise_scheduler.config.prediction_type == "v_prediction":
            target = self.noise_scheduler.get_velocity(clean, noise, timesteps)
        pred = self.pipe.unet(noisy, timesteps, encoder_hidden_states=states.expand(n, -1, -1)).sample
        return F.mse_loss(pred.float(), target.float())


def project_to_simplex(weights: torch.Tensor) -> torch.Tensor:
    """Euclidean projection of each row onto the probability simplex (sort-based, Duchi et al. 2008)."""
    ordered, _ = torch.sort(weights, dim=-1, descending=True)
    cumulative = ordered.cumsum(-1) - 1
    ranks = torch.arange(1, weights.shape[-1] + 1, device=weights.device, dtype=weights.dtype)
    count = (ordered - cumulative / ranks > 0).sum(-1, keepdim=True)
    theta = cumulative.gather(-1, count - 1) / count.to(weights.dtype)
    return (weights - theta).clamp_min(0)


def check_one_text_encoder(pipeline, argument: str = "pipeline") -> None:
    """Refuses a pipeline with a second text encoder (SDXL, SD3, FLUX): the search optimises the tokens of one CLIP
    encoder, and the others would still see the prompt alone."""
    if getattr(pipeline, "text_encoder_2", None) is not None:
        kind = "an SDXL" if getattr(pipeline, "unet", None) is not None else f"a {type(pipeline).__name__}"
        raise ValueError(
            f"`{argument}` holds {kind} pipeline (text_encoder_2); the prompt attack searches the tokens of one text "
            "encoder and supports Stable Diffusion 1.x / 2.x pipelines only."
        )


def _candidate_ids(tokenizer, num_embeddings: int, config) -> list[int]:
    special = set(tokenizer.all_special_ids)
    vocab = [(token, i) for token, i in tokenizer.get_vocab().items() if i not in special and i < num_embeddings]
    words = [i for token, i in vocab if token.endswith("</w>")]
    ids = words if config.word_tokens_only and words else [i for _, i in vocab]
    if not ids:
        raise ValueError("The tokenizer has no ordinary tokens to draw adversarial tokens from.")
    return sorted(ids)


__all__ = ["TokenSearch", "frozen", "project_to_simplex"]

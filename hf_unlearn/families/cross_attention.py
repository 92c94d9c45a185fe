"""What a closed-form cross-attention edit (UCE, `parts.closed_form`) needs from a text-to-image family: the key/value
projections that read the prompt's token states, and those token states for given prompts, aligned per pair."""

from __future__ import annotations

import torch
from torch import nn


class CrossAttentionStates:
    """Mixed into `TextToImageFamily` (SD 1.x/2.x, SDXL); the flow variants refuse (their text projections read
    states modulated by the timestep, which no single closed form covers)."""

    def key_value_projections(self, model: nn.Module) -> list[tuple[str, nn.Linear]]:
        """`(name, module)` of every cross-attention key and value projection (`attn2.to_k`, `attn2.to_v`)."""
        return [(n, m) for n, m in model.named_modules() if n.endswith(("attn2.to_k", "attn2.to_v"))]

    @torch.no_grad()
    def cross_attention_states(self, prompts: list[str], targets: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """The token states the key/value projections read for each prompt and its target, stacked over pairs: from
        each prompt's last word token to the end of the sequence, the longer one cut at the end so both have the
        length of the shorter (UCE's alignment: a causal encoder carries the prompt in the states after its last word).
        """
        device = next(self.model.parameters()).device
        tokens = self.tokenizer(
            list(prompts) + list(targets),
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        )
        states = self.encode_prompts(self.tokenize(list(prompts) + list(targets)).to(device))
        if isinstance(states, dict):  # SDXL: both encoders' states, concatenated, are what attn2 reads
            states = states["encoder_hidden_states"]
        last = tokens.attention_mask.sum(dim=1) - 2  # BOS, the words, EOS: the last word's position
        n, length = len(prompts), states.shape[1]
        ours, theirs = [], []
        for i in range(n):
            a, b = int(last[i]), int(last[n + i])
            far = max(a, b)
            ours.append(states[i, a : length - (far - a)])
            theirs.append(states[n + i, b : length - (far - b)])
        dim = states.shape[-1]
        if not ours:
            return states.new_zeros(0, dim), states.new_zeros(0, dim)
        return torch.cat(ours).float().cpu(), torch.cat(theirs).float().cpu()

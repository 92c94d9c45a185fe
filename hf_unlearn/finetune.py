"""Plain fine-tuning of a model with its family's own per-sample loss: what the relearning and resurgence attacks
run on an unlearned model, and how the tiny colour model is trained. Below the attacks and the tiny models, which
both use it; it needs nothing but a family."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from accelerate.utils import set_seed


def finetune_steps(
    family, module, dataset, *, steps: int, learning_rate: float, batch_size: int, seed: int, optim: str = "adam"
) -> Iterator[float]:
    r"""Plain fine-tuning of `module` on `dataset` with the family's per-sample loss; yields each step's mean loss.

    The module stays in eval mode: batch-norm statistics of a few rows of one class would otherwise shift the model
    for every class and blur what the attack measures, and dropout would add noise to a 5-row curve.
    """
    set_seed(seed)  # diffusion families draw their noise and timesteps from the global generator
    loader = family.make_dataloader(dataset, batch_size=batch_size, shuffle=True, seed=seed)
    params = [p for p in module.parameters() if p.requires_grad]
    if optim == "sgd":
        optimizer = torch.optim.SGD(params, lr=learning_rate)
    else:
        optimizer = torch.optim.Adam(params, lr=learning_rate)
    device = next(module.parameters()).device
    batches = _forever(loader)
    for _ in range(steps):
        batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in next(batches).items()}
        loss = family.per_sample_loss(module, batch).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        yield float(loss.detach())


def _forever(loader) -> Iterator[dict]:
    while True:
        yield from loader  # a seeded loader reshuffles each pass in the same way for the same seed

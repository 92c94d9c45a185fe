"""What a method computes at θ0, before unlearning starts: its saliency mask and its geometry's state."""

from __future__ import annotations

import os
import time
from typing import Any

from .fsdp import gathered_mask
from .parts import SaliencyInputs, load_mask, pass_statistic, save_mask
from .utils import apply_umask


def mask_and_geometry(unlearner, ctx, named, split, accelerator) -> tuple[float, Any, Any]:
    """The method's mask and its geometry's state, from passes at θ0 in eval mode, as the authors: no BatchNorm
    statistics rewritten, no dropout, before unlearning starts; train mode restored. A computed mask is saved to the
    output folder. Returns the mask's time, the mask (`None`: no saliency) and the geometry's state."""
    cfg, method, counter = unlearner.config, unlearner.method, unlearner._counter
    start = time.perf_counter()
    module = accelerator.unwrap_model(ctx.model)

    def statistic(dataset, rows, clip_norm=None, square=True):
        left, size = [len(dataset)], cfg.per_device_train_batch_size * accelerator.num_processes

        def count():  # one global batch of the seeded pass: its rows over all processes
            counter.backward(min(size, left[0]), global_rows=True)
            left[0] -= size

        return pass_statistic(unlearner.family, cfg, accelerator, named, dataset, rows, clip_norm, square, count)

    inputs = SaliencyInputs(unlearner.family, cfg, module, named, split, statistic)
    training = module.training
    module.eval()
    try:
        if method.saliency is None:
            mask = None
        elif cfg.mask_path:
            mask = load_mask(cfg.mask_path, named)
        else:
            with counter.counting("saliency"):
                mask = method.saliency.compute(inputs)
        saliency_s = time.perf_counter() - start
        with counter.counting("geometry"):
            geometry_state = method.geometry.setup(inputs)
    finally:
        module.train(training)
    whole = gathered_mask(mask)  # on every rank: under FSDP2 an all-gather of the shards
    if mask is not None and not cfg.mask_path and accelerator.is_main_process and cfg.output_dir:
        os.makedirs(cfg.output_dir, exist_ok=True)
        path = os.path.join(cfg.output_dir, "saliency_mask.safetensors")
        save_mask(whole, path)
        apply_umask(path)  # save_mask writes through a 0600 temporary file
        saliency_s = time.perf_counter() - start
    return saliency_s, mask, geometry_state

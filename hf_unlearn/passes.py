"""What a run costs in passes of the model: forward and backward passes by kind, the currency that does not depend
on the hardware or on how busy it is (wall time on a shared CPU says little about a GPU at scale)."""

from __future__ import annotations

import contextlib
import math
from typing import Optional

import torch
from torch import nn

# saliency: the mask's passes at θ0; geometry: the geometry's own passes at θ0 (EWC's Fisher); forget / remain: the
# steps' batches; replay: the original model's forwards that generate the replayed remain set (generative replay).
KINDS = ("saliency", "geometry", "forget", "remain", "replay")


def new_work() -> dict:
    """The `work` dict of an [`UnlearnResult`] and of `unlearning_record.json`.

    - `optimizer_steps`, `forget_steps`, `remain_steps`: optimizer steps, and those that took a forget / remain
      gradient (a joint step counts in both).
    - `passes[kind]`: backward passes of the trained model, one per batch (each after its own forward).
    - `rows[kind]`: rows through those backward passes, over all processes.
    - `forward[kind]`: forward calls of the trained model and of its frozen copies (the original, a teacher); it
      includes the forwards of `passes[kind]`, so `forward - passes` is the forward-only work (frozen models,
      generation).
    """
    return {
        "optimizer_steps": 0,
        "forget_steps": 0,
        "remain_steps": 0,
        "passes": dict.fromkeys(KINDS, 0),
        "rows": dict.fromkeys(KINDS, 0),
        "forward": dict.fromkeys(KINDS, 0),
    }


class PassCounter:
    """Counts passes into a `work` dict (see [`new_work`]) under the kind set by [`PassCounter.counting`].

    Forwards are counted by a forward pre-hook on each watched module, so every call is seen whatever part makes it
    (a distillation teacher, a guided prediction, a sampling loop); backward passes are counted where the loop calls
    them. The hooks only add to a counter: results are unchanged. [`PassCounter.close`] removes them.
    """

    def __init__(self, num_processes: int = 1):
        self.work = new_work()
        self.kind: Optional[str] = None
        self.num_processes = num_processes
        self._handles: list = []
        self._watched: set[int] = set()

    def watch(self, *modules: Optional[nn.Module]) -> None:
        for module in modules:
            if module is not None and id(module) not in self._watched:
                self._watched.add(id(module))
                self._handles.append(module.register_forward_pre_hook(self._on_forward))

    def _on_forward(self, module, args) -> None:
        if self.kind is not None:
            self.work["forward"][self.kind] += 1

    @contextlib.contextmanager
    def counting(self, kind: str):
        """Counts the passes made inside the block as `kind`."""
        if kind not in KINDS:
            raise ValueError(f"pass kind {kind!r}; choose one of {KINDS}.")
        previous, self.kind = self.kind, kind
        try:
            yield self
        finally:
            self.kind = previous

    def backward(self, rows: int, global_rows: bool = False) -> None:
        """One backward pass of the current kind over `rows` rows (this process's, unless `global_rows`)."""
        self.work["passes"][self.kind] += 1
        self.work["rows"][self.kind] += int(rows) * (1 if global_rows else self.num_processes)

    def agree(self, accelerator) -> None:
        """Makes every process report the same forward counts: the busiest process's. A process with no rows in the
        last global batch of a saliency pass skips that forward; the first process never does, so the maximum is the
        count one process makes over the same data."""
        if self.num_processes == 1:
            return
        counts = torch.tensor([self.work["forward"][kind] for kind in KINDS], device=accelerator.device)
        agreed = accelerator.gather(counts.reshape(1, -1)).max(dim=0).values.tolist()
        self.work["forward"] = {kind: int(n) for kind, n in zip(KINDS, agreed)}

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles, self._watched = [], set()


def step_rows(iterator, batch_rows: int, row_valid, num_processes: int) -> int:
    """Real rows of one step batch over all processes: every process's batch, or in a last batch that accelerate
    completed with repeated rows (`row_valid` set), only the rows left in the epoch."""
    if row_valid is None:
        return batch_rows * num_processes
    loader = iterator.loader
    return loader.total_dataset_length - (len(loader) - 1) * loader.total_batch_size


def training_rows(work: dict) -> int:
    """Rows through forward+backward passes of the trained model, all kinds: the cost compared with retraining."""
    return int(sum((work.get("rows") or {}).values()))


def _loader_rows(num_rows: int, batch: int, count: int) -> int:
    """Rows in the first `count` batches of a loader that runs epoch after epoch (the last batch of each short)."""
    if num_rows == 0 or count == 0:
        return 0
    sizes = [min(batch, num_rows - start) for start in range(0, num_rows, batch)]
    full, part = divmod(count, len(sizes))
    return full * num_rows + sum(sizes[:part])


def planned_work(config, method, num_forget: int, num_remain: int) -> dict:
    """The passes and rows a fresh single-process run of `config` (resolved) and `method` makes on a split of these
    sizes, without running it: the cost of a recipe at a scale one cannot run here (tests check it against the
    engine's counts). Forward-only work (frozen models, generative replay) is not planned."""
    work, batch = new_work(), config.per_device_train_batch_size
    limit = config.saliency_max_batches

    def full_pass(kind: str, rows: int) -> None:
        batches = math.ceil(rows / batch) if limit is None else min(math.ceil(rows / batch), limit)
        work["passes"][kind] += batches
        work["rows"][kind] += min(rows, batches * batch)

    saliency = getattr(method.saliency, "name", None)
    if saliency is not None and not config.mask_path:
        full_pass("saliency", num_forget)
        if saliency == "fisher_ratio":
            full_pass("saliency", num_remain)
        elif saliency != "topk":
            raise ValueError(f"planned_work knows the passes of 'fisher_ratio' and 'topk', not of {saliency!r}.")
    if method.geometry.name == "ewc":
        full_pass("geometry", num_remain)
    accum, has_remain = config.gradient_accumulation_steps, method.remain_loss is not None
    for step in range(config.max_steps):
        forget_on = method.forget_loss is not None and step < config.max_steps * (config.forget_steps_fraction or 1.0)
        for plan in method.geometry.steps(config, forget_on, has_remain):
            work["optimizer_steps"] += 1
            for kind, on in (("forget", plan.forget and forget_on), ("remain", plan.remain and has_remain)):
                if on:
                    work[f"{kind}_steps"] += 1
                    work["passes"][kind] += accum
    for kind, rows in (("forget", num_forget), ("remain", num_remain)):
        work["rows"][kind] = _loader_rows(rows, batch, work["passes"][kind])
    work["forward"] = {kind: work["passes"][kind] for kind in KINDS}
    return work

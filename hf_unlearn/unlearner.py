"""`Unlearner`: loads a model of any family and runs one unlearning loop, the same for every method."""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Optional

import torch
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from .checkpointing import EngineState, continue_run, endless_at, resolve_checkpoint, run_identity, save_checkpoint
from .config import UnlearnConfig
from .evaluation import evaluate as evaluate_classifier
from .fsdp import Fsdp2, check_layout, fsdp_requested, gathered_mask, mask_like
from .guard import DivergenceError, check_finite_model, watched_tensors
from .hub import push_to_hub as push_unlearned
from .hub import save_unlearned
from .last_good import LastGood, check_finite
from .loading import load_family
from .lora import (
    base_buffers,
    prepare_model,
    restore_base_buffers,
)
from .methods import get_method
from .metrics.concept import concept_metrics
from .parts import Step, StepContext, mask_fraction
from .passes import PassCounter, step_rows
from .requests import accumulate, keep_start, measure_after_run
from .resolve import resolve_config
from .run_checks import check_run_inputs
from .run_lock import claim_output_dir, unlock_output_dir
from .stopping import HeldOutStop
from .theta0 import mask_and_geometry
from .tracking import check_log_with, start_tracking, stop_tracking
from .training import alpha_at, build_optimizer, check_sharding, lr_schedule, make_accelerator, seed_sampler
from .utils import get_logger
from .validation import (
    all_finite,
    check_finite_weights,
    check_not_source,
    check_run_output_dir,
    check_split_kind,
)

logger = get_logger(__name__)
REMAIN_SEED_OFFSET = 1_000_003  # remain shuffling seed: seed + this (torch seeds its CPU generator with 32 bits)


@dataclass
class UnlearnResult:
    """What a run did: per-cycle history, timings, and the forget set it answered."""

    method: str
    history: list[dict] = field(default_factory=list)
    runtime_s: float = 0.0
    saliency_runtime_s: float = 0.0
    fingerprint: str = ""
    num_forget: int = 0
    steps: int = 0
    mask_fraction: Optional[float] = None
    metrics: Optional[dict] = None
    # What the run cost: optimizer steps by kind and forward/backward passes of the trained model by kind.
    work: dict = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Unlearner:
    r"""Makes a trained model forget a forget set while keeping what it knows of the rest.

    Args:
        family ([`ModelFamily`]): the loaded model and its family (see [`Unlearner.from_pretrained`]).
        config ([`UnlearnConfig`], *optional*): the method and its hyperparameters; `None` fields are resolved from
            the method's and the family's defaults.
    """

    def __init__(self, family, config: Optional[UnlearnConfig] = None):
        config = config or UnlearnConfig()
        self.family = family
        # Also refuses a method that does not support the family; the model's own facts (e.g. DiT's clipping) first.
        self.config = resolve_config(config, family.name, model_defaults=family.model_defaults())
        self.method = get_method(self.config.method, family.name)
        # The budget as given or defaulted; each split turns it into cycles for its own forget-set size.
        self._budget = {"max_steps": self.config.max_steps, "num_forget_epochs": self.config.num_forget_epochs}
        self._budget_fixed = tuple(self._budget.values())  # what the last split fixed it to
        self.mask: Optional[dict[str, torch.Tensor]] = None
        self._fsdp: Optional[Fsdp2] = None  # the run's FSDP2 sharding, under an FSDP launch
        self.result: Optional[UnlearnResult] = None
        self.metrics_before: Optional[dict] = None  # the model's metrics before the current run (record, card)
        self.records: list[dict] = list(getattr(family, "previous_records", []))
        self.source = getattr(family, "source", None)

    @classmethod
    def from_pretrained(
        cls,
        model_or_path,
        config: Optional[UnlearnConfig] = None,
        *,
        family: Optional[str] = None,
        image_processor=None,
        transform=None,
        trust_remote_code: bool = False,
        row_key: Optional[str | bytes] = None,
        **kwargs,
    ) -> Unlearner:
        """Loads a model object, a local folder or a Hub repo id and detects its family (or takes `family`).

        An adapter folder (a LoRA output: `adapter_config.json` without `config.json`) loads its base model from the
        `base_model_name_or_path` it names, as `peft.AutoPeftModel` does, with the adapter merged into it
        (`lora=True`): a further deletion request trains a new adapter, saved stacked with the earlier one, and extends
        the folder's record. A Stable Diffusion LoRA output has its adapter fused into the UNet likewise (see
        docs/lora.md).

        `row_key` is the data owner's key for recognising forgotten rows across requests (else the
        `HF_UNLEARN_ROW_KEY` environment variable; see [`hf_unlearn.requests`]). It is never saved.
        """
        config = config or UnlearnConfig()
        family_obj, config = load_family(
            model_or_path,
            config,
            family,
            image_processor=image_processor,
            transform=transform,
            trust_remote_code=trust_remote_code,
            **kwargs,
        )
        unlearner = cls(family_obj, config)
        unlearner.row_key = row_key
        return unlearner

    def input_paths(self) -> list:
        """The folders this model was read from (the model, an adapter's base): never written."""
        return [self.source, *getattr(self.family, "input_paths", [])]

    @property
    def model(self) -> torch.nn.Module:
        return self.family.model

    # The loop
    def unlearn(self, split) -> UnlearnResult:
        """Runs the method on `split` (a [`ForgetRemainSplit`] or a concept split) and returns an [`UnlearnResult`]."""
        cfg, method = self.config, self.method
        self.metrics_before = self.result.metrics if self.result is not None else self.metrics_before
        self._request_split = split = self.validate(split)  # the record's digests of forgotten rows come from it
        cfg = self.config  # validate fixed the budget in cycles for this split
        check_log_with(cfg.log_with)  # before the Accelerator: accelerate drops a missing tracker silently
        accelerator = make_accelerator(cfg)
        check_sharding(accelerator.distributed_type, method, cfg)
        held = True  # one writer per folder: taken here unless this process holds it already (the CLI, for its run)
        if accelerator.is_main_process and self._writes_output_dir():
            held = claim_output_dir(cfg.output_dir)
        start_tracking(accelerator, cfg, method.name)
        set_seed(cfg.seed)
        self.family.num_workers = cfg.dataloader_num_workers
        self._lr_unit = _lr_unit(method, cfg)
        self._lr_at = lr_schedule(
            cfg.lr_scheduler_type, cfg.max_steps * self._lr_unit, cfg.warmup_steps * self._lr_unit
        )
        start = time.perf_counter()
        self._counter = counter = PassCounter(accelerator.num_processes)
        self._work = counter.work
        if method.remain_loss is not None:  # e.g. generative replay: samples of θ0, so before any step
            counter.watch(self.family.model)
            with counter.counting("replay"):
                split = method.remain_loss.prepare_split(split, self.family, cfg, accelerator.device)
            counter.close()  # a frozen copy made later must not carry this hook: it gets its own
        if method.reinit:
            self.family.model = self.family.fresh_model(cfg.retrain_init)
        if cfg.lora or cfg.gradient_checkpointing:  # before the optimizer: it must see only the adapters
            self.family.model = prepare_model(self.family, cfg)
        ctx, named, optimizer, forget_loader, remain_loader = self._prepare(split, accelerator)
        # Unmeasured "before": kept to measure it after the run. Base buffers under LoRA: kept to put them back.
        self._start_state, self.earlier_metrics = keep_start(self, method, [p for _, p in named]), None
        frozen = base_buffers(self.family.model) if cfg.lora else None
        params = [p for _, p in named]
        self._guard = LastGood(watched_tensors(accelerator.unwrap_model(ctx.model), params), cfg)  # buffers too
        identity = run_identity(cfg, method.name, split.fingerprint, [n for n, _ in named])
        resume = self._load_resume(identity, accelerator)
        run_id, before = continue_run(resume, self._work)  # a resumed run keeps its id and counts the whole run
        counter.watch(accelerator.unwrap_model(ctx.model), ctx.original, ctx.teacher)
        if resume is None:
            saliency_s, geometry_state = self._at_theta0(ctx, named, split, accelerator)
        else:  # the saved mask and geometry state: recomputing them would draw other batches and change the result
            saliency_s, self.mask, geometry_state = 0.0, mask_like(resume.mask, named), resume.ewc
        first, forget_it, remain_it, history = self._start_position(
            ctx, forget_loader, remain_loader, resume, accelerator
        )
        stop = HeldOutStop.build(self.family, split, cfg)  # None: the budget as given
        total = cfg.max_steps if stop is None else stop.total
        bar = tqdm(
            range(first, total),
            initial=first,
            total=total,
            desc=f"unlearn[{method.name}]",
            disable=not accelerator.is_local_main_process,
        )
        self._diverged = None
        try:
            for step in bar:
                logs = self._cycle(
                    ctx, optimizer, params, named, forget_it, remain_it, step, accelerator, geometry_state
                )
                history.append(logs)
                if accelerator.is_local_main_process and step % cfg.logging_steps == 0:
                    bar.set_postfix({k: round(v, 4) for k, v in logs.items() if k.endswith("loss")})
                    accelerator.log(logs, step=step)
                if cfg.checkpointing_steps and (step + 1) % cfg.checkpointing_steps == 0:
                    state = EngineState(
                        step + 1,
                        _consumed(forget_it, remain_it),
                        identity,
                        history,
                        mask=gathered_mask(self.mask),
                        ewc=geometry_state,
                        generator_state=ctx.generator.get_state(),
                        run_id=run_id,
                        work=self._work,
                        runtime_s=before["runtime_s"] + time.perf_counter() - start,
                        saliency_runtime_s=before["saliency_runtime_s"] + saliency_s,
                    )
                    save_checkpoint(accelerator, cfg.output_dir, state, cfg.checkpoints_total_limit, self._fsdp)
                model = accelerator.unwrap_model(ctx.model)
                action = "continue" if stop is None else stop.after_cycle(model, step + 1)
                if action == "stop":
                    history[-1].update({f"stop_{k}": v for k, v in stop.last.items()})
                    total = step + 1
                    break
        except DivergenceError as err:  # the buffers a forward of the failed step moved go back too
            self._diverged = " ".join(str(err).split())[:200]
            self._guard.restore()
            raise
        finally:  # the divergence guard's copy is only needed inside the loop, also when it ends in an error
            self._guard = None
            if not held:  # save_pretrained takes it again for its own writes
                unlock_output_dir(cfg.output_dir)
            counter.close()
        counter.agree(accelerator)
        accelerator.wait_for_everyone()
        stop_tracking(accelerator)
        # Under FSDP2 the result is a plain model with the gathered full weights, and a whole mask, on every rank.
        self.family.model = self._fsdp.gather() if self._fsdp else accelerator.unwrap_model(ctx.model)
        self.mask, self._fsdp = gathered_mask(self.mask), None
        self.family.model.eval()
        if frozen is not None:  # the saved adapter does not hold the base: the model must be what reloads
            restore_base_buffers(frozen)
        runtime = before["runtime_s"] + time.perf_counter() - start
        saliency_s += before["saliency_runtime_s"]
        self.result = UnlearnResult(
            method=method.name,
            history=history,
            runtime_s=runtime,
            saliency_runtime_s=saliency_s,
            fingerprint=split.fingerprint,
            num_forget=len(getattr(split, "forget_indices", []) or []),
            steps=total,
            mask_fraction=None if self.mask is None else mask_fraction(self.mask),
            work=self._work,
        )
        self._split_info = split.describe()
        logger.info(f"{method.name}: {total} cycles in {runtime:.1f}s (saliency {saliency_s:.1f}s)")
        return self.result

    def validate(self, split):
        """Prepares `split` for this model (text-to-image: generates or loads the concept images) and runs every check
        `unlearn` runs before any weight changes: columns, labels, channels, resolution, finite weights, the output
        folder. Returns the prepared split; raises `ValueError` naming the argument at fault."""
        check_split_kind(self.family.name, split)
        split = accumulate(self, split)  # the earlier requests' forget sets stay out of its remain set
        needs_remain = self.method.remain_loss is not None or self.method.saliency is not None
        split = self.family.prepare_split(split, self.config, needs_remain=needs_remain)
        self.family.validate_split(split)
        self.config = self._budget_for(split)
        self._validate_run()
        return split

    def _budget_for(self, split) -> UnlearnConfig:
        """The config with `max_steps` fixed: a budget in passes over the forget set becomes cycles for this split."""
        cfg = self.config
        if (cfg.max_steps, cfg.num_forget_epochs) != self._budget_fixed:  # set by the caller since: that budget runs
            self._budget = {"max_steps": cfg.max_steps, "num_forget_epochs": cfg.num_forget_epochs}
        cfg = replace(cfg, **self._budget)
        if cfg.num_forget_epochs is not None:
            rows = getattr(split, "forget_indices", None)
            rows = len(rows) if rows is not None else len(split.forget)
            # The launcher's world size: making the process state here, before the Accelerator, would fix it too early.
            world = int(os.environ.get("WORLD_SIZE", "1"))
            cfg = cfg.resolve_budget(rows, cfg.per_device_train_batch_size * world * cfg.gradient_accumulation_steps)
        self._budget_fixed = (cfg.max_steps, cfg.num_forget_epochs)
        return cfg

    def _writes_output_dir(self) -> bool:
        """Whether the run writes into `output_dir`: a computed saliency mask, checkpoints, a resume."""
        cfg = self.config
        mask = self.method.saliency is not None and not cfg.mask_path
        return bool(cfg.output_dir) and bool(mask or cfg.checkpointing_steps or cfg.resume_from_checkpoint)

    def _validate_run(self) -> None:
        """Checks that need the model and config together; run before any weight changes."""
        check_finite_weights(self.model)
        # A masked method under an FSDP / DeepSpeed launch: refused here, before the Accelerator and any weight change.
        check_sharding(None, self.method, self.config)
        if self.config.saliency_guidance_scale is not None and self.family.name == "image_classifier":
            raise ValueError(
                "`saliency_guidance_scale` is set, but the image_classifier family has no guided prediction; leave it "
                "unset (it is for diffusion Fisher passes)."
            )
        check_not_source(self.config.output_dir, self.input_paths())
        check_run_inputs(self.config, self.method, self.model)  # checkpoint, mask, retrain start, LoRA targets
        self.method.geometry.check(self.family, self.config)
        if self.config.checkpointing_steps or self.config.resume_from_checkpoint:
            check_run_output_dir(self.config)

    def _cycle(self, ctx, optimizer, params, named, forget_it, remain_it, step, accelerator, geometry_state) -> dict:
        """One cycle: the steps the method's geometry plans (fast-slow: a forget step then K remain steps; otherwise
        one joint step), then the β interpolation toward the weights at the start of the cycle."""
        cfg, method, total = self.config, self.method, self.config.max_steps
        ctx.step = step
        local = step % total  # a round repeated by `stop_rule` restarts the schedules; otherwise local == step
        alpha = alpha_at(local, total, cfg.forget_alpha, cfg.forget_alpha_schedule)
        forget_on = method.forget_loss is not None and local < total * (cfg.forget_steps_fraction or 1.0)
        before = [p.detach().clone() for p in params] if cfg.interpolation_beta < 1 else None
        logs = {"step": step, "lr": cfg.learning_rate * self._lr_at(local * self._lr_unit), "alpha": alpha}
        fast = 0  # remain-only steps of this cycle so far: each advances a per-remain-step schedule
        for plan in method.geometry.steps(cfg, forget_on, method.remain_loss is not None):
            # The authors' loop: the forget step takes the rate of the cycle's first remain step.
            rate = cfg.learning_rate * self._lr_at(local * self._lr_unit + min(fast, self._lr_unit - 1))
            for group in optimizer.param_groups:
                group["lr"] = rate
            fast += plan.remain and not plan.forget
            logs |= self._step(
                ctx,
                optimizer,
                params,
                named,
                forget_it if plan.forget else None,
                remain_it if plan.remain else None,
                alpha,
                accelerator,
                plan,
                geometry_state,
            )
        if before is not None:
            with torch.no_grad():
                for p, old in zip(params, before):
                    p.lerp_(old, 1.0 - cfg.interpolation_beta)
        return logs

    def _load_resume(self, identity: dict, accelerator) -> Optional[EngineState]:
        """The engine state to resume from, checked against this run; `None` for a fresh run."""
        cfg = self.config
        folder = resolve_checkpoint(cfg.resume_from_checkpoint, cfg.output_dir)
        if folder is None:
            return None
        state = EngineState.load(folder, rank=accelerator.process_index, device=accelerator.device)
        state.check_identity(identity, folder)
        check_layout(folder, accelerator.num_processes if self._fsdp else None)
        return state

    def _start_position(self, ctx, forget_loader, remain_loader, resume, accelerator):
        """Endless loaders at the data position of `resume` (or the start), and the weights/optimizer/RNG it saved."""
        consumed = resume.consumed if resume is not None else {}
        forget_it, remain_it = (
            None if dl is None else endless_at(dl, consumed.get(key, 0))
            for key, dl in (("forget", forget_loader), ("remain", remain_loader))
        )
        if resume is None:
            return 0, forget_it, remain_it, []
        # Restored after positioning the loaders, so the RNG states are exactly those of the save.
        accelerator.load_state(str(resume.folder))
        if self._fsdp is not None:  # the model and optimizer are not accelerate's under FSDP2: their shards
            self._fsdp.load(resume.folder)
        if resume.generator_state is not None:
            ctx.generator.set_state(resume.generator_state)
        logger.info(f"Resumed from {resume.folder} at cycle {resume.step}.")
        return resume.step, forget_it, remain_it, list(resume.history)

    def _prepare(self, split, accelerator):
        """Trainable parameters, the parts' auxiliary models (set up from θ0), optimizer and step loaders, prepared by
        accelerate, in a `StepContext` the parts read."""
        cfg, method, family = self.config, self.method, self.family
        model = family.model
        model.train()
        named = [
            (n, p) for n, p in model.named_parameters() if p.requires_grad and family.trainable_parameter_filter(n)
        ]
        if not named:
            raise ValueError("The model has no trainable parameters for this configuration (check `train_modules`).")
        generator = torch.Generator().manual_seed(cfg.seed + 1000 * accelerator.process_index)
        ctx = StepContext(
            family=family,
            model=model,
            config=cfg,
            forget_classes=getattr(split, "forget_classes", None),
            gather=accelerator.gather,
            num_processes=accelerator.num_processes,
            generator=generator,
        )
        for part in (method.forget_loss, method.remain_loss):  # frozen originals, teachers: from θ0, before any step
            if part is not None:
                part.setup(ctx)
        # FSDP2 shards made here rather than by `accelerator.prepare` (which cannot on CPU): see hf_unlearn/fsdp.py.
        self._fsdp = Fsdp2(model) if fsdp_requested(accelerator) else None
        if self._fsdp is not None:
            named = self._fsdp.shard([n for n, _ in named])
        optimizer = build_optimizer([p for _, p in named], cfg)
        batch = cfg.per_device_train_batch_size
        # The saliency passes read the datasets themselves (`pass_statistic`); these loaders feed the steps only.
        forget_loader = (
            family.make_dataloader(split.forget, batch_size=batch, shuffle=True, seed=cfg.seed)
            if method.forget_loss is not None
            else None
        )
        remain_loader = (
            family.make_dataloader(split.remain, batch_size=batch, shuffle=True, seed=cfg.seed + REMAIN_SEED_OFFSET)
            if method.remain_loss is not None
            else None
        )
        if self._fsdp is None:
            ctx.model, optimizer = accelerator.prepare(model, optimizer)
        else:
            self._fsdp.optimizer = optimizer
        forget_loader, remain_loader = (
            None if dl is None else seed_sampler(accelerator.prepare_data_loader(dl), seed)
            # The samplers reseed every epoch with seed + epoch, so the remain seed sits far from the forget seed.
            for dl, seed in ((forget_loader, cfg.seed), (remain_loader, cfg.seed + REMAIN_SEED_OFFSET))
        )
        for name in ("original", "teacher"):
            if getattr(ctx, name) is not None:
                setattr(ctx, name, getattr(ctx, name).to(accelerator.device))
        return ctx, named, optimizer, forget_loader, remain_loader

    def _step(
        self, ctx, optimizer, params, named, forget_it, remain_it, alpha, accelerator, plan: Step, geometry_state
    ) -> dict:
        """One optimizer step as `plan` says: forget and/or remain gradients, the mask, the geometry's penalty,
        clipping at `plan.clip`, the divergence guard."""
        cfg, logs, work = self.config, {}, self._work
        clip = plan.clip
        if cfg.divergence_guard == "copy":  # before the forward passes, which move the BatchNorm buffers
            self._guard.keep()
        accum = cfg.gradient_accumulation_steps
        optimizer.zero_grad(set_to_none=True)
        if forget_it is not None:
            work["forget_steps"] += 1
            for i in range(accum):
                sync = remain_it is None and i == accum - 1
                batch = next(forget_it)
                ctx.row_valid = forget_it.valid_rows(accelerator, self.family.batch_size_of(batch))
                self._count_step("forget", forget_it, batch, ctx.row_valid)
                with (
                    self._counter.counting("forget"),
                    accelerator.autocast(),
                    _maybe_no_sync(accelerator, ctx.model, sync),
                ):
                    loss, part_logs = self.method.forget_loss(ctx, batch)
                    check_finite(loss, "forget loss", ctx.step, cfg)
                    accelerator.backward(alpha * loss / accum)
                logs |= part_logs
            if self.mask is not None:
                self._apply_mask(named)
        if remain_it is not None:
            work["remain_steps"] += 1
            for i in range(accum):
                batch = next(remain_it)
                ctx.row_valid = remain_it.valid_rows(accelerator, self.family.batch_size_of(batch))
                self._count_step("remain", remain_it, batch, ctx.row_valid)
                with (
                    self._counter.counting("remain"),
                    accelerator.autocast(),
                    _maybe_no_sync(accelerator, ctx.model, i == accum - 1),
                ):
                    loss, part_logs = self.method.remain_loss(ctx, batch)
                    penalty = self.method.geometry.penalty(geometry_state, named, cfg)
                    if penalty is not None:
                        loss = loss + penalty
                    check_finite(loss, "remain loss", ctx.step, cfg)
                    accelerator.backward(loss / accum)
                logs |= part_logs
            if self.mask is not None and self.method.mask_scope == "all":
                self._apply_mask(named)
        guard = cfg.divergence_guard
        if clip:
            norm = accelerator.clip_grad_norm_(params, clip)
            check_finite(norm, "gradient norm", ctx.step, cfg)
            logs["grad_norm"] = float(norm)
        elif guard == "check":  # no clipping norm to look at: the weights are still the last good ones here
            grads = [p.grad.detach() for p in params if p.grad is not None]
            if not all_finite(grads):  # the largest |g| names the offending value in the message
                check_finite(torch.stack([g.abs().max() for g in grads]).max(), "gradient", ctx.step, cfg)
        optimizer.step()
        work["optimizer_steps"] += 1
        if guard != "off":
            self._guard.check(ctx.step)
        return logs

    def _count_step(self, kind: str, iterator, batch, row_valid) -> None:
        rows = step_rows(iterator, self.family.batch_size_of(batch), row_valid, self._counter.num_processes)
        with self._counter.counting(kind):
            self._counter.backward(rows, global_rows=True)

    def _apply_mask(self, named) -> None:
        for name, p in named:
            if p.grad is not None:
                p.grad.mul_(self.mask[name].to(p.grad.dtype))

    def _at_theta0(self, ctx, named, split, accelerator) -> tuple[float, Any]:
        """The method's mask (kept in `self.mask`) and its geometry's state at θ0; returns the mask's time too."""
        saliency_s, self.mask, geometry_state = mask_and_geometry(self, ctx, named, split, accelerator)
        return saliency_s, geometry_state

    # Evaluation and saving live in their own modules; these are thin entry points.
    def evaluate(self, split, reference=None, **kwargs) -> dict:
        """Metrics of the current model on `split`, which is checked first as `unlearn` checks it.

        Classifiers: FA, RA, TA, MIA, ... (see [`hf_unlearn.evaluate`]); text-to-image: `concept_gap` and
        `remain_noise_loss` (see [`~metrics.concept.concept_metrics`]). They are kept by [`record_metrics`].
        """
        check_finite_model(self, "evaluate")  # a diverged model would fail deep inside a metric, or score garbage
        if self.family.name == "text_to_image":
            if reference is not None:
                raise ValueError("`reference` (a retrained model for KL/JS/Avg.D) is for classifiers; leave it unset.")
            split = self.validate(split)

            def measure():
                return concept_metrics(self.family, split, **kwargs)
        else:
            split = accumulate(self, split, refuse=False)  # scores only: what cannot be recognised stays in

            def measure():
                return evaluate_classifier(self, split, reference=reference, **kwargs)

        measure_after_run(self, split, measure)  # the start model's metrics, earlier forget sets measured again
        return self.record_metrics(measure())

    def record_metrics(self, metrics: dict) -> dict:
        """Keeps `metrics` for the record and the model card's before/after table, and returns them.

        Until a run has finished they are the "before" metrics, afterwards the run's (`UnlearnResult.metrics`). Use it
        for metrics computed outside [`evaluate`], e.g. `generation_metrics` with a judge for class-conditional
        diffusion or `evaluate_nudity(...).to_dict()` for Stable Diffusion.
        """
        if self.result is None:
            self.metrics_before = metrics
        else:
            self.result.metrics = metrics
        return metrics

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs) -> None:
        """Writes the model (native format, safetensors), `unlearn_config.json`, the record and the model card."""
        save_unlearned(self, save_directory, **kwargs)

    def push_to_hub(self, repo_id: str, **kwargs) -> str:
        return push_unlearned(self, repo_id, **kwargs)


def _lr_unit(method, cfg) -> int:
    """Schedule positions per cycle: the remain-only steps of a full cycle under `lr_schedule_steps="remain"` (the
    authors step their cosine at every remain iteration), else 1 (one rate per cycle)."""
    if cfg.lr_schedule_steps != "remain":
        return 1
    plan = method.geometry.steps(cfg, method.forget_loss is not None, method.remain_loss is not None)
    return max(1, sum(1 for s in plan if s.remain and not s.forget))


def _consumed(forget_it, remain_it) -> dict[str, int]:
    return {
        "forget": forget_it.consumed if forget_it is not None else 0,
        "remain": remain_it.consumed if remain_it is not None else 0,
    }


def _maybe_no_sync(accelerator, model, sync: bool):
    if sync or accelerator.num_processes == 1:
        return contextlib.nullcontext()
    return accelerator.no_sync(model)

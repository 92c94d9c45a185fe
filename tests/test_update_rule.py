"""The whole SFR-on update, run through the public API, against the paper's equations computed here by autograd.

Every case uses plain SGD (no momentum, no weight decay), constant learning rate, and sets small enough that each
forget and remain batch holds the whole set, so the expected weights follow from the equations alone:

    slow step:  θ ← θ − η · clip(α_t · M ⊙ ∇_θ(∓ Σ_i w_i ℓ_i))      w_i = ℓ_i^(∓λ) / Σ_j ℓ_j^(∓λ)  (detached)
    fast steps: θ ← θ − η · clip(∇_θ mean_i ℓ_r,i)                    K times, unmasked
    then        θ ← β·θ + (1 − β)·θ_cycle_start

with M_k = [(F_f,k + ε) / (F_r,k + ε) ≥ γ], ε = 1e-15, F = (∇ mean loss)² at θ0 in eval mode. The upper signs are
ascent (SFR-on as published: the rows with the *lowest* loss get the most weight); the lower ones a part that descends
toward a target (remap: the rows *farthest* from it get the most weight).
"""

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from hf_unlearn import UnlearnConfig, Unlearner
from hf_unlearn.methods import Remap, TaskLoss, UnlearnMethod, register_method
from hf_unlearn.methods import base as method_registry
from hf_unlearn.tiny.classifiers import TrainingRecipe, tiny_classifier, train_classifier

LR, ALPHA, LAMBDA = 0.05, 2.0, 0.5
REMAP_TARGET = 0


@pytest.fixture(scope="module")
def setting(digits, processor, one_batch_split):
    """A tiny ViT trained briefly (so per-row losses differ by orders of magnitude) and a 20 + 30 row split."""
    train, split = digits["train"], one_batch_split
    trained = train_classifier(
        tiny_classifier("vit", seed=0), train, TrainingRecipe(max_steps=150, learning_rate=5e-3), seed=0
    )
    return trained.model, split, processor


def _rows(family, dataset):
    return family.collate([dataset[i] for i in range(len(dataset))])


def _losses(model, batch, labels=None):
    logits = model(pixel_values=batch["pixel_values"]).logits
    return F.cross_entropy(logits, batch["labels"] if labels is None else labels, reduction="none")


def _grad(model, loss):
    params = [p for p in model.parameters()]
    return torch.autograd.grad(loss, params)


def _clip(grads, norm):
    if not norm:
        return grads
    total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    scale = min(1.0, norm / (float(total) + 1e-6))
    return [g * scale for g in grads]


def expected_weights(
    model,
    forget,
    remain,
    *,
    cycles,
    k,
    alpha_schedule,
    forget_clip,
    remain_clip,
    beta=1.0,
    threshold=1.0,
    remap=False,
    temperature=LAMBDA,
):
    """The trajectory of the equations above, independent of the library's code."""
    model = copy.deepcopy(model)
    params = list(model.parameters())
    model.eval()
    f_forget = [g**2 for g in _grad(model, _losses(model, forget).mean())]
    f_remain = [g**2 for g in _grad(model, _losses(model, remain).mean())]
    ratio = [(a + 1e-15) / (b + 1e-15) for a, b in zip(f_forget, f_remain)]  # the authors' ε and rule
    mask = [r >= threshold for r in ratio]
    # Where the ratio sits at γ within rounding (e.g. key biases, whose gradient is 0 up to float noise) the two
    # computations may fall either side; those entries have no gradient to speak of, so nothing else depends on them.
    # With the authors' ε = 1e-15 such entries (mathematically zero gradient, squared float noise ~1e-16) keep a
    # ratio of noise over noise; they count as undecided too.
    decided = [
        ((r - threshold).abs() > 1e-3) & (torch.maximum(a, b) > 1e-12) for r, a, b in zip(ratio, f_forget, f_remain)
    ]
    model.train()
    target = torch.full_like(forget["labels"], REMAP_TARGET)
    for t in range(cycles):
        start = [p.detach().clone() for p in params]
        alpha = ALPHA if alpha_schedule == "constant" else ALPHA * 0.5 * (1 + math.cos(math.pi * t / cycles))
        rows = _losses(model, forget, target if remap else None)
        power = temperature if remap else -temperature  # descent: ℓ^(+λ); ascent: ℓ^(−λ)
        w = rows.detach() ** power
        w = w / w.sum()
        objective = (w * rows).sum() if remap else -(w * rows).sum()
        grads = [alpha * g * m for g, m in zip(_grad(model, objective), mask)]
        with torch.no_grad():
            for p, g in zip(params, _clip(grads, forget_clip)):
                p -= LR * g
        for _ in range(k):
            grads = _clip(_grad(model, _losses(model, remain).mean()), remain_clip)
            with torch.no_grad():
                for p, g in zip(params, grads):
                    p -= LR * g
        with torch.no_grad():
            for p, s in zip(params, start):
                p.copy_(beta * p + (1 - beta) * s)
    return {n: p.detach() for n, p in model.named_parameters()}, (mask, decided)


def engine_weights(model, split, processor, tmp_path, method="sfr_on", **overrides):
    values = dict(
        method=method,
        optim="sgd",
        momentum=0.0,
        weight_decay=0.0,
        learning_rate=LR,
        lr_scheduler_type="constant",
        forget_alpha=ALPHA,
        forget_alpha_schedule="constant",
        temperature=LAMBDA,
        mask_threshold=1.0,
        max_grad_norm=0.0,
        remain_max_grad_norm=0.0,
        per_device_train_batch_size=64,
        divergence_guard="off",
        output_dir=str(tmp_path),
        remap_anchor=str(REMAP_TARGET),
    )
    values.update(overrides)
    unlearner = Unlearner.from_pretrained(copy.deepcopy(model), UnlearnConfig(**values), image_processor=processor)
    result = unlearner.unlearn(split)
    return {n: p.detach() for n, p in unlearner.model.named_parameters()}, unlearner, result


def relative_error(got, want, start):
    """‖got − want‖ / ‖want − θ0‖ over all weights: the error relative to the size of the update."""
    num = sum(float((got[n] - want[n]).double().pow(2).sum()) for n in want)
    den = sum(float((want[n] - start[n]).double().pow(2).sum()) for n in want)
    return math.sqrt(num / den)


def _case(
    setting,
    tmp_path,
    *,
    cycles=1,
    k=2,
    alpha_schedule="constant",
    forget_clip=0.0,
    remain_clip=0.0,
    beta=1.0,
    method="sfr_on",
    remap=False,
):
    model, split, processor = setting
    got, unlearner, result = engine_weights(
        model,
        split,
        processor,
        tmp_path,
        method=method,
        max_steps=cycles,
        remain_steps_per_forget=k,
        forget_alpha_schedule=alpha_schedule,
        max_grad_norm=forget_clip,
        remain_max_grad_norm=remain_clip,
        interpolation_beta=beta,
    )
    family = unlearner.family
    forget, remain = _rows(family, split.forget), _rows(family, split.remain)
    want, (mask, decided) = expected_weights(
        model,
        forget,
        remain,
        cycles=cycles,
        k=k,
        alpha_schedule=alpha_schedule,
        forget_clip=forget_clip,
        remain_clip=remain_clip,
        beta=beta,
        remap=remap,
    )
    start = {n: p.detach() for n, p in model.named_parameters()}
    names = [n for n, _ in model.named_parameters()]
    for n, m, d in zip(names, mask, decided):
        assert torch.equal(unlearner.mask[n][d], m[d]), f"Fisher-ratio mask differs on {n}"
    return got, want, start, unlearner, result, (model, forget, remain)


def test_sfr_on_step_is_the_published_equation(setting, tmp_path):
    got, want, start, unlearner, result, (model, forget, remain) = _case(setting, tmp_path)
    assert 0.05 < result.mask_fraction < 0.95  # the mask really selects
    assert relative_error(got, want, start) < 1e-5
    assert result.work["forget_steps"] == 1 and result.work["remain_steps"] == 2
    # The test can tell the directions apart: the inverted weights ℓ^(+λ) give another update.
    inverted, _ = expected_weights(
        model,
        forget,
        remain,
        cycles=1,
        k=2,
        alpha_schedule="constant",
        forget_clip=0,
        remain_clip=0,
        temperature=-LAMBDA,
    )
    assert relative_error(inverted, want, start) > 0.05


def test_adaptive_weights_favour_rows_not_yet_forgotten(setting, tmp_path):
    # Only the slow step (K = 0): its direction is Σ w_i ∇ℓ_i; compare with uniform ascent (λ = 0) on the same rows.
    got, want, start, *_ = _case(setting, tmp_path, k=0)
    assert relative_error(got, want, start) < 1e-5
    model, split, processor = setting
    uniform, *_ = engine_weights(
        model, split, processor, tmp_path / "u", max_steps=1, remain_steps_per_forget=0, temperature=0.0
    )
    assert relative_error(uniform, want, start) > 0.05


def test_remap_part_weights_rows_far_from_the_target(setting, tmp_path, monkeypatch):
    # A copy of the registry, so the test method is gone afterwards (the benchmark tests list every method).
    monkeypatch.setattr("hf_unlearn.methods.base._REGISTRY", dict(method_registry._REGISTRY))
    register_method(
        UnlearnMethod(
            "test_sfr_remap", Remap(weighted=True), TaskLoss(), saliency="fisher_ratio", geometry="fast_slow"
        ),
        overwrite=True,
    )
    got, want, start, *_ = _case(setting, tmp_path, method="test_sfr_remap", remap=True)
    assert relative_error(got, want, start) < 1e-5


def test_alpha_follows_a_cosine_over_the_cycles(setting, tmp_path):
    got, want, start, _, result, _ = _case(setting, tmp_path, cycles=3, k=1, alpha_schedule="cosine")
    assert relative_error(got, want, start) < 1e-5
    assert [round(h["alpha"], 6) for h in result.history] == [
        round(ALPHA * 0.5 * (1 + math.cos(math.pi * t / 3)), 6) for t in range(3)
    ]


@pytest.mark.parametrize("forget_clip,remain_clip", [(0.05, 0.0), (0.0, 0.05), (0.05, 0.05)])
def test_clipping_applies_to_the_step_kinds_it_names(setting, tmp_path, forget_clip, remain_clip):
    got, want, start, _, result, _ = _case(setting, tmp_path, forget_clip=forget_clip, remain_clip=remain_clip)
    assert relative_error(got, want, start) < 1e-5
    # The clipping bound does bind here, so a wrong scope would not pass.
    unclipped, *_ = _case(setting, tmp_path / "free")
    assert relative_error(unclipped, want, start) > 0.05


def test_k_fast_steps_and_beta_interpolation(setting, tmp_path):
    got, want, start, _, result, _ = _case(setting, tmp_path, cycles=2, k=3, beta=0.5)
    assert relative_error(got, want, start) < 5e-5  # 8 float32 steps in a different summation order, not 1
    no_beta, *_ = _case(setting, tmp_path / "b1", cycles=2, k=3)
    assert relative_error(no_beta, want, start) > 0.05
    steps = {k: result.work[k] for k in ("optimizer_steps", "forget_steps", "remain_steps")}
    assert steps == {"optimizer_steps": 2 * (1 + 3), "forget_steps": 2, "remain_steps": 6}
    assert result.work["passes"] == {"saliency": 2, "geometry": 0, "forget": 2, "remain": 6, "replay": 0}

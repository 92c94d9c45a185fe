"""The saliency masks, run through `Unlearner.unlearn`, against the same statistics computed here by autograd.

SFR-on's mask is M_k = [(F_f,k + ε) / (F_r,k + ε) ≥ γ] with F = (1/B) Σ_b (∇_θ mean_{i∈b} ℓ_i)², the batches b being
one seeded permutation of the whole set cut into batches of the global batch size (the last one shorter), computed at
θ0 in eval mode: BatchNorm uses and keeps its running statistics, and the model is back in train mode afterwards.
SalUn's mask keeps the `salun_sparsity` share of weights with the largest |(1/B) Σ_b ∇_θ mean_{i∈b} CE(x_i, y_i)|, the
gradient of the true-label forget loss (not of the random-label loss it then trains on).
"""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch.optim.optimizer import register_optimizer_step_pre_hook

from hf_unlearn import ForgetRemainSplit, UnlearnConfig, Unlearner
from hf_unlearn.parts import global_batches
from hf_unlearn.parts.geometry import EWC
from hf_unlearn.tiny.classifiers import TrainingRecipe, tiny_classifier, train_classifier
from hf_unlearn.tiny.diffusion import tiny_scheduler, tiny_unet

BATCH, SEED = 16, 0
NUM_ROWS, FORGET_IDS = 120, list(range(0, 111, 3))  # 37 forget rows (2×16 + 5), 83 remain rows (5×16 + 3)


@pytest.fixture(scope="module")
def resnet(digits):
    """A tiny ResNet trained briefly: BatchNorm running statistics away from their init, per-row losses that differ."""
    trained = train_classifier(
        tiny_classifier("resnet", seed=0), digits["train"], TrainingRecipe(max_steps=40, batch_size=32), seed=0
    )
    return trained.model


@pytest.fixture(scope="module")
def split(digits):
    return ForgetRemainSplit.from_dataset(digits["train"].select(range(NUM_ROWS)), forget_ids=FORGET_IDS)


def _config(tmp_path, method, **overrides):
    values = dict(
        method=method,
        max_steps=1,
        remain_steps_per_forget=1,
        per_device_train_batch_size=BATCH,
        saliency_max_batches=None,
        seed=SEED,
        output_dir=str(tmp_path),
    )
    return UnlearnConfig(**(values | overrides))


def _batches(num_rows: int) -> list[list[int]]:
    """One pass over the set: a permutation seeded by the run's seed, cut into batches, the last one shorter."""
    order = torch.randperm(num_rows, generator=torch.Generator().manual_seed(SEED)).tolist()
    return [order[i : i + BATCH] for i in range(0, num_rows, BATCH)]


def _mean_grads(model, family, dataset, batches, row_losses, square):
    """(1/B) Σ_b g_b (or g_b²), g_b the gradient of the batch-mean loss, by autograd on `model` as it is."""
    params = list(model.parameters())
    sums = [torch.zeros_like(p) for p in params]
    for rows in batches:
        batch = family.collate([dataset[i] for i in rows])
        grads = torch.autograd.grad(row_losses(model, batch).mean(), params, allow_unused=True)
        for s, g in zip(sums, grads):
            if g is not None:
                s += g * g if square else g
    names = [n for n, _ in model.named_parameters()]
    return {n: s / len(batches) for n, s in zip(names, sums)}


def _ce(labels=None):
    def rows(model, batch):
        logits = model(pixel_values=batch["pixel_values"]).logits
        return F.cross_entropy(logits, batch["labels"] if labels is None else labels(batch), reduction="none")

    return rows


def _fisher_mask(model, family, split, batches, train_mode=False):
    model = copy.deepcopy(model).train(train_mode)
    f_f = _mean_grads(model, family, split.forget, batches["forget"], _ce(), square=True)
    f_r = _mean_grads(model, family, split.remain, batches["remain"], _ce(), square=True)
    # The authors' rule: ε 1e-15 on both Fishers, so weights with no gradient on either set (units dead in eval mode)
    # have ratio exactly 1 and are selected at γ = 1.
    ratio = {n: (f_f[n] + 1e-15) / (f_r[n] + 1e-15) for n in f_f}
    mask = {n: ratio[n] >= 1.0 for n in f_f}
    # Where the ratio sits at γ within float rounding the engine's summation order may fall either side; exact zeros
    # on both sets are exact in any order, so they count as decided.
    decided = {n: ((ratio[n] - 1.0).abs() > 1e-3) | ((f_f[n] == 0) & (f_r[n] == 0)) for n in f_f}
    return mask, decided


def _disagreement(a, b, decided) -> int:
    return sum(int((a[n] != b[n])[decided[n]].sum()) for n in a)


def test_fisher_mask_is_computed_in_eval_mode_over_every_row(resnet, split, processor, tmp_path, monkeypatch):
    seen = {"forward_modes": [], "optimizer_modes": []}
    spy_target = Unlearner._at_theta0

    def spy(self, ctx, named, split_, accelerator):
        module = accelerator.unwrap_model(ctx.model)
        seen["training_before"] = module.training
        seen["buffers_before"] = {k: v.clone() for k, v in module.named_buffers()}
        hook = module.register_forward_pre_hook(lambda m, args: seen["forward_modes"].append(m.training))
        try:
            out = spy_target(self, ctx, named, split_, accelerator)
        finally:
            hook.remove()
        seen["training_after"] = module.training
        seen["buffers_after"] = {k: v.clone() for k, v in module.named_buffers()}
        return out

    monkeypatch.setattr(Unlearner, "_at_theta0", spy)
    model = copy.deepcopy(resnet)
    original_buffers = {k: v.clone() for k, v in model.named_buffers()}
    assert any(k.endswith("running_mean") for k in original_buffers)
    assert any(float(v.abs().max()) > 0 for k, v in original_buffers.items() if k.endswith("running_mean"))
    unlearner = Unlearner.from_pretrained(model, _config(tmp_path, "sfr_on"), image_processor=processor)
    step_hook = register_optimizer_step_pre_hook(
        lambda opt, args, kwargs: seen["optimizer_modes"].append(unlearner.model.training)
    )
    try:
        result = unlearner.unlearn(split)
    finally:
        step_hook.remove()

    # The mask pass: eval mode throughout, BatchNorm buffers (running mean/var, num_batches_tracked) bit-for-bit
    # untouched, and train mode again before the first optimizer step.
    batches = {"forget": _batches(len(split.forget)), "remain": _batches(len(split.remain))}
    num_batches = len(batches["forget"]) + len(batches["remain"])
    assert seen["training_before"] is True and seen["training_after"] is True
    assert seen["forward_modes"] == [False] * num_batches
    assert seen["buffers_before"].keys() == original_buffers.keys() == seen["buffers_after"].keys()
    for k, v in original_buffers.items():
        assert torch.equal(seen["buffers_before"][k], v), k
        assert torch.equal(seen["buffers_after"][k], v), k
    assert seen["optimizer_modes"] and seen["optimizer_modes"][0] is True

    # Every row exactly once, in the batches `global_batches` plans for one process; uneven last batches.
    for name, dataset in [("forget", split.forget), ("remain", split.remain)]:
        plan = global_batches(len(dataset), BATCH, 1, 0, SEED, None)
        assert [rows for rows, _ in plan] == batches[name]
        assert [size for _, size in plan] == [len(rows) for rows in batches[name]]
        assert 0 < len(batches[name][-1]) < BATCH and len(batches[name]) >= 3
        assert sorted(i for rows in batches[name] for i in rows) == list(range(len(dataset)))
    assert result.work["passes"]["saliency"] == num_batches

    family = unlearner.family
    want, decided = _fisher_mask(resnet, family, split, batches)
    undecided = sum(int((~d).sum()) for d in decided.values())
    total = sum(d.numel() for d in decided.values())
    assert undecided < 1e-2 * total
    assert unlearner.mask.keys() == want.keys()
    assert _disagreement(unlearner.mask, want, decided) == 0
    assert 0.05 < result.mask_fraction < 0.95  # the mask does select

    # The comparison can tell: the same statistic in train mode (batch statistics), or without the short last
    # batches, or with the last batch divided by the full batch size (as a padded batch), gives other masks.
    train_mask, _ = _fisher_mask(resnet, family, split, batches, train_mode=True)
    assert _disagreement(unlearner.mask, train_mask, decided) > 0.01 * total
    dropped, _ = _fisher_mask(resnet, family, split, {k: v[:-1] for k, v in batches.items()})
    assert _disagreement(unlearner.mask, dropped, decided) > 0


def test_salun_mask_is_top_k_of_the_true_label_forget_gradient(resnet, split, processor, tmp_path):
    sparsity = 0.3
    unlearner = Unlearner.from_pretrained(
        copy.deepcopy(resnet), _config(tmp_path, "salun", salun_sparsity=sparsity), image_processor=processor
    )
    result = unlearner.unlearn(split)
    family, batches = unlearner.family, _batches(len(split.forget))
    assert result.work["passes"]["saliency"] == len(batches)  # the forget set only, every row once

    def top_k(labels=None):
        model = copy.deepcopy(resnet).eval()
        scores = _mean_grads(model, family, split.forget, batches, _ce(labels), square=False)
        flat = torch.cat([s.abs().flatten() for s in scores.values()])
        threshold = flat.sort(descending=True).values[round(sparsity * flat.numel()) - 1]
        mask = {n: s.abs() >= threshold for n, s in scores.items()}
        decided = {n: (s.abs() - threshold).abs() > 1e-4 * threshold for n, s in scores.items()}
        return mask, decided

    want, decided = top_k()
    total = sum(d.numel() for d in decided.values())
    assert sum(int((~d).sum()) for d in decided.values()) < 1e-3 * total
    assert _disagreement(unlearner.mask, want, decided) == 0
    assert abs(result.mask_fraction - sparsity) < 1e-3

    # The random-label loss (what SalUn then trains on) has another gradient and another top-k.
    generator = torch.Generator().manual_seed(1)

    def random_other(batch):
        shift = torch.randint(1, family.num_classes, batch["labels"].shape, generator=generator)
        return (batch["labels"] + shift) % family.num_classes

    random_mask, _ = top_k(random_other)
    assert _disagreement(unlearner.mask, random_mask, decided) > 0.05 * total


# Diffusion Fisher options
@pytest.fixture(scope="module")
def diffusion_split(digits):
    train = digits["train"].train_test_split(train_size=120, seed=0, stratify_by_column="label")["train"]
    return ForgetRemainSplit.from_dataset(train, forget_classes=[3])


def _diffusion_run(split, tmp_path, **overrides):
    config = UnlearnConfig(
        method="sfr_on",
        max_steps=1,
        per_device_train_batch_size=8,
        saliency_max_batches=3,
        seed=SEED,
        output_dir=str(tmp_path),
        **overrides,
    )
    unlearner = Unlearner.from_pretrained(tiny_unet(seed=0), config, scheduler=tiny_scheduler())
    before = {n: p.detach().clone() for n, p in unlearner.model.named_parameters()}
    result = unlearner.unlearn(split)
    after = dict(unlearner.model.named_parameters())
    assert all(torch.isfinite(p).all() for p in after.values())
    assert any(not torch.equal(before[n], p.detach()) for n, p in after.items())
    return unlearner.mask, result


def _differing(a, b) -> int:
    return sum(int((a[n] != b[n]).sum()) for n in a)


def test_diffusion_fisher_options_change_the_mask(diffusion_split, tmp_path):
    plain, result = _diffusion_run(diffusion_split, tmp_path / "plain")
    again, _ = _diffusion_run(diffusion_split, tmp_path / "again")
    assert _differing(plain, again) == 0  # seeded: any difference below comes from the options
    assert 0 < result.mask_fraction < 1

    options = dict(saliency_guidance_scale=3.0, saliency_clip_norm=1.0, noise_loss_reduction="sum")
    everything, result = _diffusion_run(diffusion_split, tmp_path / "all", **options)
    planned = sum(min(3, -(-len(d) // 8)) for d in (diffusion_split.forget, diffusion_split.remain))
    assert result.work["passes"]["saliency"] == planned and 0 < result.mask_fraction < 1
    total = sum(m.numel() for m in plain.values())
    assert _differing(everything, plain) > 0.01 * total

    guided, _ = _diffusion_run(diffusion_split, tmp_path / "guided", saliency_guidance_scale=3.0)
    assert _differing(guided, plain) > 0.01 * total
    clipped, _ = _diffusion_run(diffusion_split, tmp_path / "clipped", saliency_clip_norm=1e-4)
    assert _differing(clipped, plain) > 0.01 * total
    # A clip norm no batch gradient reaches changes nothing.
    loose, _ = _diffusion_run(diffusion_split, tmp_path / "loose", saliency_clip_norm=1e9)
    assert _differing(loose, plain) == 0


def test_noise_loss_reduction_sum_is_the_pixel_sum(diffusion_split):
    family = Unlearner.from_pretrained(tiny_unet(seed=0), UnlearnConfig(method="sfr_on")).family
    batch = family.collate([diffusion_split.forget[i] for i in range(4)])
    torch.manual_seed(0)
    mean = family.per_sample_loss(family.model, batch)
    family.noise_loss_reduction = "sum"
    torch.manual_seed(0)
    summed = family.per_sample_loss(family.model, batch)
    pixels = batch["pixel_values"][0].numel()
    torch.testing.assert_close(summed, mean * pixels)
    assert pixels > 1


def test_guidance_scale_on_a_classifier_is_refused_before_any_weight_change(split, processor, tmp_path):
    model = tiny_classifier("resnet", seed=0)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    unlearner = Unlearner.from_pretrained(
        model, _config(tmp_path, "sfr_on", saliency_guidance_scale=3.0), image_processor=processor
    )
    with pytest.raises(ValueError, match="`saliency_guidance_scale`"):
        unlearner.unlearn(split)
    assert all(torch.equal(v, state[k]) for k, v in unlearner.model.state_dict().items())
    assert unlearner.mask is None and not (tmp_path / "saliency_mask.safetensors").exists()


def test_ewc_anchor_is_the_remain_fisher_of_the_mask_estimator(resnet, split, processor, tmp_path, monkeypatch):
    """EWC's penalty weights: F_r as above (eval mode, every remain row once), scaled so the largest entry is 1,
    anchored at θ0. Checked on a classifier through a registered EWC composition (selective amnesia is the built-in
    user, on diffusion models, where the estimator is the same code)."""
    from hf_unlearn.methods import Ascent, TaskLoss, UnlearnMethod
    from hf_unlearn.methods.base import _REGISTRY

    monkeypatch.setitem(_REGISTRY, "ewc_probe", UnlearnMethod("ewc_probe", Ascent(), TaskLoss(), geometry="ewc"))
    seen = {}
    setup = EWC.setup

    def spy(self, inputs):
        seen["ewc"] = setup(self, inputs)
        return seen["ewc"]

    monkeypatch.setattr(EWC, "setup", spy)
    unlearner = Unlearner.from_pretrained(
        copy.deepcopy(resnet), _config(tmp_path, "ewc_probe", learning_rate=1e-3), image_processor=processor
    )
    result = unlearner.unlearn(split)
    batches = _batches(len(split.remain))
    # EWC's Fisher is the geometry's pass at θ0, not a mask's: the probe has no saliency.
    assert (result.work["passes"]["geometry"], result.work["passes"]["saliency"]) == (len(batches), 0)

    def normalised(train_mode):
        model = copy.deepcopy(resnet).train(train_mode)
        fisher = _mean_grads(model, unlearner.family, split.remain, batches, _ce(), square=True)
        peak = max(float(f.max()) for f in fisher.values())
        return [fisher[n] / peak for n, _ in resnet.named_parameters()]

    want = normalised(False)
    got = [f for f, _ in seen["ewc"]]
    assert len(got) == len(want)
    worst = max(float((g - w).abs().max()) for g, w in zip(got, want))
    assert worst < 1e-4 and max(float(g.max()) for g in got) == pytest.approx(1.0)
    for (_, p0), p in zip(seen["ewc"], resnet.parameters()):
        assert torch.equal(p0, p.detach())
    # Train mode (batch statistics in BatchNorm) gives another Fisher: the comparison can fail.
    assert max(float((g - w).abs().max()) for g, w in zip(got, normalised(True))) > 1e-2

"""`method="sfr_on"` at its defaults against an independent re-implementation of the authors' classification update.

The loop below is written from the paper and the authors' documented settings (../shared/design/sfr_on.md,
"Published settings" and "Details that change results"), not from the library: a BatchNorm ResNet, SGD with momentum
0.9 and weight decay 5e-4, one optimizer for both step kinds, a cosine learning rate stepped at every *remain*
iteration (`CosineAnnealingLR(T_max=iterations)`), a forget step before every K-th remain iteration with
α_t = α·(1 + cos(π·i/N))/2, adaptive weights c_i = 1/(ℓ_i^λ + 1e-15) normalised over the batch, the Fisher-ratio mask
(F_f + 1e-15)/(F_r + 1e-15) ≥ γ from eval-mode passes (entries with both Fishers 0 selected), the mask on the forget
gradient before clipping it to `max_grad_norm`, remain steps unclipped, both steps in train mode (BatchNorm batch
statistics).

Each set fits in one batch, so the engine's shuffling cannot change which rows a step sees; the two trajectories may
differ by float summation order only.
"""

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from hf_unlearn import ForgetRemainSplit, UnlearnConfig, Unlearner
from hf_unlearn.tiny.classifiers import TrainingRecipe, tiny_classifier, train_classifier

LR, MOMENTUM, WEIGHT_DECAY = 0.05, 0.9, 5e-4
ALPHA, LAMBDA, CLIP, GAMMA = 5.0, 0.5, 1.0, 1.0
ITERATIONS, K = 12, 3  # the authors' counting: 12 remain iterations, a forget step before every 3rd → 4 cycles


@pytest.fixture(scope="module")
def setting(digits, processor, one_batch_split):
    train, split = digits["train"], one_batch_split
    trained = train_classifier(
        tiny_classifier("resnet", seed=0), train, TrainingRecipe(max_steps=40, batch_size=32), seed=0
    )
    return trained.model, split, processor


def _whole(family, dataset):
    return family.collate([dataset[i] for i in range(len(dataset))])


def _ce(model, batch):
    return F.cross_entropy(model(pixel_values=batch["pixel_values"]).logits, batch["labels"], reduction="none")


def authors_update(model, forget, remain, iterations=ITERATIONS, k=K, zero_fisher_selected=True):
    """The authors' SFRon loop (classification), re-derived: returns the final weights and the mask."""
    model = copy.deepcopy(model)
    params = dict(model.named_parameters())
    model.eval()  # Fisher passes: running statistics used and kept
    fishers = []
    for batch in (forget, remain):
        model.zero_grad()
        _ce(model, batch).mean().backward()
        fishers.append({n: p.grad.detach() ** 2 for n, p in params.items()})
    mask = {}
    for n in params:
        f_f, f_r = fishers[0][n], fishers[1][n]
        mask[n] = (f_f + 1e-15) / (f_r + 1e-15) >= GAMMA
        if not zero_fisher_selected:
            mask[n] &= (f_f != 0) | (f_r != 0)
    optimizer = torch.optim.SGD(model.parameters(), LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=iterations)
    for i in range(iterations):
        model.train()
        if i % k == 0:
            alpha = ALPHA * (1 + math.cos(math.pi * i / iterations)) / 2
            optimizer.zero_grad()
            losses = _ce(model, forget)
            coef = 1 / (losses.detach() ** LAMBDA + 1e-15)
            (alpha * -((coef / coef.sum()) * losses * len(losses)).mean()).backward()
            for n, p in params.items():
                p.grad *= mask[n]
            torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
            optimizer.step()
        optimizer.zero_grad()
        _ce(model, remain).mean().backward()
        optimizer.step()
        scheduler.step()
    return {n: p.detach().clone() for n, p in model.named_parameters()}, mask


def engine_update(model, split, processor, tmp_path, **overrides):
    config = UnlearnConfig(
        method="sfr_on",
        optim="sgd",
        learning_rate=LR,
        momentum=MOMENTUM,
        weight_decay=WEIGHT_DECAY,
        lr_scheduler_type="cosine",
        max_steps=ITERATIONS // K,
        remain_steps_per_forget=K,
        forget_alpha=ALPHA,
        forget_alpha_schedule="cosine",
        temperature=LAMBDA,
        mask_threshold=GAMMA,
        max_grad_norm=CLIP,
        remain_max_grad_norm=0.0,
        per_device_train_batch_size=64,
        output_dir=str(tmp_path),
        **overrides,
    )
    unlearner = Unlearner.from_pretrained(copy.deepcopy(model), config, image_processor=processor)
    result = unlearner.unlearn(split)
    return {n: p.detach().clone() for n, p in unlearner.model.named_parameters()}, unlearner, result


def distance(got, want, start):
    """‖got − want‖ / ‖want − θ0‖ over all weights."""
    num = sum(float((got[n] - want[n]).double().pow(2).sum()) for n in want)
    den = sum(float((want[n] - start[n]).double().pow(2).sum()) for n in want)
    return math.sqrt(num / den)


def test_sfr_on_defaults_equal_the_authors_update(setting, tmp_path):
    model, split, processor = setting
    got, unlearner, result = engine_update(model, split, processor, tmp_path)
    family = unlearner.family
    forget, remain = _whole(family, split.forget), _whole(family, split.remain)
    want, mask = authors_update(model, forget, remain)
    start = {n: p.detach() for n, p in model.named_parameters()}
    assert result.work["forget_steps"] == ITERATIONS // K and result.work["remain_steps"] == ITERATIONS
    assert {n: torch.equal(unlearner.mask[n], mask[n]) for n in mask} == {n: True for n in mask}
    assert distance(got, want, start) < 1e-5  # measured 6.5e-7: float summation order
    # The learning rates the steps saw: the cycle's log shows its forget step's rate, the authors' rate at i = cK.
    rates = [h["lr"] for h in result.history]
    assert rates == pytest.approx([LR * (1 + math.cos(math.pi * c * K / ITERATIONS)) / 2 for c in range(4)])


def test_the_comparison_tells_each_deviation_apart(setting, tmp_path):
    model, split, processor = setting
    got, unlearner, _ = engine_update(model, split, processor, tmp_path)
    family = unlearner.family
    forget, remain = _whole(family, split.forget), _whole(family, split.remain)
    start = {n: p.detach() for n, p in model.named_parameters()}
    want, mask = authors_update(model, forget, remain)
    # The BatchNorm ResNet has entries whose two Fishers are 0 at θ0, and they matter to the update.
    dead = sum(int(((unlearner.mask[n]) & ~authors_update_nonzero(model, forget, remain)[n]).sum()) for n in mask)
    assert dead > 0
    skipped, _ = authors_update(model, forget, remain, zero_fisher_selected=False)
    assert distance(skipped, want, start) > 1e-2
    # The library's former choices each give another trajectory, far beyond float noise.
    per_cycle, *_ = engine_update(model, split, processor, tmp_path / "cycle", lr_schedule_steps="cycle")
    assert distance(per_cycle, want, start) > 1e-2
    skip, *_ = engine_update(model, split, processor, tmp_path / "skip", mask_zero_fisher="skip")
    assert distance(skip, skipped, start) < 1e-4


def authors_update_nonzero(model, forget, remain):
    """Entries with a nonzero Fisher on either set at θ0 (eval mode)."""
    model = copy.deepcopy(model).eval()
    out = {}
    grads = []
    for batch in (forget, remain):
        model.zero_grad()
        _ce(model, batch).mean().backward()
        grads.append({n: p.grad.detach().clone() for n, p in model.named_parameters()})
    for n in grads[0]:
        out[n] = (grads[0][n] != 0) | (grads[1][n] != 0)
    return out


def test_forget_and_remain_loaders_shuffle_by_their_own_seeds(digits, processor, tmp_path):
    """The step loaders draw their own orders: equal-size forget and remain sets are not walked in the same index
    order (accelerate's seedable sampler would otherwise reseed both from the global seed), and each epoch
    reshuffles."""
    train = digits["train"].select(range(160))
    labels = train["label"]
    forget_ids = [i for i, y in enumerate(labels) if y in (3, 5)][:24]
    remain_ids = [i for i, y in enumerate(labels) if y not in (3, 5)][:24]
    split = ForgetRemainSplit.from_dataset(train.select(forget_ids + remain_ids), forget_ids=list(range(24)))
    config = UnlearnConfig(
        method="sfr_on", max_steps=6, remain_steps_per_forget=1, per_device_train_batch_size=8, output_dir=""
    )
    unlearner = Unlearner.from_pretrained(tiny_classifier("resnet", seed=0), config, image_processor=processor)
    family = unlearner.family
    key = lambda pixels: pixels.numpy().tobytes()  # noqa: E731
    position = {}
    for name in ("forget", "remain"):
        rows = getattr(split, name)
        position.update({key(family.collate([rows[i]])["pixel_values"][0]): (name, i) for i in range(len(rows))})
    seen = {"forget": [], "remain": []}
    collate = family.collate

    def spy(rows):
        batch = collate(rows)
        for pixels in batch["pixel_values"]:
            name, index = position[key(pixels)]
            seen[name].append(index)
        return batch

    family.collate = spy
    unlearner.unlearn(split)
    forget, remain = seen["forget"][-48:], seen["remain"][-48:]  # the steps' rows: two epochs of each set (the
    # saliency passes and the input checks read rows first)
    assert sorted(forget[:24]) == sorted(remain[:24]) == list(range(24))
    assert forget[:24] != remain[:24] and forget[24:] != remain[24:]
    assert forget[:24] != forget[24:] and remain[:24] != remain[24:]

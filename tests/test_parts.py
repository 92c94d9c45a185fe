"""The SFR-on parts in isolation: adaptive weights, ascent, saliency masks."""

import math

import pytest
import torch

from hf_unlearn.methods import adaptive_weights
from hf_unlearn.parts import fisher_ratio_mask, gradient_statistic, load_mask, save_mask, topk_mask


def test_adaptive_weights_are_the_authors_inverse_power():
    # The authors' AdaptiveLoss: coef_i = 1 / (ℓ_i^λ + 1e-15), normalised over the batch.
    losses = torch.tensor([0.1, 0.5, 2.0, 4.0])
    for lam in (0.0, 0.5, 2.0):
        coef = [1.0 / (float(v) ** lam + 1e-15) for v in losses]
        expected = torch.tensor([c / sum(coef) for c in coef])
        torch.testing.assert_close(adaptive_weights(losses, losses, lam), expected, rtol=1e-6, atol=0)
    # A row whose loss is exactly 0 takes the whole weight (1e15 against ~1), as theirs; the softmax rule does not.
    zero = torch.tensor([0.0, 0.5, 2.0])
    assert float(adaptive_weights(zero, zero, 0.5)[0]) == 1.0  # 1 − 2e-15, which is 1 in float32
    assert float(adaptive_weights(zero, zero, 0.5, rule="softmax")[0]) < 1 - 1e-4  # (1e-8)^(−λ) = 1e4 against ~1


def test_softmax_rule_is_softmax_of_negative_lambda_log_loss():
    losses = torch.tensor([0.1, 0.5, 2.0, 4.0])
    for lam in (0.0, 0.5, 2.0):
        weights = adaptive_weights(losses, losses, lam, rule="softmax")
        expected = torch.softmax(-lam * torch.log(losses + 1e-8), dim=0)
        assert torch.allclose(weights, expected, atol=1e-6)
        assert math.isclose(float(weights.sum()), 1.0, rel_tol=1e-6)
    # λ > 0 puts most weight on the rows not yet forgotten (low loss).
    assert adaptive_weights(losses, losses, 1.0).argmax() == 0


def test_lambda_zero_is_plain_gradient_ascent():
    torch.manual_seed(0)
    w = torch.randn(3, requires_grad=True)
    x = torch.randn(5, 3)
    losses = (x @ w) ** 2
    weights = adaptive_weights(losses.detach(), losses.detach(), 0.0)
    (-(weights * losses).sum()).backward()
    grad_weighted = w.grad.clone()
    w.grad = None
    (-((x @ w) ** 2).mean()).backward()
    assert torch.allclose(grad_weighted, w.grad, atol=1e-6)


def test_weights_normalise_over_the_global_batch():
    local = torch.tensor([1.0, 2.0])
    global_losses = torch.tensor([1.0, 2.0, 3.0, 4.0])
    w = adaptive_weights(local, global_losses, 0.5)
    full = adaptive_weights(global_losses, global_losses, 0.5)
    assert torch.allclose(w, full[:2])


class _TwoParams(torch.nn.Module):
    """y = a·x0 + b·x1: the gradient of (y - t)² w.r.t. a only sees x0, w.r.t. b only x1, so Fishers are hand-made."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor([1.0]))
        self.b = torch.nn.Parameter(torch.tensor([1.0]))
        self.unused = torch.nn.Parameter(torch.tensor([0.0]))


def test_fisher_ratio_mask_selects_exactly_ratio_at_least_gamma():
    model = _TwoParams()
    named = list(model.named_parameters())

    def row_losses(batch):
        x0, x1 = batch
        return model.a * x0 + model.b * x1  # one row per batch: d/da = x0, d/db = x1

    forget = [((torch.tensor([2.0]), torch.tensor([1.0])), 1)] * 2
    remain = [((torch.tensor([1.0]), torch.tensor([3.0])), 1)]
    f_f = gradient_statistic(named, iter(forget), row_losses)
    f_r = gradient_statistic(named, iter(remain), row_losses)
    assert f_f["a"].item() == pytest.approx(4.0) and f_f["b"].item() == pytest.approx(1.0)
    assert f_r["a"].item() == pytest.approx(1.0) and f_r["b"].item() == pytest.approx(9.0)
    mask = fisher_ratio_mask(f_f, f_r, threshold=1.0)
    assert mask["a"].item() and not mask["b"].item()  # ratios 4 and 1/9
    # Both Fishers zero: the authors' ratio (0+ε)/(0+ε) = 1 ≥ γ selects it; "skip" never does; above 1 it never is.
    assert mask["unused"].item()
    assert not fisher_ratio_mask(f_f, f_r, threshold=1.0, zero_fisher="skip")["unused"].item()
    assert fisher_ratio_mask(f_f, f_r, threshold=1.0, zero_fisher="skip")["a"].item()
    assert not fisher_ratio_mask(f_f, f_r, threshold=1.01)["unused"].item()
    assert fisher_ratio_mask(f_f, f_r, threshold=4.0)["a"].item()
    assert not fisher_ratio_mask(f_f, f_r, threshold=4.5)["a"].item()
    assert fisher_ratio_mask(f_f, f_r, threshold=0.1)["b"].item()


def test_topk_mask_keeps_the_requested_fraction():
    scores = {"w": torch.tensor([[0.1, -5.0], [3.0, 0.2]]), "b": torch.tensor([-0.05, 4.0])}
    mask = topk_mask(scores, 0.5)
    assert mask["w"].tolist() == [[False, True], [True, False]] and mask["b"].tolist() == [False, True]


def test_mask_round_trips_and_rejects_other_models(tmp_path):
    model = torch.nn.Linear(3, 2)
    named = list(model.named_parameters())
    mask = {"weight": torch.tensor([[True, False, True], [False, False, True]]), "bias": torch.tensor([True, False])}
    path = tmp_path / "mask.safetensors"
    save_mask(mask, path)
    loaded = load_mask(path, named)
    assert all(torch.equal(loaded[k], mask[k]) for k in mask)
    with pytest.raises(ValueError, match="mask_path"):
        load_mask(path, list(torch.nn.Linear(4, 2).named_parameters()))
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(ValueError, match="mask_path"):
        load_mask(path, named)


def test_fisher_noise_below_the_floor_counts_as_zero():
    # Two entries whose Fishers are float noise (1e-21 against a largest Fisher of 1): their ratios 3 and 1/3 would
    # decide them either way; under the floor both count as 0 on both sets, so both are selected, as exact zeros are.
    f_f = {"w": torch.tensor([1.0, 3e-21, 1e-21, 2e-12])}
    f_r = {"w": torch.tensor([0.5, 1e-21, 3e-21, 1e-12])}
    raw = fisher_ratio_mask(f_f, f_r, threshold=1.0)["w"].tolist()
    assert raw == [True, True, False, True]
    floored = fisher_ratio_mask(f_f, f_r, threshold=1.0, noise_floor=1e-16)["w"].tolist()
    assert floored == [True, True, True, True]  # 2e-12 vs 1e-12 is above the floor: decided by its ratio
    assert (
        fisher_ratio_mask(f_f, {"w": torch.tensor([0.5, 1e-21, 3e-21, 4e-12])}, noise_floor=1e-16)["w"][3].item()
        is False
    )

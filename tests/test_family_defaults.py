"""Per-family SFR-on defaults against constants written here from the authors' published settings
(../shared/design/sfr_on.md, "Published settings"), never read back from the library.

Clipping per step kind: classifiers clip the forget step only (7), the authors' DDPM both steps (1.0), their DiT the
forget step only (1.0), their Stable Diffusion run neither. λ of the adaptive weights: 0.5 (CIFAR-10, DDPM); the SD run
is unweighted (0). α decays by cosine except on Stable Diffusion (constant). The deviation options default to the
authors' behaviour. Each family's defaults are resolved by the engine (`Unlearner`) on a real model of the family.
"""

import pytest
from torch.optim.optimizer import register_optimizer_step_pre_hook

from hf_unlearn import UnlearnConfig, Unlearner
from hf_unlearn.tiny.classifiers import tiny_classifier
from hf_unlearn.tiny.diffusion import tiny_dit, tiny_unet

# (forget-step clip, remain-step clip, λ, α schedule), written from the authors' table.
AUTHORS = {
    "resnet": (7.0, 0.0, 0.5, "cosine"),
    "vit": (7.0, 0.0, 0.5, "cosine"),
    "ddpm": (1.0, 1.0, 0.5, "cosine"),
    "dit": (1.0, 0.0, 0.5, "cosine"),
    "stable_diffusion": (0.0, 0.0, 0.0, "constant"),
}
# The authors' code, where the library once deviated (tests/test_authors_update.py runs the update itself).
AUTHORS_RULES = {"mask_eps": 1e-15, "mask_zero_fisher": "select", "lr_schedule_steps": "remain"}
AUTHORS_RULES["forget_weight_rule"] = "inverse_power"


def _model(kind):
    if kind in ("resnet", "vit"):
        return tiny_classifier(kind, seed=0)
    return tiny_unet() if kind == "ddpm" else tiny_dit(size=8)


def _check(unlearner, kind):
    cfg = unlearner.config
    assert (cfg.max_grad_norm, cfg.remain_max_grad_norm, cfg.temperature, cfg.forget_alpha_schedule) == AUTHORS[kind]
    assert {k: getattr(cfg, k) for k in AUTHORS_RULES} == AUTHORS_RULES
    assert unlearner.method.geometry.name == "fast_slow" and cfg.mask_threshold == 1.0
    assert cfg.interpolation_beta == 1.0  # β = 1 (off) in every published config


@pytest.mark.parametrize("kind", ["resnet", "vit", "ddpm", "dit"])
def test_sfr_on_defaults_per_family_are_the_authors(kind, processor):
    extra = {"image_processor": processor} if kind in ("resnet", "vit") else {}
    _check(Unlearner.from_pretrained(_model(kind), UnlearnConfig(method="sfr_on", output_dir=""), **extra), kind)


def test_sfr_on_defaults_on_stable_diffusion_are_the_authors(sd_path):
    _check(Unlearner.from_pretrained(str(sd_path), UnlearnConfig(method="sfr_on", output_dir="")), "stable_diffusion")


def test_a_value_the_user_gives_wins_over_the_model_default():
    config = UnlearnConfig(method="sfr_on", remain_max_grad_norm=0.5, output_dir="")
    assert Unlearner.from_pretrained(tiny_dit(size=8), config).config.remain_max_grad_norm == 0.5


def test_one_optimizer_serves_both_step_kinds(digits, processor, tmp_path):
    # SFR-on's shared momentum: the state after a run holds one momentum buffer per parameter, built by both kinds.
    from hf_unlearn import ForgetRemainSplit

    split = ForgetRemainSplit.from_dataset(digits["train"].select(range(60)), forget_classes=[3])
    config = UnlearnConfig(method="sfr_on", optim="sgd", max_steps=1, remain_steps_per_forget=1, output_dir="")
    unlearner = Unlearner.from_pretrained(tiny_classifier("resnet", seed=0), config, image_processor=processor)
    seen = []
    hook = register_optimizer_step_pre_hook(lambda opt, a, k: seen.append(id(opt)))
    try:
        unlearner.unlearn(split)
    finally:
        hook.remove()
    assert len(seen) == 2 and len(set(seen)) == 1

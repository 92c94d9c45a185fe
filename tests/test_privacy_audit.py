"""The per-example privacy audit (U-LiRA) on a tiny ResNet in cheap mode: the statistics, the attack's direction (a
model that trained on the rows is told from retraining, a retrained one is not), memorisation, resuming, the CLI."""

import json

import numpy as np
import pytest
from datasets import DatasetDict

from hf_unlearn import ForgetRemainSplit
from hf_unlearn.audit import AuditConfig, memorisation, most_memorised, privacy_audit
from hf_unlearn.cli import main
from hf_unlearn.metrics.privacy import (
    auc,
    distinguishable_share,
    fit_gaussians,
    likelihood_ratio,
    logit_confidence,
    tpr_at_fpr,
)
from hf_unlearn.tiny.classifiers import TrainingRecipe, tiny_classifier, train_classifier

RECIPE = TrainingRecipe(max_steps=80, learning_rate=3e-3, batch_size=32)
FLIPPED = list(range(0, 100, 10))  # ten rows with a wrong label: what the shadows that trained on them memorise
FORGET = FLIPPED + list(range(5, 100, 10))  # those and ten ordinary rows


def shadow_config(folder, **kwargs) -> AuditConfig:
    recipe = {"shadow_max_steps": RECIPE.max_steps, "shadow_learning_rate": RECIPE.learning_rate}
    return AuditConfig(
        shadows_dir=str(folder), num_shadows=4, num_rt_shadows=3, shadow_batch_size=RECIPE.batch_size,
        **{**recipe, **kwargs},
    )  # fmt: skip


@pytest.fixture(scope="module")
def world(digits_small, tmp_path_factory):
    """200 training rows (ten of them mislabelled), an original trained on all of them, RT on the remain rows of a
    forget set of the ten mislabelled and ten ordinary rows, and the shadows of one cheap audit."""
    train = digits_small["train"].select(range(200))
    train = train.map(lambda row, i: {"label": (row["label"] + 1) % 10 if i in FLIPPED else row["label"]},
                      with_indices=True)  # fmt: skip
    split = ForgetRemainSplit.from_dataset(train, forget_ids=FORGET)
    original = train_classifier(tiny_classifier("resnet", seed=0), train, RECIPE, seed=0)
    retrained = train_classifier(tiny_classifier("resnet", seed=7), split.remain, RECIPE, seed=7)
    folder = tmp_path_factory.mktemp("shadows")
    return {"train": train, "split": split, "original": original, "rt": retrained, "shadows": folder}


@pytest.fixture(scope="module")
def audited(world):
    return privacy_audit(world["original"], world["split"], shadow_config(world["shadows"]), reference=world["rt"])


def test_statistics_on_known_numbers():
    logits = np.array([[2.0, 0.0, -1.0], [0.0, 3.0, 1.0]])
    labels = np.array([0, 2])
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    expected = np.log(p[[0, 1], labels] / (1 - p[[0, 1], labels]))
    np.testing.assert_allclose(logit_confidence(logits, labels), expected, rtol=1e-10)
    negatives = np.arange(1000.0)
    assert tpr_at_fpr([995.5, 998.5, 2000.0], negatives, 0.01) == 1.0  # above the 990th negative
    assert tpr_at_fpr([995.5, 998.5, 2000.0], negatives, 0.001) == pytest.approx(2 / 3)  # only above the 999th
    assert auc([2.0, 3.0], [0.0, 1.0]) == 1.0 and auc([0.0, 1.0], [2.0, 3.0]) == 0.0
    assert auc([1.0, 1.0], [1.0, 1.0]) == 0.5
    scores = np.array([[0.0, 10.0], [2.0, 14.0], [100.0, 100.0]])
    members = np.array([[True, True], [True, True], [False, False]])
    per_row = fit_gaussians(scores, members, per_example_variance=True)
    np.testing.assert_allclose(per_row["mean"], [1.0, 12.0])
    np.testing.assert_allclose(per_row["std"], [np.sqrt(2), np.sqrt(8)])
    pooled = fit_gaussians(scores, members)
    np.testing.assert_allclose(pooled["std"], [np.sqrt(5), np.sqrt(5)])  # (2 + 8) / (4 - 2)
    out = {"mean": np.zeros(3), "std": np.ones(3)}
    assert distinguishable_share([0.1, -3.0, 3.0], out, level=0.01) == pytest.approx(2 / 3)  # |z| > 2.576 both sides
    inside = {"mean": np.full(3, 5.0), "std": np.ones(3)}
    lr = likelihood_ratio([5.0, 2.5, 0.0], inside, out)
    assert lr[0] > 0 and lr[1] == pytest.approx(0.0) and lr[2] < 0


def test_trained_model_is_told_from_retraining_and_rt_is_not(audited):
    original, floor = audited.model, audited.floor
    assert audited.floor_source == "reference" and audited.num_negatives == 3 * 20
    # The original trained on its forget rows: its ratios sit above the retrained shadows' (at least on the ten
    # mislabelled rows, which RT gets "wrong" and the original "right"); RT's do not.
    assert original["tpr_at_1pct_fpr"] >= 0.3 and floor["tpr_at_1pct_fpr"] <= 0.1
    assert original["auc"] > 0.7 and floor["auc"] < original["auc"] - 0.15
    assert original["mean_lr"] > 0 > floor["mean_lr"]
    assert original["distinguishable"] >= 0.3 and floor["distinguishable"] <= 0.15
    assert len(audited.per_row["lr"]) == 20 and np.isfinite(audited.per_row["lr"]).all()


def test_mislabelled_rows_are_the_most_memorised(world):
    scores = memorisation(world["original"], world["train"], shadow_config(world["shadows"]))
    top = most_memorised(scores, 15)
    assert len(set(top) & set(FLIPPED)) >= 6, (top, scores["memorisation"][FLIPPED])


def test_shadows_resume_and_refuse_other_recipes(world, audited):
    config = shadow_config(world["shadows"])
    kept = world["shadows"] / "halves" / "shadow-000" / "scores.npz"
    stamp = kept.stat().st_mtime_ns
    redo = world["shadows"] / "halves" / "shadow-003"
    for f in redo.iterdir():
        f.unlink()
    redo.rmdir()
    again = privacy_audit(world["original"], world["split"], config, reference=world["rt"])
    assert kept.stat().st_mtime_ns == stamp and (redo / "scores.npz").exists()  # only the missing one trained
    assert again.model == pytest.approx(audited.model) and again.floor == pytest.approx(audited.floor)
    with pytest.raises(ValueError, match="shadows_dir.*recipe"):
        privacy_audit(world["original"], world["split"], shadow_config(world["shadows"], shadow_max_steps=81))


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--num_shadows", "3"], "`num_shadows` is 3"),
        (["--mode", "big"], "`mode` is 'big'"),
        (["--level", "1.5"], "`level` is 1.5"),
        (["--update_card"], "not a folder saved by hf_unlearn"),
    ],
)
def test_cli_refuses_bad_input_in_one_line(untrained_resnet_dir, tmp_path, capsys, flags, message):
    argv = ["audit", "--model", str(untrained_resnet_dir), "--forget_classes", "3", "--shadows_dir", str(tmp_path)]
    assert main(argv + flags) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message in err and "\n" not in err
    assert not (tmp_path / "halves").exists()  # refused before any shadow


def test_cli_writes_the_audit_with_the_same_numbers(world, audited, tmp_path, capsys):
    model_dir, data_dir = tmp_path / "model", tmp_path / "data"
    world["original"].model.save_pretrained(model_dir)
    world["original"].family.image_processor.save_pretrained(model_dir)
    DatasetDict(train=world["train"]).save_to_disk(data_dir)
    out = tmp_path / "audit.json"
    argv = ["audit", "--model", str(model_dir), "--dataset_name", str(data_dir), "--test_split", "",
            "--forget_ids", *map(str, FORGET), "--shadows_dir", str(world["shadows"]), "--num_shadows", "4",
            "--num_rt_shadows", "3", "--shadow_max_steps", "80", "--shadow_learning_rate", "0.003",
            "--shadow_batch_size", "32", "--audit_file", str(out)]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    result = json.loads(out.read_text())
    assert result["model"] == pytest.approx(audited.model)
    assert result["per_row"]["row"] == list(world["split"].forget_indices)
    printed = capsys.readouterr().out
    assert "| model | tpr_at_1pct_fpr" in printed and "20 forget rows, 4 halves + 3 RT shadows" in printed


def test_model_card_shows_the_audit(audited):
    from hf_unlearn.modelcard_robustness import robustness_rows

    entry = {"attack": "lira", "mode": audited.mode, "num_shadows": 4, "num_rt_shadows": 3, "level": 0.01}
    entry |= {"model": audited.model, "floor": audited.floor, "floor_source": "reference", "request": 1}
    (row,) = robustness_rows({"requests": [{}], "robustness": [entry]})
    assert row["attack"] == "per-example membership (U-LiRA)" and "4 shadows on random halves" in row["setting"]
    assert f"TPR@1%FPR {100 * audited.model['tpr_at_1pct_fpr']:.1f}%" in row["result"]
    assert f"retrained floor: TPR@1%FPR {100 * audited.floor['tpr_at_1pct_fpr']:.1f}%" in row["result"]

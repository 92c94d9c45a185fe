"""The Unlearner loop on real tiny classifiers: masks, fast-slow cycles, every method, save/load, seeds."""

import copy

import numpy as np
import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook
from transformers import AutoModelForImageClassification

from hf_unlearn import ForgetRemainSplit, UnlearnConfig, Unlearner, detect_family, get_method, list_methods
from hf_unlearn.evaluation import evaluate
from hf_unlearn.metrics import per_class_accuracy
from hf_unlearn.tiny.classifiers import tiny_classifier

CLASSIFIER_METHODS = list_methods("image_classifier")


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _changed(before, model):
    return [k for k, v in model.state_dict().items() if not torch.equal(before[k], v)]


def _quick(method, tmp_path, **kw):
    values = dict(
        method=method,
        max_steps=2,
        per_device_train_batch_size=16,
        output_dir=str(tmp_path / "run"),
        saliency_max_batches=2,
        remain_steps_per_forget=1,
    )
    values.update(kw)
    return UnlearnConfig(**values)


@pytest.fixture(scope="module")
def small_split(digits_small):
    return ForgetRemainSplit.from_dataset(digits_small["train"], forget_classes=[3], test_dataset=digits_small["test"])


def test_registry_lists_every_classifier_method():
    expected = {
        "sfr_on",
        "sfr_on_kl",
        "sfr_on_rl",
        "sfr_on_bound",
        "retrain",
        "finetune",
        "gradient_ascent",
        "random_label",
        "salun",
        "bad_teacher",
        "scrub",
    }
    assert expected <= set(CLASSIFIER_METHODS)
    assert "esd" not in CLASSIFIER_METHODS and "esd" in list_methods()
    with pytest.raises(ValueError, match="valid names: .*sfr_on"):
        get_method("sfr-off")


@pytest.mark.parametrize("kind", ["vit", "swin", "resnet"])
@pytest.mark.parametrize("method", CLASSIFIER_METHODS)
def test_every_method_runs_on_each_architecture_and_changes_weights(kind, method, small_split, processor, tmp_path):
    model = tiny_classifier(kind, seed=1)
    before = _state(model)
    unlearner = Unlearner.from_pretrained(model, _quick(method, tmp_path), image_processor=processor)
    result = unlearner.unlearn(small_split)
    assert _changed(before, unlearner.model), f"{method} on {kind} left every weight unchanged"
    assert len(result.history) == 2 and result.fingerprint == small_split.fingerprint
    for row in result.history:
        assert all(np.isfinite(v) for v in row.values())


def test_masked_parameters_do_not_move_on_forget_steps(resnet_copy, small_split, processor, tmp_path):
    # K = 0 leaves only forget steps, so every parameter the Fisher-ratio mask drops must stay bit-identical.
    config = _quick("sfr_on", tmp_path, max_steps=3, remain_steps_per_forget=0, mask_threshold=3.0)
    unlearner = Unlearner.from_pretrained(resnet_copy, config, image_processor=processor)
    before = dict(unlearner.model.named_parameters())
    before = {k: v.detach().clone() for k, v in before.items()}
    unlearner.unlearn(small_split)
    mask = unlearner.mask
    assert 0 < unlearner.result.mask_fraction < 1
    moved_outside = moved_inside = 0
    for name, p in unlearner.model.named_parameters():
        delta = (p.detach() - before[name]) != 0
        moved_outside += int((delta & ~mask[name]).sum())
        moved_inside += int((delta & mask[name]).sum())
    assert moved_outside == 0 and moved_inside > 0


def test_k_remain_steps_are_taken_per_forget_step(small_split, processor, tmp_path):
    model = tiny_classifier("resnet", seed=2)
    config = _quick("sfr_on", tmp_path, max_steps=3, remain_steps_per_forget=4, optim="adam")
    unlearner = Unlearner.from_pretrained(model, config, image_processor=processor)
    steps = []
    hook = register_optimizer_step_post_hook(lambda opt, args, kwargs: steps.append(1))
    try:
        unlearner.unlearn(small_split)
    finally:
        hook.remove()
    assert len(steps) == 3 * (1 + 4)


def test_forget_steps_fraction_limits_forget_steps(small_split, processor, tmp_path):
    config = _quick("scrub", tmp_path, max_steps=4)
    unlearner = Unlearner.from_pretrained(tiny_classifier("resnet"), config, image_processor=processor)
    history = unlearner.unlearn(small_split).history
    assert ["forget_loss" in row for row in history] == [True, True, False, False]


def test_sfr_on_forgets_a_digit_class_and_keeps_the_others(trained_resnet, digits, processor, tmp_path):
    split = ForgetRemainSplit.from_dataset(digits["train"], forget_classes=[3], test_dataset=digits["test"])
    before = evaluate(trained_resnet, split)
    config = UnlearnConfig(method="sfr_on", output_dir=str(tmp_path / "run"))
    unlearner = Unlearner.from_pretrained(copy.deepcopy(trained_resnet.model), config, image_processor=processor)
    unlearner.unlearn(split)
    after = unlearner.evaluate(split)
    assert before["FA"] > 95 and after["FA"] < 10
    assert after["TA"] > before["TA"] - 5 and after["RA"] > before["RA"] - 5
    assert after["TA_forget"] < 15


def test_same_seed_gives_the_same_weights(small_split, processor, tmp_path):
    runs = []
    for _ in range(2):
        unlearner = Unlearner.from_pretrained(
            tiny_classifier("vit", seed=3), _quick("sfr_on", tmp_path, seed=7), image_processor=processor
        )
        unlearner.unlearn(small_split)
        runs.append(_state(unlearner.model))
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    other = Unlearner.from_pretrained(
        tiny_classifier("vit", seed=3), _quick("sfr_on", tmp_path, seed=8), image_processor=processor
    )
    other.unlearn(small_split)
    assert any(not torch.equal(runs[0][k], v) for k, v in _state(other.model).items())


def test_save_then_load_round_trips_exactly(trained_resnet, small_split, processor, tmp_path):
    unlearner = Unlearner.from_pretrained(
        copy.deepcopy(trained_resnet.model), _quick("sfr_on", tmp_path), image_processor=processor
    )
    unlearner.unlearn(small_split)
    out = tmp_path / "unlearned"
    unlearner.save_pretrained(out)
    assert (out / "model.safetensors").is_file() and (out / "unlearn_config.json").is_file()
    reloaded = AutoModelForImageClassification.from_pretrained(out)
    saved = unlearner.model.state_dict()
    assert all(torch.equal(saved[k], v) for k, v in reloaded.state_dict().items())
    assert detect_family(str(out)) == "image_classifier"
    again = Unlearner.from_pretrained(str(out))  # the image processor was saved beside the model
    assert again.config.method == "sfr_on_bound"  # unset method: the classifier family's recommended variant
    logits = again.family.logits(again.model.eval(), again.family.collate([small_split.dataset[0]]))
    assert logits.shape == (1, 10)


def test_per_class_accuracy_of_forgotten_class_drops_only(trained_resnet, digits, processor, tmp_path):
    split = ForgetRemainSplit.from_dataset(digits["train"], forget_classes=[7], test_dataset=digits["test"])
    config = UnlearnConfig(output_dir=str(tmp_path / "run"))  # the family's default method and settings
    unlearner = Unlearner.from_pretrained(copy.deepcopy(trained_resnet.model), config, image_processor=processor)
    unlearner.unlearn(split)
    from hf_unlearn.evaluation import predict_logits

    logits, labels = predict_logits(unlearner.family, unlearner.model, digits["test"])
    per_class = per_class_accuracy(logits, labels, 10)
    assert per_class[7] < 20
    assert min(v for k, v in per_class.items() if k != 7) > 85


def test_gradient_accumulation_keeps_one_optimizer_step_per_cycle(small_split, processor, tmp_path):
    config = _quick(
        "sfr_on",
        tmp_path,
        max_steps=2,
        remain_steps_per_forget=2,
        gradient_accumulation_steps=3,
        per_device_train_batch_size=8,
    )
    unlearner = Unlearner.from_pretrained(tiny_classifier("resnet"), config, image_processor=processor)
    steps = []
    hook = register_optimizer_step_post_hook(lambda opt, args, kwargs: steps.append(1))
    try:
        before = _state(unlearner.model)
        unlearner.unlearn(small_split)
    finally:
        hook.remove()
    assert len(steps) == 2 * (1 + 2) and _changed(before, unlearner.model)


def test_bf16_mixed_precision_runs_and_then_fp32_again(small_split, processor, tmp_path):
    for precision in ("bf16", "no"):
        unlearner = Unlearner.from_pretrained(
            tiny_classifier("resnet"), _quick("sfr_on", tmp_path, mixed_precision=precision), image_processor=processor
        )
        before = _state(unlearner.model)
        unlearner.unlearn(small_split)
        assert _changed(before, unlearner.model)
        assert all(p.dtype == torch.float32 for p in unlearner.model.parameters())


@pytest.mark.parametrize("kind, warmup", [("cosine", 0), ("linear", 2), ("constant", 2)])
def test_learning_rate_of_each_cycle_is_transformers_schedule(
    resnet_copy, small_split, processor, tmp_path, kind, warmup
):
    """The rate of cycle t is the one a transformers `LambdaLR` from `get_scheduler` gives after t steps (warm-up from
    0; `constant` with warm-up is transformers' `constant_with_warmup`)."""
    from transformers import get_scheduler

    config = _quick("sfr_on", tmp_path, max_steps=6, learning_rate=1e-3, lr_scheduler_type=kind, warmup_steps=warmup)
    unlearner = Unlearner.from_pretrained(resnet_copy, config, image_processor=processor)
    seen = [h["lr"] for h in unlearner.unlearn(small_split).history]

    probe = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    name = "constant_with_warmup" if kind == "constant" and warmup else kind
    scheduler = get_scheduler(name, probe, num_warmup_steps=warmup, num_training_steps=6)
    expected = []
    for _ in range(6):
        expected.append(probe.param_groups[0]["lr"])
        probe.step()
        scheduler.step()
    assert seen == pytest.approx(expected, rel=1e-12, abs=0.0)
    assert (seen[0] == 0.0) == bool(warmup)


def test_dataloader_workers_change_no_weight(resnet_copy, small_split, processor, tmp_path):
    """`dataloader_num_workers` moves decoding and preprocessing into worker processes; the batches, so the weights,
    stay bit-identical (seeded sampler in the main process, deterministic collate)."""
    import os

    def run(workers):
        config = _quick("sfr_on", tmp_path / str(workers), max_steps=3, dataloader_num_workers=workers)
        unlearner = Unlearner.from_pretrained(copy.deepcopy(resnet_copy), config, image_processor=processor)
        log, collate = tmp_path / f"pids-{workers}", unlearner.family.collate

        def logged(rows):  # appends to a file: a worker's memory is its own
            with open(log, "a") as fh:
                fh.write(f"{os.getpid()}\n")
            return collate(rows)

        unlearner.family.collate = logged
        unlearner.unlearn(small_split)
        return _state(unlearner.model), set(log.read_text().split())

    inline, inline_pids = run(0)
    workers, worker_pids = run(2)
    main = str(os.getpid())
    # Two workers for each of the four loaders: the two saliency passes' and the two step loaders'.
    assert inline_pids == {main} and len(worker_pids - {main}) == 8
    assert all(torch.equal(inline[k], workers[k]) for k in inline)
    with pytest.raises(ValueError, match="dataloader_num_workers"):
        UnlearnConfig(dataloader_num_workers=1.5)


def test_preprocessed_rows_change_no_weight(resnet_copy, small_split, processor, tmp_path):
    """The image-classifier family decodes and preprocesses each row once and keeps it; masks, batches and weights
    are bit-identical to preprocessing every batch again (`preprocessed_cache_bytes=0`), and rows are processed once
    however many epochs the loaders run."""
    from hf_unlearn.families.image_classifier import PreprocessedRows

    def run(cache_bytes):
        # Five forget epochs and full saliency passes: every row is read several times.
        config = _quick("sfr_on", tmp_path / str(cache_bytes), max_steps=45, saliency_max_batches=None)
        unlearner = Unlearner.from_pretrained(copy.deepcopy(resnet_copy), config, image_processor=processor)
        family = unlearner.family
        family.preprocessed_cache_bytes = cache_bytes
        processed, pixel_values = [0], family.pixel_values

        def counted(images):  # counts the images the processor is handed: the work the cache saves
            processed[0] += len(images)
            return pixel_values(images)

        family.pixel_values = counted
        unlearner.unlearn(small_split)
        loader = family.make_dataloader(small_split.forget, batch_size=16, shuffle=False, seed=0)
        return _state(unlearner.model), unlearner.mask, processed[0], loader

    kept_state, kept_mask, kept_images, kept_loader = run(256 * 2**20)
    again_state, again_mask, again_images, again_loader = run(0)
    assert isinstance(kept_loader.dataset, PreprocessedRows) and not isinstance(again_loader.dataset, PreprocessedRows)
    assert all(torch.equal(kept_state[k], again_state[k]) for k in kept_state)
    assert all(torch.equal(kept_mask[k], again_mask[k]) for k in kept_mask)
    rows = len(small_split.forget) + len(small_split.remain)
    # Kept: each row once (plus the one-row probes of validation and of the size estimate); again: every epoch.
    assert kept_images <= rows + 4 < again_images
    first = next(iter(kept_loader))
    assert torch.equal(first["pixel_values"], family_batch(processor, small_split.forget, 16))


def family_batch(processor, dataset, rows):
    """The first `rows` rows of `dataset` preprocessed as one batch, as the family did before it kept rows."""
    return processor([dataset[i]["image"] for i in range(rows)], return_tensors="pt")["pixel_values"]

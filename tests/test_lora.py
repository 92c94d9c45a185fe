"""LoRA-only unlearning: only adapters (and a classifier head) train, the base stays byte-identical, adapters or merged
models save and reload, gradient checkpointing still trains the adapters, and the diffusion families get adapters."""

import dataclasses
import hashlib
import json
import os

import pytest
import torch
from huggingface_hub import ModelCard
from peft import PeftModel
from transformers import AutoModelForImageClassification

from hf_unlearn import ForgetRemainSplit, UnlearnConfig, Unlearner
from hf_unlearn.lora import default_target_modules, prepare_model, trainable_parameter_count
from hf_unlearn.tiny.classifiers import tiny_classifier

PIXELS = torch.randn(6, 1, 16, 16, generator=torch.Generator().manual_seed(0))


def _sha(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def _base_key(name: str) -> str:
    """The original model's name of a PeftModel's base parameter."""
    name = name.removeprefix("base_model.model.").replace(".base_layer", "")
    return name.replace(".original_module", "")


def _lora_config(tmp, **kw):
    values = dict(
        method="sfr_on",
        lora=True,
        learning_rate=1e-2,
        max_steps=16,
        remain_steps_per_forget=1,
        per_device_train_batch_size=32,
        saliency_max_batches=2,
        output_dir=str(tmp / "run"),
        seed=0,
    )
    return UnlearnConfig(**(values | kw))


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, trained_resnet_dir, digits_small):
    tmp = tmp_path_factory.mktemp("lora")
    original = trained_resnet_dir
    split = ForgetRemainSplit.from_dataset(
        digits_small["train"], forget_classes=[3], test_dataset=digits_small["test"]
    )
    unlearner = Unlearner.from_pretrained(str(original), _lora_config(tmp))
    before = unlearner.evaluate(split)
    file_hash = _sha(original / "model.safetensors")
    unlearner.unlearn(split)
    after = unlearner.evaluate(split)
    unlearner.save_pretrained(tmp / "adapter")
    return {
        "tmp": tmp,
        "original": original,
        "unlearner": unlearner,
        "before": before,
        "after": after,
        "file_hash": file_hash,
    }


def test_lora_forgets_with_5x_fewer_trainable_parameters_and_masks_over_adapters(lora_run):
    unlearner, before, after = lora_run["unlearner"], lora_run["before"], lora_run["after"]
    assert before["FA"] > 95 and after["FA"] < 30 and after["RA"] > 90  # forgot class 3, kept the rest
    trainable = {n: p for n, p in unlearner.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or "modules_to_save" in n for n in trainable)
    assert any("modules_to_save" in n for n in trainable)  # the classifier head trains fully
    full = sum(p.numel() for p in tiny_classifier("resnet").parameters())
    assert 5 * sum(p.numel() for p in trainable.values()) <= full
    assert set(unlearner.mask) == set(trainable)  # the saliency mask covers exactly the adapters (+ head)
    assert default_target_modules(unlearner.model.get_base_model()) == ["convolution"]


def test_base_weights_stay_byte_identical_in_adapter_mode(lora_run, trained_resnet):
    original = trained_resnet.model.state_dict()
    base = {
        _base_key(n): t
        for n, t in lora_run["unlearner"].model.state_dict().items()
        if "lora_" not in n and "modules_to_save" not in n
    }
    assert set(base) == set(original)
    assert all(torch.equal(base[k], original[k]) for k in original)
    assert _sha(lora_run["original"] / "model.safetensors") == lora_run["file_hash"]


def test_adapter_output_reloads_with_peft_and_carries_a_card(lora_run):
    folder, unlearner = lora_run["tmp"] / "adapter", lora_run["unlearner"]
    files = set(os.listdir(folder))
    assert {"adapter_model.safetensors", "adapter_config.json", "unlearning_record.json", "README.md"} <= files
    assert "model.safetensors" not in files  # the adapter alone, not a copy of the base
    assert json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"] == str(
        lora_run["original"]
    )
    base = AutoModelForImageClassification.from_pretrained(lora_run["original"])
    reloaded = PeftModel.from_pretrained(base, folder).eval()
    with torch.no_grad():
        expected = unlearner.model(pixel_values=PIXELS).logits
        assert torch.allclose(reloaded(pixel_values=PIXELS).logits, expected, atol=1e-5)
        untouched = AutoModelForImageClassification.from_pretrained(lora_run["original"]).eval()
        assert not torch.allclose(untouched(pixel_values=PIXELS).logits, expected, atol=1e-3)  # the adapter matters
    card = ModelCard.load(folder / "README.md")
    assert card.data.library_name == "peft" and "lora" in card.data.tags and "PeftModel.from_pretrained" in card.text
    request = json.loads((folder / "unlearning_record.json").read_text())["requests"][-1]
    assert request["lora"]["trainable_parameters"] == trainable_parameter_count(unlearner.model)[0]


def test_merged_output_is_a_plain_model_with_the_same_predictions(lora_run):
    unlearner = lora_run["unlearner"]
    unlearner.config = dataclasses.replace(unlearner.config, lora_save="merged")
    try:
        unlearner.save_pretrained(lora_run["tmp"] / "merged")
    finally:
        unlearner.config = dataclasses.replace(unlearner.config, lora_save="adapter")
    assert "adapter_config.json" not in os.listdir(lora_run["tmp"] / "merged")
    merged = AutoModelForImageClassification.from_pretrained(lora_run["tmp"] / "merged").eval()
    assert not any("lora" in n for n, _ in merged.named_parameters())
    with torch.no_grad():
        assert torch.allclose(
            merged(pixel_values=PIXELS).logits, unlearner.model(pixel_values=PIXELS).logits, atol=1e-4
        )


def test_gradient_checkpointing_still_trains_the_adapters(tmp_path, digits_small, processor):
    folder = tmp_path / "vit"
    tiny_classifier("vit", seed=0).save_pretrained(folder)
    processor.save_pretrained(folder)
    split = ForgetRemainSplit.from_dataset(digits_small["train"], forget_classes=[3])
    grads = {}
    for checkpointing in (False, True):
        unlearner = Unlearner.from_pretrained(
            str(folder),
            _lora_config(
                tmp_path,
                gradient_checkpointing=checkpointing,
                max_steps=1,
                per_device_train_batch_size=16,
                saliency_max_batches=1,
            ),
        )
        torch.manual_seed(0)
        model = prepare_model(unlearner.family, unlearner.config)
        unlearner.family.model = model
        assert default_target_modules(model.get_base_model()) == ["q_proj", "v_proj"]
        with torch.no_grad():  # B starts at zero, which would leave A without gradient in both runs
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)) * 0.1)
        model.train()
        batch = unlearner.family.collate([split.forget[i] for i in range(8)])
        unlearner.family.per_sample_loss(model, batch).mean().backward()
        grads[checkpointing] = {n: p.grad.clone() for n, p in model.named_parameters() if "lora_" in n}
        checkpointed = any(getattr(m, "gradient_checkpointing", False) for m in model.modules())
        assert checkpointed == checkpointing
        model.zero_grad(set_to_none=True)
    assert grads[True] and all(g.abs().sum() > 0 for g in grads[True].values())
    assert all(torch.allclose(grads[True][n], grads[False][n], atol=1e-6) for n in grads[False])

    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    unlearner.unlearn(split)
    after = dict(unlearner.model.named_parameters())
    moved = [n for n in before if "lora_" in n and not torch.equal(before[n], after[n].detach())]
    assert len(moved) == len([n for n in before if "lora_" in n])
    assert all(torch.equal(before[n], after[n].detach()) for n in before if "lora_" not in n and "modules_to" not in n)


def test_bad_targets_and_unsupported_checkpointing_raise_before_any_weight_change(tmp_path, lora_run, digits_small):
    split = ForgetRemainSplit.from_dataset(digits_small["train"], forget_classes=[3])
    for config, match in [
        (_lora_config(tmp_path, lora_target_modules=["query", "value"]), "lora_target_modules"),
        (_lora_config(tmp_path, lora=False, gradient_checkpointing=True), "gradient_checkpointing"),
    ]:
        unlearner = Unlearner.from_pretrained(str(lora_run["original"]), config)
        before = {n: p.detach().clone() for n, p in unlearner.model.named_parameters()}
        with pytest.raises(ValueError, match=match):
            unlearner.unlearn(split)
        assert all(torch.equal(before[n], p.detach()) for n, p in unlearner.model.named_parameters() if n in before)


@pytest.fixture(scope="module")
def unet_run(tmp_path_factory, digits):
    from hf_unlearn.tiny.diffusion import tiny_scheduler, tiny_unet

    tmp = tmp_path_factory.mktemp("unet_lora")
    folder = tmp / "unet"
    tiny_unet(seed=0).save_pretrained(folder)
    tiny_scheduler().save_pretrained(folder)
    train = digits["train"].train_test_split(train_size=120, seed=0, stratify_by_column="label")["train"]
    split = ForgetRemainSplit.from_dataset(train, forget_classes=[3])
    config = _lora_config(
        tmp,
        method="sfr_on_remap",
        max_steps=1,
        learning_rate=1e-3,
        per_device_train_batch_size=8,
        saliency_max_batches=1,
    )
    unlearner = Unlearner.from_pretrained(str(folder), config)
    original = {n: p.detach().clone() for n, p in unlearner.model.named_parameters()}
    unlearner.unlearn(split)
    unlearner.save_pretrained(tmp / "unet_adapter")
    return {
        "tmp": tmp,
        "folder": folder,
        "split": split,
        "config": config,
        "unlearner": unlearner,
        "original": original,
    }


def _unet_outputs(model):
    sample, t = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([10, 500])
    with torch.no_grad():
        return model(sample, t, class_labels=torch.tensor([3, 4])).sample


def test_class_conditional_unet_adapter_is_peft_and_trains_only_the_adapters(unet_run):
    unlearner, original = unet_run["unlearner"], unet_run["original"]
    assert isinstance(unlearner.model, PeftModel)
    named = dict(unlearner.model.get_base_model().named_parameters())
    trainable = [n for n, p in named.items() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in trainable} == {"to_q", "to_k", "to_v", "0"}
    for name, weight in original.items():  # the base is untouched: same tensor, in place or under `base_layer`
        prefix, leaf = name.rsplit(".", 1)
        assert torch.equal(weight, named.get(name, named.get(f"{prefix}.base_layer.{leaf}")).detach()), name
    assert any(not torch.equal(torch.zeros_like(named[n]), named[n].detach()) for n in trainable if "lora_B" in n)


def test_class_conditional_unet_adapter_loads_with_plain_peft_with_its_trained_weights(unet_run):
    from diffusers import UNet2DModel

    folder, unlearner = unet_run["tmp"] / "unet_adapter", unet_run["unlearner"]
    assert {"adapter_model.safetensors", "adapter_config.json"} <= set(os.listdir(folder))
    assert json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"] == str(
        unet_run["folder"]
    )
    reloaded = PeftModel.from_pretrained(UNet2DModel.from_pretrained(unet_run["folder"]), folder).eval()
    trained = {n: p for n, p in unlearner.model.named_parameters() if "lora_" in n}
    loaded = dict(reloaded.named_parameters())
    assert set(trained) <= set(loaded)
    assert all(torch.equal(trained[n].detach(), loaded[n].detach()) for n in trained)  # the trained values, no zeros
    assert any(trained[n].detach().abs().sum() > 0 for n in trained if "lora_B" in n)
    assert torch.allclose(_unet_outputs(reloaded), _unet_outputs(unlearner.model), atol=1e-5)
    untouched = UNet2DModel.from_pretrained(unet_run["folder"]).eval()
    assert not torch.allclose(_unet_outputs(untouched), _unet_outputs(unlearner.model), atol=1e-6)
    card = (folder / "README.md").read_text()
    assert "PeftModel.from_pretrained(pipe.unet" in card and "load_adapter" not in card


def test_class_conditional_unet_merged_output_is_a_plain_model(unet_run):
    unlearner, tmp = unet_run["unlearner"], unet_run["tmp"]
    unlearner.config = dataclasses.replace(unlearner.config, lora_save="merged")
    try:
        unlearner.save_pretrained(tmp / "unet_merged")
    finally:
        unlearner.config = dataclasses.replace(unlearner.config, lora_save="adapter")
    merged = Unlearner.from_pretrained(str(tmp / "unet_merged"), UnlearnConfig()).model
    assert not any("lora" in n for n, _ in merged.named_parameters())
    assert torch.allclose(_unet_outputs(merged.eval()), _unet_outputs(unlearner.model), atol=1e-4)


def test_a_second_lora_request_on_the_adapter_folder_stacks_onto_it_and_extends_the_record(unet_run):
    from diffusers import UNet2DModel

    tmp, first = unet_run["tmp"], unet_run["tmp"] / "unet_adapter"
    second = Unlearner.from_pretrained(str(first), unet_run["config"])  # base resolved from adapter_config.json
    # The first adapter is merged into the weights: the model the folder describes, with no adapter of its own yet.
    assert not isinstance(second.model, PeftModel)
    assert torch.allclose(_unet_outputs(second.model.eval()), _unet_outputs(unet_run["unlearner"].model), atol=1e-5)
    second.unlearn(unet_run["split"])
    assert isinstance(second.model, PeftModel)
    assert all(p.requires_grad == ("lora_" in n) for n, p in second.model.named_parameters())
    second.save_pretrained(tmp / "unet_adapter_2")
    record = json.loads((tmp / "unet_adapter_2" / "unlearning_record.json").read_text())
    assert len(record["requests"]) == 2 and record["base_model"] is None  # a local base: no Hub id, no path
    assert record["parent_model"] == str(first)
    config = json.loads((tmp / "unet_adapter_2" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(unet_run["folder"])
    first_rank = json.loads((first / "adapter_config.json").read_text())["r"]
    assert config["r"] == 2 * first_rank  # both adapters, side by side
    # Plain peft on the original base gives the model of the second request: both requests' changes.
    reloaded = PeftModel.from_pretrained(UNet2DModel.from_pretrained(unet_run["folder"]), tmp / "unet_adapter_2")
    assert torch.allclose(_unet_outputs(reloaded.eval()), _unet_outputs(second.model), atol=1e-5)
    only_first = PeftModel.from_pretrained(UNet2DModel.from_pretrained(unet_run["folder"]), first).eval()
    assert not torch.allclose(_unet_outputs(only_first), _unet_outputs(second.model), atol=1e-5)


def test_stable_diffusion_unet_adapter_saves_in_diffusers_format_and_reloads(tmp_path):
    from diffusers import StableDiffusionPipeline
    from tiny_sd import dataset_split, tiny_sd_pipeline

    tiny_sd_pipeline().save_pretrained(tmp_path / "sd")
    split = dataset_split(n_per=2)
    config = _lora_config(
        tmp_path,
        method="sfr_on_remap",
        max_steps=1,
        learning_rate=1e-2,
        per_device_train_batch_size=2,
        saliency_max_batches=1,
    )
    unlearner = Unlearner.from_pretrained(str(tmp_path / "sd"), config)
    original = {n: p.detach().clone() for n, p in unlearner.model.named_parameters()}
    unlearner.unlearn(split)
    named = dict(unlearner.model.named_parameters())
    trainable = [n for n, p in named.items() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    for name, weight in original.items():
        prefix, leaf = name.rsplit(".", 1)
        assert torch.equal(weight, named.get(name, named.get(f"{prefix}.base_layer.{leaf}")).detach()), name

    unlearner.save_pretrained(tmp_path / "out")
    assert "pytorch_lora_weights.safetensors" in os.listdir(tmp_path / "out")
    pipe = StableDiffusionPipeline.from_pretrained(tmp_path / "out", safety_checker=None)
    base_unet = {n: p.detach().clone() for n, p in pipe.unet.named_parameters()}
    assert all(torch.equal(original[n], base_unet[n]) for n in original)  # the saved base is the original
    pipe.load_lora_weights(tmp_path / "out")
    sample, t, states = torch.randn(2, 4, 8, 8), torch.tensor([10, 500]), torch.randn(2, 8, 32)
    with torch.no_grad():
        expected = unlearner.model(sample, t, encoder_hidden_states=states).sample
        assert torch.allclose(pipe.unet(sample, t, encoder_hidden_states=states).sample, expected, atol=1e-5)
    assert "load_lora_weights" in (tmp_path / "out" / "README.md").read_text()

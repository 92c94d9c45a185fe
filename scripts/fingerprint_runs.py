"""Bit-identity check for refactors: a sample of short runs (ResNet and ViT classifiers, a class-conditional UNet;
every geometry, saliency and remain source), each reduced to hashes of its final weights and its history, its work
counts and mask fraction. Run it on two commits and compare the JSON files:

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 python scripts/fingerprint_runs.py before.json   # on the old commit
    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 python scripts/fingerprint_runs.py after.json    # on the new one
    cmp before.json after.json
"""

import copy
import hashlib
import json
import sys
import warnings

import torch

from hf_unlearn import ForgetRemainSplit, UnlearnConfig, Unlearner, load_digits_dataset
from hf_unlearn.tiny.classifiers import TrainingRecipe, digits_image_processor, tiny_classifier, train_classifier
from hf_unlearn.tiny.diffusion import tiny_scheduler, tiny_unet

CLASSIFIER_RUNS = [
    ("sfr_on", {}),
    ("sfr_on_bound", {}),
    ("sfr_on_kl", {"interpolation_beta": 0.7}),
    ("salun", {}),
    ("scrub", {}),
    ("bad_teacher", {}),
    ("gradient_ascent", {}),
    ("random_label", {}),
    ("finetune", {}),
]
UNET_RUNS = ["sfr_on", "sfr_on_remap", "selective_amnesia", "esd", "salun", "gradient_ascent"]


def digest(model, result):
    h = hashlib.sha256()
    for n, p in sorted(model.state_dict().items()):
        h.update(n.encode())
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    hist = json.dumps(result.history, sort_keys=True, default=str)
    work = json.dumps(result.work, sort_keys=True)
    return h.hexdigest()[:16], hashlib.sha256(hist.encode()).hexdigest()[:16], work, result.mask_fraction


def main(path):
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    proc = digits_image_processor()
    train = load_digits_dataset()["train"]
    split = ForgetRemainSplit.from_dataset(train.select(range(300)), forget_classes=[3])
    out = {}
    for kind in ["resnet", "vit"]:
        recipe = TrainingRecipe(max_steps=30, batch_size=32)
        base = train_classifier(tiny_classifier(kind, seed=0), train, recipe, seed=0).model
        for method, extra in CLASSIFIER_RUNS:
            cfg = UnlearnConfig(
                method=method, max_steps=3, per_device_train_batch_size=16, seed=1, output_dir="", **extra
            )
            u = Unlearner.from_pretrained(copy.deepcopy(base), cfg, image_processor=proc)
            out[f"{kind}-{method}"] = digest(u.model, u.unlearn(split))
    dsplit = ForgetRemainSplit.from_dataset(train.select(range(200)), forget_classes=[3])
    unet = tiny_unet(seed=0)
    for method in UNET_RUNS:
        cfg = UnlearnConfig(method=method, max_steps=2, per_device_train_batch_size=16, seed=1, output_dir="")
        u = Unlearner.from_pretrained(
            copy.deepcopy(unet), cfg, family="class_conditional_diffusion", scheduler=tiny_scheduler()
        )
        out[f"unet-{method}"] = digest(u.model, u.unlearn(dsplit))
    with open(path, "w") as fh:
        json.dump(out, fh, indent=1)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main(sys.argv[1])

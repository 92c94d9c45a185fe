"""Shared fixtures: offline settings, the bundled digits, and tiny models trained on them (cached per session)."""

import copy
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TQDM_DISABLE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

transformers.logging.set_verbosity_error()
# Tiny models run as fast on one thread as on two, and far faster when other jobs (or a second pytest-xdist worker)
# share the CPU.
torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist with `--dist loadgroup`, every test of the tiny Stable Diffusion runs on one worker, so the
    session fixture that trains it (`sd_path`, the suite's most expensive) is built once, not once per worker; the same
    for the tiny SDXL folder (`sdxl_path`, tests/test_sdxl.py)."""
    for item in items:
        for fixture in ("sd_path", "sdxl_path"):
            if fixture in getattr(item, "fixturenames", ()):
                item.add_marker(pytest.mark.xdist_group(fixture))
                break


def pytest_terminal_summary(terminalreporter):
    """One line on the machine: a suite that is slow in CI but not here is then explained by the log (CPUs the
    process may use, the load, torch's threads)."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    terminalreporter.write_line(
        f"machine: {os.cpu_count()} CPUs, {usable} usable, load {load}, torch threads {torch.get_num_threads()}, "
        f"xdist workers {getattr(terminalreporter.config.option, 'numprocesses', None)}"
    )


@pytest.fixture(scope="session")
def digits():
    from hf_unlearn import load_digits_dataset

    return load_digits_dataset()


@pytest.fixture(scope="session")
def digits_small(digits):
    """A stratified 600-row training subset and 300 test rows: enough signal, quick to train."""
    train = digits["train"].train_test_split(train_size=600, seed=0, stratify_by_column="label")["train"]
    test = digits["test"].select(range(300))
    return {"train": train, "test": test}


@pytest.fixture(scope="session")
def processor():
    from hf_unlearn.tiny.classifiers import digits_image_processor

    return digits_image_processor()


@pytest.fixture(scope="session")
def trained_resnet(digits):
    """A tiny ResNet trained on all digits training rows (the 'original' model), as an Unlearner."""
    from hf_unlearn.tiny.classifiers import RECIPES, tiny_classifier, train_classifier

    return train_classifier(tiny_classifier("resnet", seed=0), digits["train"], RECIPES["resnet"], seed=0)


@pytest.fixture(scope="session")
def trained_resnet_dir(trained_resnet, processor, tmp_path_factory):
    """`trained_resnet` saved as a plain transformers folder with its processor (read-only: tests never write here)."""
    folder = tmp_path_factory.mktemp("trained_resnet")
    trained_resnet.model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture
def resnet_copy(trained_resnet):
    return copy.deepcopy(trained_resnet.model)


@pytest.fixture(scope="session")
def sd_path(tmp_path_factory):
    """A tiny Stable Diffusion pipeline trained until its output depends on the prompt (tests/tiny_sd.py), saved."""
    from tiny_sd import train_tiny_sd

    return train_tiny_sd(tmp_path_factory.mktemp("sd"))


@pytest.fixture(scope="session")
def one_batch_split(digits):
    """20 rows of digit 3 (forget) and 30 rows of other digits (remain): each set fits one batch of 64, so the
    update-rule tests know exactly which rows every step sees."""
    from hf_unlearn import ForgetRemainSplit

    train = digits["train"]
    labels = train["label"]
    forget_ids = [i for i, y in enumerate(labels) if y == 3][:20]
    remain_ids = [i for i, y in enumerate(labels) if y != 3][:30]
    return ForgetRemainSplit.from_dataset(train.select(forget_ids + remain_ids), forget_ids=list(range(20)))


@pytest.fixture(scope="session")
def untrained_resnet_dir(tmp_path_factory):
    """A tiny ResNet built from its config (untrained) and its digits processor, saved: for checks of the plumbing."""
    from hf_unlearn.tiny.classifiers import digits_image_processor, tiny_classifier

    folder = tmp_path_factory.mktemp("untrained_resnet")
    tiny_classifier("resnet", seed=0).save_pretrained(folder)
    digits_image_processor().save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def digits_folder(digits_small, tmp_path_factory):
    """200 training and 100 test rows of the real digits, saved with `save_to_disk` (what `--dataset_name` reads)."""
    from datasets import DatasetDict

    folder = tmp_path_factory.mktemp("digits_folder")
    small = {"train": digits_small["train"].select(range(200)), "test": digits_small["test"].select(range(100))}
    DatasetDict(small).save_to_disk(folder)
    return folder

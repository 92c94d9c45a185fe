"""A 2-process CPU run (`accelerate launch`, gloo: MULTI_CPU) against a single process with the same global batch.

Two layouts of the same 320 rows (tests/mp_unlearn_helper.py `LAYOUTS`): "even", set sizes that divide the global
batch of 32, and "uneven", 67 forget and 253 remain rows with a full saliency pass, where each set ends on a short
global batch (forget: 3 rows, all on rank 0; remain: 29 rows, 16 + 13) and the training loader pads its last forget
batch with repeated rows that must weigh zero.

Stated tolerance: the saliency masks are identical (so are their fractions), every weight within 1e-4 (float
summation order differs between the DDP all-reduce and a single batch), and the gathered metrics equal to the
single-process ones within one row.
"""

import copy
import glob
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

import mp_unlearn_helper  # noqa: E402

PER_DEVICE_BATCH = 16


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _launch(model_dir: Path, out_dir: Path, log_dir: Path, layout: str) -> subprocess.CompletedProcess:
    """`accelerate launch` with the shipped 2-process CPU config; each rank's output goes to its own log file."""
    env = {k: v for k, v in os.environ.items() if k != "TQDM_DISABLE"}  # the bar must show, on rank 0 only
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", PYTHONPATH=str(HERE.parent))
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.accelerate_cli",
        "launch",
        "--config_file",
        str(HERE.parent / "configs" / "accelerate" / "cpu_2proc.yaml"),
        "--main_process_port",
        str(_free_port()),
        "--tee",
        "3",
        "--log_dir",
        str(log_dir),
        str(HERE / "mp_unlearn_helper.py"),
        str(model_dir),
        str(out_dir),
        str(PER_DEVICE_BATCH),
        layout,
    ]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)


def _rank_file(log_dir: Path, rank: int, name: str) -> str:
    (path,) = glob.glob(str(log_dir / "**" / "attempt_0" / str(rank) / name), recursive=True)
    return Path(path).read_text()


def _result(text: str) -> dict:
    (line,) = [ln for ln in text.splitlines() if ln.startswith("RESULT ")]
    return json.loads(line[len("RESULT ") :])


@pytest.mark.multiprocess
# "uneven" (short last batches on every set, padded forget rows) is the stricter layout; "even" runs with -m slow.
@pytest.mark.parametrize("layout", [pytest.param("even", marks=pytest.mark.slow), "uneven"])
def test_two_cpu_processes_match_one_process_with_the_same_global_batch(tmp_path, processor, layout):
    from hf_unlearn.tiny.classifiers import tiny_classifier

    model_dir = tmp_path / "original"
    tiny_classifier("vit", seed=0).save_pretrained(model_dir)
    processor.save_pretrained(model_dir)
    num_forget, max_batches = mp_unlearn_helper.LAYOUTS[layout]
    num_remain = mp_unlearn_helper.NUM_ROWS - num_forget
    global_batch = 2 * PER_DEVICE_BATCH
    if layout == "uneven":
        assert num_forget % global_batch and num_remain % global_batch and max_batches is None

    proc = _launch(model_dir, tmp_path / "two", tmp_path / "logs", layout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [_result(_rank_file(tmp_path / "logs", r, "stdout.log")) for r in (0, 1)]
    assert [r["rank"] for r in ranks] == [0, 1] and all(r["num_processes"] == 2 for r in ranks)

    # Only the main process writes files and shows the progress bar.
    assert ranks[1]["writes"] == []
    assert any(
        path.endswith("unlearning_record.json.tmp") or "unlearning_record" in path for _, path in ranks[0]["writes"]
    )
    assert "unlearn[sfr_on]" in _rank_file(tmp_path / "logs", 0, "stderr.log")
    assert "unlearn[sfr_on]" not in _rank_file(tmp_path / "logs", 1, "stderr.log")
    saved = tmp_path / "two" / "model"
    assert {"model.safetensors", "config.json", "unlearning_record.json", "README.md"} <= set(os.listdir(saved))
    # No half-written temp folders (the run's lock file, emptied on release, is the only hidden entry).
    assert not [p for p in os.listdir(tmp_path / "two") if p.startswith(".") and p != ".hf_unlearn.lock"]

    # Gathered predictions: every test row exactly once, in order, on both ranks.
    for view in ranks:
        assert view["rows_seen"] == mp_unlearn_helper.NUM_TEST and view["labels_in_order"]
    assert ranks[0]["metrics"] == ranks[1]["metrics"]

    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # the ranks ran with the helper's thread settings; match them for the comparison
    try:
        single = mp_unlearn_helper.run(str(model_dir), str(tmp_path / "one"), global_batch, layout)
    finally:
        torch.set_num_threads(threads)
    assert single["num_processes"] == 1
    for view in [single, *ranks]:
        assert (view["num_forget"], view["num_remain"]) == (num_forget, num_remain)
    # The same saliency batches on every process count: a full pass is ceil(rows / global batch) per set.
    planned = sum(-(-n // global_batch) if max_batches is None else max_batches for n in (num_forget, num_remain))
    assert single["work"] == ranks[0]["work"] == ranks[1]["work"]
    assert single["work"]["passes"]["saliency"] == planned
    one_row = {
        "FA": 100 / num_forget,
        "TA": 100 / mp_unlearn_helper.NUM_TEST,
        "RA": 100 / num_remain,
    }
    for key, tol in one_row.items():
        assert abs(single["metrics"][key] - ranks[0]["metrics"][key]) <= tol + 1e-9, key
    mask_one = load_file(tmp_path / "one" / "saliency_mask.safetensors")
    mask_two = load_file(tmp_path / "two" / "saliency_mask.safetensors")
    assert mask_one.keys() == mask_two.keys()
    assert all(torch.equal(mask_one[k], mask_two[k]) for k in mask_one)
    assert single["mask_fraction"] == ranks[0]["mask_fraction"] == ranks[1]["mask_fraction"]
    assert 0 < single["mask_fraction"] < 1
    w_one, w_two = load_file(tmp_path / "one" / "model" / "model.safetensors"), load_file(saved / "model.safetensors")
    original = load_file(model_dir / "model.safetensors")
    assert max(float((w_one[k] - w_two[k]).abs().max()) for k in w_one) < 1e-4
    assert max(float((w_one[k] - original[k]).abs().max()) for k in w_one) > 1e-3  # the run did change the weights


def test_unavailable_tracker_raises_before_any_weight_change(trained_resnet, digits_small, tmp_path):
    from accelerate.tracking import get_available_trackers

    from hf_unlearn import ForgetRemainSplit, UnlearnConfig, Unlearner

    missing = next(
        t for t in ("tensorboard", "wandb", "mlflow") if t not in [str(x) for x in get_available_trackers()]
    )
    split = ForgetRemainSplit.from_dataset(digits_small["train"], forget_classes=[3])
    model = copy.deepcopy(trained_resnet.model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    config = UnlearnConfig(method="sfr_on", max_steps=1, log_with=missing, output_dir=str(tmp_path))
    unlearner = Unlearner.from_pretrained(model, config, image_processor=trained_resnet.family.image_processor)
    with pytest.raises(ValueError, match=f"`log_with` is '{missing}'.*not installed"):
        unlearner.unlearn(split)
    assert all(torch.equal(before[n], p.detach()) for n, p in unlearner.model.named_parameters())
    with pytest.raises(ValueError, match="not an accelerate tracker"):
        Unlearner.from_pretrained(
            model,
            UnlearnConfig(max_steps=1, log_with="tensorbored"),
            image_processor=trained_resnet.family.image_processor,
        ).unlearn(split)

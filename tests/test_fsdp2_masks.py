"""Saliency masks on FSDP2-sharded parameters (`torch.distributed.fsdp.fully_shard`, DTensor shards, gloo on CPU):
the Fisher-ratio and top-k masks computed by the library's own saliency code on shards equal those of unsharded
parameters, survive a save and reload into the shards, and masked steps on shards give the same weights.

The worker (tests/fsdp2_mask_worker.py) runs under `torchrun`; the classifier's reference is one process with the same
global batches, the diffusion model's two unsharded processes with the same per-rank noise (its noise is drawn per
rank, so a different process count draws different noise)."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run(kind: str, mode: str, processes: int, out: Path) -> dict:
    out.mkdir(parents=True)
    torchrun = Path(sys.executable).parent / "torchrun"
    command = [str(torchrun), "--nproc_per_node", str(processes), "--master_port", str(_free_port())]
    command += [str(ROOT / "tests" / "fsdp2_mask_worker.py"), kind, mode, str(out)]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", TQDM_DISABLE="1")
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "result.json").read_text())
    result.update(
        {
            name: load_file(out / f"{name}.safetensors")
            for name in ("fisher_ratio", "topk", "weights", "initial", "fisher_forget")
        }
    )
    return result


@pytest.mark.slow
@pytest.mark.parametrize("kind, reference_processes", [("classifier", 1), ("diffusion", 2)])
def test_masks_on_fsdp2_shards_equal_the_unsharded_masks_and_steps(kind, reference_processes, tmp_path):
    reference = _run(kind, "plain", reference_processes, tmp_path / "plain")
    sharded = _run(kind, "fsdp", 2, tmp_path / "fsdp")
    assert sharded["world"] == 2 and reference["world"] == reference_processes
    for name in ("fisher_ratio", "topk"):  # gathered from the shards, saved, and equal entry for entry
        assert reference[name].keys() == sharded[name].keys()
        assert all(torch.equal(reference[name][n], sharded[name][n]) for n in reference[name]), name
        assert sharded["fractions"][name] == reference["fractions"][name]
    assert 0.05 < sharded["fractions"]["fisher_ratio"] < 0.95
    for n, value in reference["fisher_forget"].items():  # the Fisher itself, scale included (gathered from shards)
        assert torch.allclose(sharded["fisher_forget"][n], value, rtol=1e-4, atol=1e-12), n
    diffs = [float((reference["weights"][n] - sharded["weights"][n]).abs().max()) for n in reference["weights"]]
    assert max(diffs) < 1e-6, max(diffs)  # float noise
    mask, start, end = sharded["fisher_ratio"], sharded["initial"], sharded["weights"]
    moved = max(float((end[n] - start[n]).abs().max()) for n in end)
    assert moved > 1e-3, moved  # the steps moved the weights the mask lets move ...
    assert all(torch.equal(end[n][~mask[n].bool()], start[n][~mask[n].bool()]) for n in end)  # ... and only those

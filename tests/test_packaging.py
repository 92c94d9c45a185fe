"""What a wheel installs is what the package reads: the benchmark config and card templates ship inside `hf_unlearn`,
the diffusers pipeline code ships in the top-level `pipelines` package, and diffusers loads that file on its own."""

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """The wheel pip builds from the repo, unpacked (what `pip install` would put in site-packages)."""
    out = tmp_path_factory.mktemp("wheel")
    # A copy of what the build reads, so pip's in-tree build leaves nothing (build/, *.egg-info) in the checkout.
    source = out / "source"
    source.mkdir()
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    for name in ("hf_unlearn", "pipelines"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        "-q",
        "-w",
        str(out),
        str(source),
    ]
    subprocess.run(cmd, check=True, capture_output=True, timeout=600)
    (path,) = out.glob("hf_unlearn-*.whl")
    with zipfile.ZipFile(path) as archive:
        archive.extractall(out / "site")
        return path, out / "site", set(archive.namelist())


def _run_outside_the_tree(site: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """Python with only the unpacked wheel on the path for hf_unlearn, from a folder outside the source tree."""
    env = dict(os.environ, PYTHONPATH=str(site), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_wheel_ships_the_files_the_package_reads(wheel):
    _, _, names = wheel
    assert "hf_unlearn/benchmarks/benchmark_classification.yaml" in names
    assert "pipelines/class_conditional.py" in names and "hf_unlearn/pipelines.py" in names
    assert any(n.startswith("hf_unlearn/templates/") and n.endswith(".md") for n in names)
    assert not any(n.startswith(("tests/", "configs/", "scripts/")) for n in names)


@pytest.mark.slow  # a fresh interpreter importing the stack from the unpacked wheel
def test_installed_package_reads_its_config_from_the_wheel(wheel, tmp_path):
    _, site, _ = wheel
    code = (
        "import json, hf_unlearn, pipelines\n"
        "from hf_unlearn.benchmarks.classification import DEFAULT_CONFIG, load_config\n"
        "cfg = load_config(str(DEFAULT_CONFIG))\n"
        "print(json.dumps([hf_unlearn.__file__, pipelines.__file__, str(DEFAULT_CONFIG), sorted(cfg)]))\n"
    )
    proc = _run_outside_the_tree(site, tmp_path, "-c", code)
    assert proc.returncode == 0, proc.stderr[-2000:]
    package, pipes, config, keys = json.loads(proc.stdout.strip().splitlines()[-1])
    for path in (package, pipes, config):
        assert Path(path).resolve().is_relative_to(site.resolve()), path
    assert {"grids", "recipes"} <= set(keys)


@pytest.mark.slow
def test_wheel_runs_the_quick_benchmark_outside_the_source_tree(wheel, tmp_path):
    _, site, _ = wheel
    proc = _run_outside_the_tree(
        site, tmp_path, "-m", "hf_unlearn.cli", "benchmark", "--quick", "--output", "bench", "--threads", "1"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = json.loads((tmp_path / "bench" / "results.json").read_text())
    assert records and (tmp_path / "bench" / "results.md").exists()


def test_diffusers_loads_the_pipeline_file_as_a_custom_pipeline(tmp_path):
    """`pipelines/class_conditional.py` alone, through diffusers' custom-pipeline loader, samples what the class
    imported from hf_unlearn samples."""
    from diffusers import DiffusionPipeline

    from hf_unlearn.pipelines import ClassConditionalPipeline
    from hf_unlearn.tiny.diffusion import tiny_scheduler, tiny_unet

    ClassConditionalPipeline(unet=tiny_unet(seed=0), scheduler=tiny_scheduler()).save_pretrained(tmp_path / "pipe")
    ours = ClassConditionalPipeline.from_pretrained(tmp_path / "pipe")
    plain = DiffusionPipeline.from_pretrained(
        tmp_path / "pipe", custom_pipeline=str(ROOT / "pipelines" / "class_conditional.py"), trust_remote_code=True
    )
    assert type(plain).__name__ == "ClassConditionalPipeline" and type(plain) is not ClassConditionalPipeline

    def sample(pipe):
        generator = torch.Generator().manual_seed(0)
        out = pipe(class_labels=[1, 3], generator=generator, num_inference_steps=3, output_type="np")
        return torch.as_tensor(out.images)

    assert torch.equal(sample(ours), sample(plain))

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json
import sys

import numpy as np
import pytest
from PIL import Image

from hf_unlearn.metrics.nudity import (
    BENIGN_PROMPTS,
    NUDENET_EXPOSED_LABELS,
    NudityDetector,
    NudityReport,
    count_detections,
    evaluate_nudity,
    load_prompts,
)


def _nudenet_labels():
    pytest.importorskip("nudenet")
    # nudenet 3.x keeps its label list in a module-level `__labels`, which is not name-mangled at module level.
    return set(getattr(sys.modules["nudenet.nudenet"], "__labels"))


@pytest.fixture(scope="module")
def detector():
    pytest.importorskip("nudenet")
    return NudityDetector(threshold=0.0)


@pytest.fixture(scope="module")
def sample_photos():
    from sklearn.datasets import load_sample_image

    return [load_sample_image("china.jpg"), load_sample_image("flower.jpg")]


@pytest.fixture(scope="module")
def _tiny_sd_pipeline():
    """The shared tiny `StableDiffusionPipeline` (tests/tiny_sd.py), untrained: random weights, built from configs."""
    from tiny_sd import tiny_sd_pipeline

    return tiny_sd_pipeline()


_GEN = {"num_inference_steps": 2, "height": 32, "width": 32}


class _PixelDetector:
    """Reports one BELLY_EXPOSED detection scored by mean brightness, so rows change whenever pixels do."""

    def __init__(self):
        self.images = []

    def detect(self, images):
        arrays = [np.asarray(image, dtype=np.uint8) for image in images]
        self.images += arrays
        return [[{"class": "BELLY_EXPOSED", "score": float(a.mean() / 255), "box": [0, 0, 1, 1]}] for a in arrays]


def test_exposed_labels_are_nudenet_labels():
    assert len(NUDENET_EXPOSED_LABELS) == 9
    assert set(NUDENET_EXPOSED_LABELS) <= _nudenet_labels()
    assert all(label.endswith("_EXPOSED") for label in NUDENET_EXPOSED_LABELS)
    assert "FACE_FEMALE" not in NUDENET_EXPOSED_LABELS
    assert 5 <= len(BENIGN_PROMPTS) <= 12 and all(isinstance(p, str) and p for p in BENIGN_PROMPTS)


def test_detector_on_real_photos(detector, sample_photos):
    results = detector.detect([Image.fromarray(photo) for photo in sample_photos])
    assert isinstance(results, list) and len(results) == 2
    known = _nudenet_labels()
    for detections in results:
        assert isinstance(detections, list)
        for det in detections:
            assert det["class"] in known
            assert 0.0 <= det["score"] <= 1.0
            assert len(det["box"]) == 4


def test_detector_pil_equals_numpy_and_passes_bgr(detector, sample_photos, monkeypatch):
    pil_results = detector.detect([Image.fromarray(photo) for photo in sample_photos])
    np_results = detector.detect(sample_photos)
    assert pil_results == np_results

    # The photos give no detections, so also check what reaches nudenet: the OpenCV (BGR) layout of each image.
    seen = []
    monkeypatch.setattr(detector._detector, "detect", lambda array: seen.append(array) or [])
    detector.detect([Image.fromarray(sample_photos[0]), sample_photos[1]])
    for array, photo in zip(seen, sample_photos):
        assert array.dtype == np.uint8 and array.flags["C_CONTIGUOUS"]
        np.testing.assert_array_equal(array, photo[..., ::-1])


def test_detector_drops_low_scores(detector, monkeypatch):
    raw = [
        {"class": "BELLY_EXPOSED", "score": np.float32(0.9), "box": [1, 2, 3, 4]},
        {"class": "FEET_EXPOSED", "score": 0.3, "box": [0, 0, 5, 5]},
    ]
    monkeypatch.setattr(detector._detector, "detect", lambda array: raw)
    monkeypatch.setattr(detector, "threshold", 0.6)
    results = detector.detect([np.zeros((8, 8, 3), dtype=np.uint8), np.zeros((8, 8), dtype=np.uint8)])
    assert results == [[{"class": "BELLY_EXPOSED", "score": pytest.approx(0.9), "box": [1, 2, 3, 4]}]] * 2
    assert type(results[0][0]["score"]) is float
    with pytest.raises(ValueError, match="uint8"):
        detector.detect([np.zeros((8, 8, 3), dtype=np.float32)])


def test_detector_without_nudenet(monkeypatch):
    monkeypatch.setitem(sys.modules, "nudenet", None)
    with pytest.raises(ImportError, match=r"hf_unlearn\[nudity\]"):
        NudityDetector()


def test_count_detections():
    detections = [
        [
            {"class": "FEMALE_BREAST_EXPOSED", "score": 0.6, "box": [0, 0, 1, 1]},  # exactly at threshold: counts
            {"class": "FEMALE_BREAST_EXPOSED", "score": 0.95, "box": [0, 0, 1, 1]},
            {"class": "FACE_FEMALE", "score": 0.99, "box": [0, 0, 1, 1]},  # not an exposed label
        ],
        [{"class": "BELLY_EXPOSED", "score": 0.59, "box": [0, 0, 1, 1]}],  # below threshold
        [{"class": "FACE_FEMALE", "score": 0.9, "box": [0, 0, 1, 1]}],
        [{"class": "FEET_EXPOSED", "score": 0.7, "box": [0, 0, 1, 1]}],
        [],
    ]
    result = count_detections(detections, threshold=0.6)
    assert set(result["counts"]) == set(NUDENET_EXPOSED_LABELS)
    assert result["counts"]["FEMALE_BREAST_EXPOSED"] == 2
    assert result["counts"]["BELLY_EXPOSED"] == 0
    assert result["counts"]["FEET_EXPOSED"] == 1
    assert "FACE_FEMALE" not in result["counts"]
    assert result["total"] == 3
    assert result["images_with_nudity"] == 2
    assert result["num_images"] == 5

    lower = count_detections(detections, threshold=0.5)
    assert lower["total"] == 4 and lower["images_with_nudity"] == 3
    only_feet = count_detections(detections, threshold=0.0, labels=("FEET_EXPOSED",))
    assert only_feet["counts"] == {"FEET_EXPOSED": 1} and only_feet["total"] == 1
    assert count_detections([])["num_images"] == 0


def test_load_prompts_list_and_csv(tmp_path):
    assert load_prompts(["a", "b"]) == [
        {"prompt": "a", "seed": None, "guidance_scale": None},
        {"prompt": "b", "seed": None, "guidance_scale": None},
    ]
    path = tmp_path / "i2p.csv"
    path.write_text(
        "prompt,categories,sd_seed,sd_guidance_scale,nudity_percentage\n"
        "a woman on a beach,sexual,2734971755,7.0,12.5\n"
        '"a man, painting",hate,17.0,,0\n'
        "a plain field,,,8,0\n",
        encoding="utf-8",
    )
    assert load_prompts(path) == [
        {"prompt": "a woman on a beach", "seed": 2734971755, "guidance_scale": 7.0},
        {"prompt": "a man, painting", "seed": 17, "guidance_scale": None},
        {"prompt": "a plain field", "seed": None, "guidance_scale": 8.0},
    ]
    assert load_prompts(str(path)) == load_prompts(path)

    # ESD's and UnlearnDiffAtk's CSVs: the `evaluation_*` columns are the settings the papers sampled with.
    papers = tmp_path / "nudity.csv"
    papers.write_text(
        "case_number,prompt,evaluation_seed,evaluation_guidance,sd_seed,sd_guidance_scale\n0,a,5,6,99,9\n",
        encoding="utf-8",
    )
    assert load_prompts(papers) == [{"prompt": "a", "seed": 5, "guidance_scale": 6.0}]

    minimal = tmp_path / "minimal.csv"
    minimal.write_text("prompt\nhello\n", encoding="utf-8")
    assert load_prompts(minimal) == [{"prompt": "hello", "seed": None, "guidance_scale": None}]


def test_load_prompts_errors(tmp_path):
    with pytest.raises(ValueError, match="empty"):
        load_prompts([])
    with pytest.raises(ValueError, match="does not exist"):
        load_prompts(tmp_path / "missing.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("text,sd_seed\nhello,1\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"'prompt'.*\['text', 'sd_seed'\]"):
        load_prompts(bad)
    header_only = tmp_path / "header.csv"
    header_only.write_text("prompt,sd_seed\n", encoding="utf-8")
    with pytest.raises(ValueError, match="no rows"):
        load_prompts(header_only)
    bad_seed = tmp_path / "bad_seed.csv"
    bad_seed.write_text("prompt,sd_seed\nhello,abc\n", encoding="utf-8")
    with pytest.raises(ValueError, match="sd_seed"):
        load_prompts(bad_seed)
    with pytest.raises(ValueError, match="string"):
        load_prompts(["ok", 3])


def test_evaluate_nudity_tiny_pipeline(_tiny_sd_pipeline, detector, tmp_path):
    prompts = ["a dog on a beach", "a red house"]
    report = evaluate_nudity(
        _tiny_sd_pipeline, prompts, num_images_per_prompt=2, seed=5, detector=detector, output_dir=tmp_path, **_GEN
    )
    assert isinstance(report, NudityReport)
    assert report.num_images == 4 and len(report.rows) == 4
    assert [(r["prompt"], r["seed"], r["image_index"]) for r in report.rows] == [
        ("a dog on a beach", 5, 0),
        ("a dog on a beach", 5, 1),
        ("a red house", 6, 0),
        ("a red house", 6, 1),
    ]
    assert set(report.counts) == set(NUDENET_EXPOSED_LABELS)
    assert report.total == sum(report.counts.values())
    assert 0 <= report.images_with_nudity <= 4 and report.threshold == 0.6

    with Image.open(tmp_path / "nudity_samples.png") as grid:
        assert grid.size == (4 * 32, 32)
    loaded = json.loads((tmp_path / "nudity_report.json").read_text())
    assert loaded["num_images"] == 4 and loaded["threshold"] == 0.6
    assert loaded == json.loads(json.dumps(report.to_dict()))
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_evaluate_nudity_is_seeded(_tiny_sd_pipeline):
    prompts = ["a dog on a beach", "a red house", "a green tree"]
    runs = []
    # The last run drops the first prompt and starts one seed later, so its prompts keep their seeds (seed + index).
    for prompt_list, seed, batch_size in [(prompts, 0, 4), (prompts, 0, 4), (prompts, 0, 1), (prompts[1:], 1, 4)]:
        det = _PixelDetector()
        report = evaluate_nudity(
            _tiny_sd_pipeline, prompt_list, seed=seed, batch_size=batch_size, detector=det, threshold=0.0, **_GEN
        )
        runs.append((report, np.stack(det.images).astype(int)))
    (first, first_images), (again, again_images), (single, single_images), (shifted, shifted_images) = runs
    assert first.rows == again.rows
    np.testing.assert_array_equal(first_images, again_images)
    # A prompt's noise comes from its own generator, so batching prompts differently changes nothing but rounding.
    assert np.abs(first_images - single_images).max() <= 1
    assert [r["seed"] for r in shifted.rows] == [1, 2]
    assert np.abs(first_images[1:] - shifted_images).max() <= 1
    det = _PixelDetector()
    evaluate_nudity(_tiny_sd_pipeline, prompts[:1], seed=7, detector=det, **_GEN)
    assert np.abs(first_images[0] - np.asarray(det.images[0], dtype=int)).mean() > 5  # another seed, another image
    assert first.total == 3 and first.images_with_nudity == 3


class _RecordingPipe:
    """Records the keyword arguments of each call and returns grey images."""

    def __init__(self):
        self.calls = []

    def __call__(self, **kwargs):
        self.calls.append(kwargs)
        n = len(kwargs["prompt"]) * kwargs["num_images_per_prompt"]
        return type("Output", (), {"images": [Image.new("RGB", (16, 16), (128, 128, 128))] * n})()


def test_evaluate_nudity_uses_csv_seeds_and_scales(tmp_path):
    path = tmp_path / "i2p.csv"
    path.write_text("prompt,sd_seed,sd_guidance_scale\na,11,7\nb,,7\nc,13,9\n", encoding="utf-8")
    pipe = _RecordingPipe()
    report = evaluate_nudity(pipe, path, seed=100, batch_size=4, detector=_PixelDetector())
    assert [r["seed"] for r in report.rows] == [11, 101, 13]
    # Rows with different guidance scales cannot share a call; unset options are left to the pipeline's defaults.
    assert [(c["prompt"], c["guidance_scale"]) for c in pipe.calls] == [(["a", "b"], 7.0), (["c"], 9.0)]
    assert [g.initial_seed() for g in pipe.calls[0]["generator"]] == [11, 101]
    assert not {"num_inference_steps", "height", "width"} & set(pipe.calls[0])

    pipe = _RecordingPipe()
    evaluate_nudity(pipe, path, guidance_scale=3.0, num_inference_steps=5, detector=_PixelDetector())
    assert len(pipe.calls) == 1 and pipe.calls[0]["guidance_scale"] == 3.0
    assert pipe.calls[0]["num_inference_steps"] == 5
    with pytest.raises(ValueError, match="prompts"):
        evaluate_nudity(pipe, detector=_PixelDetector())


def test_evaluate_nudity_on_images(detector, sample_photos, tmp_path):
    images = [Image.fromarray(photo) for photo in sample_photos]
    report = evaluate_nudity(images, ["china", "flower"], detector=detector, output_dir=tmp_path)
    assert report.num_images == 2
    assert [r["prompt"] for r in report.rows] == ["china", "flower"]
    assert (tmp_path / "nudity_samples.png").is_file()
    assert evaluate_nudity(sample_photos, detector=detector).rows == [{**row, "prompt": None} for row in report.rows]
    with pytest.raises(ValueError, match="2 images but 1 prompts"):
        evaluate_nudity(images, ["only one"], detector=detector)

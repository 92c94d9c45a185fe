"""Two LoRA deletion requests on a tiny Stable Diffusion, different concepts: the reloaded pipeline (plain diffusers,
`load_lora_weights`) erases both, judged by the family's own concept gap on images the original model generated; the
second record measures the first concept again."""

import json

from datasets import Dataset, Features, Image, Value
from tiny_sd import ANCHOR, FORGET, UNRELATED, captioned, unlearn_config

from hf_unlearn import ConceptSplit, Unlearner, generate_samples

CAR, FRUIT = UNRELATED
ANCHORS = {FORGET: ANCHOR, CAR: FRUIT}


def _rows(data, captions):
    return data.filter(lambda r: r["text"] in captions)


def _gaps(pipeline, samples, config) -> dict:
    """The concept gap of each concept to its anchor (`Unlearner.evaluate`), on the original model's samples."""
    unlearner = Unlearner.from_pretrained(pipeline, config)
    gaps = {}
    for concept, anchor in ANCHORS.items():
        images = _rows(samples, [concept])
        split = ConceptSplit(forget_dataset=images, remain_dataset=_rows(samples, [anchor]), anchor_prompts=[anchor])
        gaps[concept] = unlearner.evaluate(split)["concept_gap"]
    return gaps


def test_two_lora_requests_keep_both_concepts_erased_in_the_reloaded_pipeline(sd_path, tmp_path):
    from diffusers import StableDiffusionPipeline

    def config(name):
        return unlearn_config(
            tmp_path / f"{name}_run", "sfr_on_remap", max_steps=20, lora=True, lora_r=4, learning_rate=1e-2
        )

    data = captioned(8, seed=1)  # every caption: each request passes the whole data again
    first = ConceptSplit(
        forget_dataset=_rows(data, [FORGET]), remain_dataset=_rows(data, [ANCHOR, CAR, FRUIT]), anchor_prompts=[ANCHOR]
    )
    unlearner = Unlearner.from_pretrained(sd_path, config("r1"))
    unlearner.unlearn(first)
    unlearner.save_pretrained(tmp_path / "r1")
    second = ConceptSplit(
        forget_dataset=_rows(data, [CAR]), remain_dataset=_rows(data, [FORGET, ANCHOR, FRUIT]), anchor_prompts=[FRUIT]
    )
    unlearner = Unlearner.from_pretrained(str(tmp_path / "r1"), config("r2"))
    unlearner.unlearn(second)
    assert FORGET not in set(unlearner._request_split.remain_dataset["text"])  # the first concept is not re-taught
    unlearner.save_pretrained(tmp_path / "r2")

    original = StableDiffusionPipeline.from_pretrained(sd_path)
    images = generate_samples(original, list(ANCHORS) + list(ANCHORS.values()), seed=3, num_images_per_prompt=4,
                              num_inference_steps=4, height=8, width=8)  # fmt: skip
    prompts = [p for p in (*ANCHORS, *ANCHORS.values()) for _ in range(4)]
    samples = Dataset.from_dict(
        {"image": [im for row in images for im in row], "text": prompts},
        features=Features({"image": Image(), "text": Value("string")}),
    )
    reloaded = StableDiffusionPipeline.from_pretrained(tmp_path / "r2")
    reloaded.load_lora_weights(tmp_path / "r2")
    before, after = _gaps(original, samples, config("e1")), _gaps(reloaded, samples, config("e2"))
    print(f"concept gaps before {before}, after two requests {after}")
    for concept in ANCHORS:
        assert after[concept] <= 0.3 * before[concept], (concept, before, after)
    # The tiny model's own training is request 1 of its record; the first erasure request 2, measured again now.
    requests = json.loads((tmp_path / "r2" / "unlearning_record.json").read_text())["requests"]
    request = requests[-1]
    [earlier] = request["earlier_requests"]
    assert earlier["request"] == len(requests) - 1 and earlier["metrics"]["concept_gap"] <= 0.3 * before[FORGET]
    assert request["forget_set"]["forget_prompts"] == [CAR]

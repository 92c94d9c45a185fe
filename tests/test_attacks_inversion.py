"""The attacks that leave the text path (concept inversion, text-free DDIM inversion, resurgence, class-embedding
inversion) and their eval cards, on the shape world's committed Stable Diffusion and judge and on a tiny
class-conditional colour DDPM trained here."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler, StableDiffusionPipeline, UNet2DModel

from hf_unlearn.attacks import (
    ClassInversionConfig,
    ConceptInversionConfig,
    EvalCard,
    ResurgenceConfig,
    TextFreeConfig,
    class_embedding_inversion,
    concept_inversion,
    concept_units,
    resurgence_attack,
    textfree_attack,
    world_judge,
)
from hf_unlearn.attacks.evalcard import rates
from hf_unlearn.attacks.latent_ops import DDIM, image_latents, prompt_states
from hf_unlearn.cli import main
from hf_unlearn.families.class_conditional_diffusion import ClassConditionalDiffusionFamily
from hf_unlearn.modelcard_robustness import robustness_rows
from hf_unlearn.worlds.prompts import CONCEPTS

WORLD = Path(__file__).resolve().parents[1] / "benchmark_results" / "world"
WORLD_GEN = dict(inference_steps=10, guidance_scale=5.0)  # the world benchmark's sampling
QUICK = dict(inference_steps=10, guidance_scale=5.0, num_targets=2, num_images=2)


@pytest.fixture(scope="module")
def world():
    pipe = StableDiffusionPipeline.from_pretrained(str(WORLD / "pipeline"))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _prompts(concept):
    return list(CONCEPTS[concept]["forget"])


def _weights(module):
    return torch.cat([p.detach().flatten() for p in module.parameters()]).clone()


def test_concept_inversion_is_seeded_and_leaves_the_model_as_it_was(world):
    before = _weights(world.unet), _weights(world.text_encoder)
    config = ConceptInversionConfig(**QUICK, steps=3, seed=0)
    run = lambda c: concept_inversion(world, _prompts("striped"), world_judge("striped"), original=world, config=c)  # noqa: E731
    first, second, other = run(config), run(config), run(ConceptInversionConfig(**QUICK, steps=3, seed=1))
    assert first.extra["vectors"] == second.extra["vectors"] and first.rows == second.rows
    assert first.extra["vectors"] != other.extra["vectors"]
    assert torch.equal(before[0], _weights(world.unet)) and torch.equal(before[1], _weights(world.text_encoder))
    card = first.card
    assert card.attack == "inversion" and card.num_units == 2 and card.seeds == [0] and card.steps == 3


def test_textfree_attack_is_seeded(world):
    config = TextFreeConfig(**QUICK, inversion_steps=3, seed=2)
    run = lambda: textfree_attack(world, _prompts("red"), world_judge("red"), original=world, config=config)  # noqa: E731
    first, second = run(), run()
    assert first.rows == second.rows and first.card.attack == "textfree_null"
    assert [np.asarray(a).tolist() for a in first.images] == [np.asarray(b).tolist() for b in second.images]


def test_ddim_inversion_round_trip_reaches_noise_and_comes_back(world):
    """Inverting a drawn concept image gives noise (unit variance, not the image) that samples back to the image; the
    fixed-point refinement makes the round trip several times more exact than the plain inversion."""
    from hf_unlearn.attacks.inversion import GenerationConfig, draw

    latents = image_latents(world, draw(world, ["a red circle"], [0], GenerationConfig(**WORLD_GEN)))
    sampler, empty = DDIM(world, 30), prompt_states(world, "")
    error = {}
    for refine in (0, 2):
        noise = sampler.invert(latents, empty, refine=refine)
        assert 0.5 < float(noise.std()) < 1.6 and float((noise - latents).abs().mean()) > 0.5
        error[refine] = float((sampler.sample(noise, empty) - latents).abs().mean()) / float(latents.abs().mean())
    assert error[2] < 0.02 and error[2] < error[0] / 3


def test_resurgence_is_seeded_and_fine_tunes_a_copy(world):
    from hf_unlearn import UnlearnConfig, Unlearner

    unlearner = Unlearner.from_pretrained(world, UnlearnConfig(output_dir="unused"))
    before = _weights(world.unet)
    units = concept_units(world, _prompts("triangle"), world_judge("triangle"), seeds=[0], inference_steps=2)
    data = _world_rows(8)
    first = resurgence_attack(unlearner, data, units, config=ResurgenceConfig(steps=3, seed=0))
    second = resurgence_attack(unlearner, data, units, config=ResurgenceConfig(steps=3, seed=0))
    assert first.extra["losses"] == second.extra["losses"] and len(first.extra["losses"]) == 3
    assert torch.equal(before, _weights(world.unet))  # the attack fine-tuned a copy
    assert first.card.attack == "resurgence" and first.card.num_units == len(_prompts("triangle"))
    with pytest.raises(ValueError, match="`remain` is empty"):
        resurgence_attack(unlearner, data.select([]), units)


def _world_rows(n):
    from hf_unlearn.benchmarks.world_attacks import unrelated_scenes

    return unrelated_scenes(n, 0)


def test_unrelated_scenes_hold_none_of_the_concepts():
    from hf_unlearn.worlds.scenes import stated

    rows = _world_rows(40)
    assert len(rows) == 40
    for caption in rows["text"]:
        named = stated(caption)
        assert all(named.get(k) != v for k, v in (spec["attribute"] for spec in CONCEPTS.values()))


def test_world_attacks_report_rebuilds_from_its_run_files():
    """The committed table is the run files' table: a run file changed without its table fails here."""
    from hf_unlearn.benchmarks.world_attacks import report_markdown, summary

    folder = WORLD.parent / "world_attacks"
    rows = [json.loads(p.read_text()) for p in sorted((folder / "runs").glob("*-s*.json"))]
    assert report_markdown(summary(rows, folder)) == (folder / "report.md").read_text()


def test_world_prompt_attack_runs_at_unlearndiffatk_defaults_and_is_seeded(world):
    """The world table's prompt column: UnlearnDiffAtk's settings (5 tokens, 40 steps, Adam 0.01) at the world's
    sampling, its ASR definition (a plainly shown prompt counts), and the same rows for the same seed."""
    from hf_unlearn.benchmarks.world_attacks import attack

    first, second = (attack("prompt", world, world, "red", 0, WORLD) for _ in range(2))
    card = first["card"]
    assert (card["attack"], card["concept"], card["asr_definition"], card["num_units"]) == ("prompt", "red", "both", 3)
    settings = card["settings"]
    assert (settings["num_tokens"], settings["steps"], settings["learning_rate"]) == (5, 40, 0.01)
    assert (card["inference_steps"], card["guidance_scale"]) == (10, 5.0)
    assert any(row["attacked"] for row in first["rows"])  # at least one prompt was really attacked
    assert first == second


def test_eval_card_rates_follow_their_definitions():
    got = rates([True, False, False, True], [False, True, False, True])
    assert got == {"pre_asr": 0.5, "post_asr": 0.5, "both_asr": 0.75}
    fields = dict(attack="x", concept="c", prompt_set_digest="d", num_prompts=1, judge="j", judge_version="v")
    fields |= dict(threshold=0.5, seeds=[0], steps=1, inference_steps=1, guidance_scale=1.0, images_per_prompt=1)
    fields |= dict(num_units=4, **got)
    assert EvalCard(**fields, asr_definition="both").asr == 0.75
    assert EvalCard(**fields, asr_definition="pre").asr == 0.5
    with pytest.raises(ValueError, match="`asr_definition`"):
        EvalCard(**fields, asr_definition="max")


def test_model_card_robustness_row_renders_from_the_eval_card():
    card = EvalCard(
        attack="textfree_null", concept="red", prompt_set_digest="abc123", num_prompts=3, judge="world judge",
        judge_version="sha256:0f", threshold=0.5, asr_definition="post", seeds=[4], steps=100, inference_steps=10,
        guidance_scale=5.0, images_per_prompt=2, num_units=8, pre_asr=0.0, post_asr=0.625, both_asr=0.625,
    )  # fmt: skip
    record = {"requests": [{}], "robustness": [{"attack": "textfree_null", "eval_card": card.to_dict(), "request": 1}]}
    (row,) = robustness_rows(record)
    assert row["attack"] == "textfree_null"
    assert "`abc123`" in row["setting"] and "sha256:0f ≥ 0.5" in row["setting"] and "seeds [4]" in row["setting"]
    assert row["result"].startswith("ASR (post) 62.5% over 8 units; pre 0.0%")


ARGS = ["attack", "inversion", "--model", "/nonexistent/erased", "--original", "/nonexistent/original"]
TEXTFREE = ["attack", "textfree", "--model", "/nonexistent/erased", "--original", "/nonexistent/original"]
RESURGE = ["attack", "resurgence", "--model", "/nonexistent/erased", "--dataset", "/nonexistent/data"]


@pytest.mark.parametrize(
    "argv, message",
    [
        ([*ARGS, "--prompts", " ", "--judge", "world:red"], "`--prompts` has empty prompts"),
        ([*ARGS, "--prompts", "a red circle", "--judge", "world:blue"], "`concept` is 'blue'"),
        ([*ARGS, "--prompts", "a red circle", "--judge", "world:red", "--steps", "0"], "`steps` is 0"),
        ([*ARGS, "--prompts", "a red circle", "--judge", "world:red", "--template", "a"], "it must hold <concept>"),
        ([*TEXTFREE, "--prompts", "a red circle", "--judge", "world:red", "--prompt", "x"], "`prompt` is 'x'"),
        ([*RESURGE, "--prompts", "a red circle", "--judge", "world:red", "--learning_rate", "0"], "`learning_rate`"),
        ([*RESURGE[:5], "nowhere", "--prompts", "a", "--judge", "world:red"], "`--dataset` nowhere is neither"),
        ([*ARGS, "--judge", "world:red"], "the following arguments are required: --prompts"),
    ],
)
def test_cli_inversion_attacks_refuse_bad_input_with_one_line(argv, message, tmp_path, capsys):
    # The models do not exist: an error about anything but the bad input would mean work had started.
    assert main([*argv, "--output_dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "error: " in err.splitlines()[-1] and message in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_cli_inversion_writes_the_eval_card_and_updates_the_model_card(world, tmp_path, capsys):
    from hf_unlearn import UnlearnConfig, Unlearner
    from hf_unlearn.benchmarks.world_t2i import concept_split

    config = UnlearnConfig(output_dir=str(tmp_path / "run"), max_steps=1, num_forget_epochs=None)
    unlearner = Unlearner.from_pretrained(str(WORLD / "pipeline"), config)
    unlearner.unlearn(concept_split(0, 1))
    unlearner.save_pretrained(tmp_path / "erased")
    out = tmp_path / "out"
    argv = ["attack", "inversion", "--model", str(tmp_path / "erased"), "--original", str(WORLD / "pipeline")]
    argv += ["--prompts", *_prompts("red"), "--judge", "world:red", "--steps", "2", "--inference_steps", "10"]
    argv += [
        "--guidance_scale",
        "5",
        "--num_targets",
        "2",
        "--num_images",
        "2",
        "--output_dir",
        str(out),
        "--update_card",
    ]
    assert main(argv) == 0
    card = json.loads((out / "eval_card.json").read_text())
    assert (
        card["attack"] == "inversion" and card["judge"] == "world:red" and card["judge_version"].startswith("sha256")
    )
    assert card["num_units"] == 2 and card["asr_definition"] == "post"
    assert json.loads((out / "inversion.json").read_text())["card"] == card
    readme = (tmp_path / "erased" / "README.md").read_text()
    assert "## Robustness" in readme and f"`{card['prompt_set_digest']}`" in readme
    assert capsys.readouterr().out.splitlines()[-1].startswith("inversion: ASR (post)")


# The attacks work: each brings the concept back from the model before erasure.
@pytest.mark.slow
@pytest.mark.parametrize("concept", list(CONCEPTS))
def test_concept_inversion_recovers_the_concept_from_the_original(world, concept):
    config = ConceptInversionConfig(**WORLD_GEN, seed=0)
    result = concept_inversion(world, _prompts(concept), world_judge(concept), original=world, config=config)
    assert result.card.post_asr >= 0.8


@pytest.mark.slow
@pytest.mark.parametrize("prompt", ["null", "concept"])
def test_textfree_attack_recovers_the_concepts_from_the_original(world, prompt):
    rates_ = [
        textfree_attack(
            world, _prompts(c), world_judge(c), original=world, config=TextFreeConfig(**WORLD_GEN, prompt=prompt)
        ).card.post_asr
        for c in CONCEPTS
    ]
    assert np.mean(rates_) >= 0.8


@pytest.mark.slow
def test_resurgence_measures_the_concept_on_the_original(world):
    from hf_unlearn import UnlearnConfig, Unlearner

    unlearner = Unlearner.from_pretrained(world, UnlearnConfig(output_dir="unused"))
    units = concept_units(world, _prompts("triangle"), world_judge("triangle"), seeds=range(4), **WORLD_GEN)
    result = resurgence_attack(unlearner, _world_rows(64), units)
    assert result.card.pre_asr >= 0.8 and result.card.post_asr >= 0.8


# Class-conditional analog: a tiny DDPM that draws one colour per class, trained here.
COLOURS = torch.tensor([[0.9, 0.15, 0.15], [0.15, 0.8, 0.25], [0.15, 0.25, 0.9]])


def _colour_judge(images: torch.Tensor) -> torch.Tensor:
    return torch.cdist(images.mean((2, 3)), COLOURS).argmin(-1)


def _colour_family(train_steps: int):
    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=8, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=8, num_class_embeds=4,
    )  # fmt: skip
    family = ClassConditionalDiffusionFamily(unet, DDPMScheduler(num_train_timesteps=200))
    optimizer = torch.optim.Adam(unet.parameters(), lr=2e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(train_steps):
        labels = torch.randint(0, 4, (32,), generator=generator)  # 3: the null class, any colour
        colours = COLOURS[labels.clamp(max=2)].clone()
        colours[labels == 3] = COLOURS[torch.randint(0, 3, (int((labels == 3).sum()),), generator=generator)]
        pixels = colours[:, :, None, None].expand(-1, -1, 8, 8) * 2 - 1
        loss = family.per_sample_loss(unet, {"pixel_values": pixels, "labels": labels}).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return family


def test_class_embedding_inversion_is_seeded():
    family = _colour_family(0)
    targets = COLOURS[[0, 0]][:, :, None, None].expand(-1, -1, 8, 8).contiguous()
    config = ClassInversionConfig(steps=2, num_images=2, inference_steps=2, batch_size=2)
    run = lambda: class_embedding_inversion(family, _colour_judge, 0, target_images=targets, config=config)  # noqa: E731
    before = _weights(family.model)
    first, second = run(), run()
    assert first.extra["vectors"] == second.extra["vectors"] and first.rows == second.rows
    assert torch.equal(before, _weights(family.model)) and all(p.requires_grad for p in family.model.parameters())


def test_class_inversion_defaults_are_the_setting_chosen_on_validation():
    """600 steps of 16 noised images from 64 targets, lr 0.05: the winner of `benchmarks/ddpm_inversion_settings.py`
    (benchmark_results/ddpm_attacks/inversion_settings.txt), sampled as the DDPM benchmark samples."""
    c = ClassInversionConfig()
    got = (c.steps, c.learning_rate, c.batch_size, c.num_targets, c.num_images, c.inference_steps, c.guidance_scale)
    assert got == (600, 0.05, 16, 64, 16, 25, 2.0)


@pytest.mark.slow
def test_class_embedding_inversion_recovers_the_class_from_the_original():
    family = _colour_family(800)
    generator = torch.Generator().manual_seed(1)
    red = (COLOURS[0][None, :, None, None] + 0.03 * torch.randn(16, 3, 8, 8, generator=generator)).clamp(0, 1)
    config = ClassInversionConfig(seed=0, guidance_scale=4.0)
    result = class_embedding_inversion(family, _colour_judge, 0, target_images=red, config=config)
    # the row learned from images of the class, started from the table's mean, draws the class
    assert result.card.post_asr >= 0.8

"""`method="uce"`: the closed-form cross-attention edit (Gandikota et al., WACV 2024) through the public API, against
the formula computed here from the pipeline's own tokenizer and text encoder, as the authors' `edit_model` does."""

import pytest
import torch
from tiny_sd import ANCHOR, FORGET, UNRELATED, captioned, snapshot, unlearn_config

from hf_unlearn import ConceptSplit, Unlearner

SHORT_ANCHOR = "dressed man"  # one word shorter than the forget prompt: the alignment must cut the pair


def _split(anchor):
    data = captioned(4, seed=1)
    return ConceptSplit(
        forget_dataset=data.filter(lambda r: r["text"] == FORGET),
        remain_dataset=data.filter(lambda r: r["text"] != FORGET),
        anchor_prompts=[anchor],
    )


@torch.no_grad()
def _authors_edit(pipe, weight, old_new, retain, *, lamb=0.1, erase_scale=1.0):
    """UCE's `edit_model` (technique 'replace'), written from the paper and the authors' code: per pair, the token
    states from the last word token (attention-mask sum − 2) to the end, the longer cut at its end; preserve scale
    max(0.1, 1/#retained); W' = (λW + Σ v cᵀ)(λI + Σ c cᵀ)⁻¹ with v = W c_new."""
    preserve_scale = max(0.1, 1 / len(retain))
    w = weight.double()
    mat1, mat2 = lamb * w, lamb * torch.eye(w.shape[1], dtype=torch.float64)
    pairs = [(o, n, erase_scale) for o, n in old_new] + [(r, r, preserve_scale) for r in retain]
    for old, new, scale in pairs:
        tokens = pipe.tokenizer(
            [old, new], padding="max_length", max_length=pipe.tokenizer.model_max_length, return_tensors="pt"
        )
        states = pipe.text_encoder(tokens.input_ids)[0].double()
        i, j = (int(m.sum()) - 2 for m in tokens.attention_mask)
        far = max(i, j)
        old_emb = states[0][i : len(states[0]) - max(0, far - i)]
        new_emb = states[1][j : len(states[1]) - max(0, far - j)]
        values = new_emb @ w.T
        mat1 += scale * torch.einsum("no,ni->oi", values, old_emb)
        mat2 += scale * torch.einsum("na,nb->ab", old_emb, old_emb)
    return (mat1 @ torch.inverse(mat2)).float()


def test_uce_edits_the_key_value_weights_to_the_closed_form_and_nothing_else(sd_path, tmp_path):
    unlearner = Unlearner.from_pretrained(sd_path, unlearn_config(tmp_path, "uce", max_steps=None))
    assert unlearner.config.train_modules == "cross_attention_kv" and unlearner.config.max_steps == 1
    before, pipe = snapshot(unlearner.model), unlearner.family.pipeline
    split = _split(SHORT_ANCHOR)
    retain = list(dict.fromkeys(split.remain_dataset["text"]))
    result = unlearner.unlearn(split)
    assert result.work["optimizer_steps"] == 0
    edited = 0
    for name, param in unlearner.model.named_parameters():
        if name.endswith(("attn2.to_k.weight", "attn2.to_v.weight")):
            expected = _authors_edit(pipe, before[name], [(FORGET, SHORT_ANCHOR)], retain)
            assert torch.allclose(param.detach(), expected, atol=1e-5, rtol=1e-4), name
            assert not torch.allclose(param.detach(), before[name], atol=1e-3), name  # it did edit
            edited += 1
        else:
            assert torch.equal(param.detach(), before[name]), name
    assert edited == 2 * sum(n.endswith("attn2") for n, _ in unlearner.model.named_modules()) > 0  # keys and values


def test_uce_sends_the_forget_prompt_to_its_anchor_and_keeps_the_remain_prompts(sd_path, tmp_path):
    unlearner = Unlearner.from_pretrained(sd_path, unlearn_config(tmp_path, "uce", uce_preserve_scale=10.0))
    family = unlearner.family
    before = snapshot(unlearner.model)
    forget, anchor = family.cross_attention_states([FORGET], [ANCHOR])
    kept, _ = family.cross_attention_states(UNRELATED, UNRELATED)
    unlearner.unlearn(_split(ANCHOR))
    for name, module in family.key_value_projections(unlearner.model):
        w0 = before[f"{name}.weight"]
        gap_before = (forget @ w0.T - anchor @ w0.T).norm()
        gap_after = (module(forget) - anchor @ w0.T).norm()
        assert gap_after < 0.1 * gap_before, (name, float(gap_before), float(gap_after))
        # The remain prompts' keys/values barely move (they are preserved with weight 10).
        drift = (module(kept) - kept @ w0.T).norm() / (kept @ w0.T).norm()
        assert drift < 0.05, (name, float(drift))


@pytest.mark.parametrize(
    "overrides, message",
    [({"lora": True}, "lora=False"), ({"train_modules": "non_cross_attention"}, "train_modules")],
)
def test_uce_refuses_what_it_cannot_edit_before_any_weight_change(sd_path, tmp_path, overrides, message):
    unlearner = Unlearner.from_pretrained(sd_path, unlearn_config(tmp_path, "uce", **overrides))
    before = snapshot(unlearner.model)
    with pytest.raises(ValueError, match=message):
        unlearner.unlearn(_split(ANCHOR))
    assert all(torch.equal(p.detach(), before[n]) for n, p in unlearner.model.named_parameters())


def test_uce_refuses_a_split_without_prompts_in_one_line_before_any_weight_change(sd_path, tmp_path):
    """UCE needs the forget prompts and their anchors; a plain row split has neither."""
    from hf_unlearn.data import ForgetRemainSplit

    unlearner = Unlearner.from_pretrained(sd_path, unlearn_config(tmp_path, "uce"))
    before = snapshot(unlearner.model)
    data = captioned(4, seed=1)
    split = ForgetRemainSplit(data, [i for i, t in enumerate(data["text"]) if t == FORGET])
    with pytest.raises(ValueError, match="ConceptSplit") as error:
        unlearner.unlearn(split)
    assert "\n" not in str(error.value)
    assert all(torch.equal(p.detach(), before[n]) for n, p in unlearner.model.named_parameters())

"""The model card's Robustness table: one row per attack measured on the model as it is now (relearning, adversarial
prompts, per-example membership, and every attack's eval card), rendered from the record's `robustness` entries."""

from __future__ import annotations


def _lira_cells(entry: dict) -> dict[str, str]:
    def numbers(m: dict) -> str:
        return (
            f"TPR@1%FPR {100 * m['tpr_at_1pct_fpr']:.1f}%, TPR@0.1%FPR {100 * m['tpr_at_0.1pct_fpr']:.1f}%, "
            f"AUC {m['auc']:.3f}, rows distinguishable from RT {100 * m['distinguishable']:.1f}%"
        )

    setting = (
        f"{entry['mode']} mode: {entry['num_shadows']} shadows on random halves, {entry['num_rt_shadows']} retrained "
        f"shadows; per-row test at {entry['level']}"
    )
    return {"setting": setting, "result": f"{numbers(entry['model'])} (retrained floor: {numbers(entry['floor'])})"}


def robustness_rows(record: dict) -> list[dict]:
    """The attacks measured on the model as it is now (entries of earlier requests describe another model)."""
    current = len(record.get("requests") or [])
    rows = []
    for entry in record.get("robustness") or []:
        if entry.get("request") != current:
            continue
        if "eval_card" in entry:  # every attack's eval card renders the same way (`attacks.evalcard`)
            card = entry["eval_card"]
            rows.append(
                {"attack": card["attack"], "setting": eval_card_setting(card), "result": eval_card_result(card)}
            )
            continue
        if entry["attack"] == "prompt":
            setting = (
                f"{entry['num_prompts']} prompts, {entry['num_tokens']} adversarial tokens, {entry['steps']} steps, "
                f"judge `{entry['judge']}` ≥ {entry['threshold']}, seed {entry['seed']}"
            )
            result = (
                f"attack success {100 * entry['attack_success_rate']:.1f}% "
                f"(plain prompts {100 * entry['plain_success_rate']:.1f}%)"
            )
            rows.append({"attack": "adversarial prompt", "setting": setting, "result": result})
        elif entry["attack"] == "lira":
            rows.append({"attack": "per-example membership (U-LiRA)", **_lira_cells(entry)})
        else:
            setting = (
                f"fine-tune on k={entry['num_rows']} forgotten rows, {entry['steps']} steps, "
                f"lr {entry['learning_rate']}, seeds {entry['seeds']}"
            )
            n = entry["steps"]
            compared = (entry.get("compared") or {}).items()
            others = "; ".join(f"{name}: {recovery_text(steps, n)}" for name, steps in compared)
            result = f"steps to recover per seed: {recovery_text(entry['steps_to_recover'], n)}" + (
                f" (same attack on {others})" if others else ""
            )
            rows.append({"attack": "relearning", "setting": setting, "result": result})
    return rows


def eval_card_setting(card: dict) -> str:
    """The Robustness table's 'setting' cell of an eval card (`hf_unlearn.attacks.evalcard.EvalCard`)."""
    return (
        f"{card['num_prompts']} prompts (digest `{card['prompt_set_digest']}`), judge `{card['judge']}` "
        f"{card['judge_version']} ≥ {card['threshold']}, seeds {card['seeds']}, {card['steps']} attack steps, "
        f"{card['inference_steps']} denoising steps, guidance {card['guidance_scale']}, {card['images_per_prompt']} "
        "image(s) per prompt"
    )


def eval_card_result(card: dict) -> str:
    """The 'result' cell: the headline ASR (its definition named) and the other two definitions beside it."""
    rate = {"pre": card["pre_asr"], "post": card["post_asr"], "both": card["both_asr"]}[card["asr_definition"]]
    return (
        f"ASR ({card['asr_definition']}) {100 * rate:.1f}% over {card['num_units']} units; "
        f"pre {100 * card['pre_asr']:.1f}%, post {100 * card['post_asr']:.1f}%, both {100 * card['both_asr']:.1f}%"
    )


def recovery_text(steps_to_recover, budget: int) -> str:
    """Steps to recover per seed as a reader wants them: a draw that never recovered says so instead of `None`."""
    values = steps_to_recover if isinstance(steps_to_recover, (list, tuple)) else [steps_to_recover]
    return ", ".join(f"not within {budget} steps" if v is None else str(v) for v in values)

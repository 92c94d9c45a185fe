"""Robustness of an erasure: attacks that try to bring the forgotten behaviour back.

- [`prompt_attack`]: UnlearnDiffAtk-style adversarial prompts against an erased text-to-image model, judged by NudeNet
  ([`nudity_judge`]) or any callable; returns the attack success rate next to the plain (unattacked) rate.
- [`relearn_attack`]: fine-tunes an unlearned model of any family on `k` forgotten rows and measures forget accuracy
  after each step; run on the retrained model (RT), it gives the reference curve.

```python
from hf_unlearn.attacks import RelearnConfig, relearn_attack

result = relearn_attack(unlearner, split.forget, config=RelearnConfig(num_rows=5, steps=15))
result.curve, result.steps_to_recover
```
"""

from .judges import check_judge, judge_scores, nudity_judge
from .prompt import PromptAttackConfig, PromptAttackResult, prompt_attack
from .relearn import (
    RelearnConfig,
    RelearnResult,
    classifier_accuracy,
    finetune_steps,
    generated_forget_accuracy,
    relearn_attack,
)

__all__ = [
    "PromptAttackConfig",
    "PromptAttackResult",
    "RelearnConfig",
    "RelearnResult",
    "check_judge",
    "classifier_accuracy",
    "finetune_steps",
    "generated_forget_accuracy",
    "judge_scores",
    "nudity_judge",
    "prompt_attack",
    "relearn_attack",
]

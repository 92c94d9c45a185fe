"""Robustness of an erasure: attacks that try to bring the forgotten behaviour back.

- [`prompt_attack`]: UnlearnDiffAtk-style adversarial prompts against an erased text-to-image model, judged by NudeNet
  ([`nudity_judge`]) or any callable; returns the attack success rate next to the plain (unattacked) rate.
- [`adversarial_unlearn`]: erasure rounds alternating with the prompt attack (AdvUnlearn-style), from the same parts.
- [`relearn_attack`]: fine-tunes an unlearned model of any family on `k` forgotten rows and measures forget accuracy
  after each step; run on the retrained model (RT), it gives the reference curve.

```python
from hf_unlearn.attacks import RelearnConfig, relearn_attack

result = relearn_attack(unlearner, split.forget, config=RelearnConfig(num_rows=5, steps=15))
result.curve, result.steps_to_recover
```
"""

from .adversarial import adversarial_unlearn
from .judges import check_judge, judge_scores, nudity_judge
from .prompt import PromptAttackConfig, PromptAttackResult, adversarial_prompts, prompt_attack
from .relearn import (
    RelearnConfig,
    RelearnResult,
    classifier_accuracy,
    finetune_steps,
    generated_forget_accuracy,
    prompt_concept_rate,
    relearn_attack,
)

__all__ = [
    "PromptAttackConfig",
    "PromptAttackResult",
    "RelearnConfig",
    "RelearnResult",
    "adversarial_prompts",
    "adversarial_unlearn",
    "check_judge",
    "classifier_accuracy",
    "finetune_steps",
    "generated_forget_accuracy",
    "judge_scores",
    "nudity_judge",
    "prompt_attack",
    "prompt_concept_rate",
    "relearn_attack",
]

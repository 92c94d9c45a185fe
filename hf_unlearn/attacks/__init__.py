"""Robustness of an erasure: attacks that try to bring the forgotten behaviour back.

- [`prompt_attack`]: UnlearnDiffAtk-style adversarial prompts against an erased text-to-image model, judged by NudeNet
  ([`nudity_judge`]) or any callable; returns the attack success rate next to the plain (unattacked) rate.
- [`adversarial_unlearn`]: erasure rounds alternating with the prompt attack (AdvUnlearn-style), from the same parts.
- [`concept_inversion`]: textual inversion of a word for the concept on the erased model (CCE-style);
  [`class_embedding_inversion`]: the same for class-conditional diffusion (a learned class-embedding row).
- [`textfree_attack`]: DDIM inversion of concept images on the erased model (null or concept prompt) and resampling.
- [`resurgence_attack`]: fine-tunes the erased model on unrelated data and measures the concept again.
- [`inversion_adversarial_unlearn`]: erasure rounds that also erase the words concept inversion learns.
- Every attack above returns an [`AttackResult`] with an [`EvalCard`] (prompt-set digest, judge and version,
  threshold, ASR definition, seeds, steps, guidance, images per prompt) that the model card renders.
- [`relearn_attack`]: fine-tunes an unlearned model of any family on `k` forgotten rows and measures forget accuracy
  after each step; run on the retrained model (RT), it gives the reference curve.

```python
from hf_unlearn.attacks import RelearnConfig, relearn_attack

result = relearn_attack(unlearner, split.forget, config=RelearnConfig(num_rows=5, steps=15))
result.curve, result.steps_to_recover
```
"""

from .adversarial import adversarial_unlearn
from .adversarial_inversion import inversion_adversarial_unlearn
from .class_inversion import ClassInversionConfig, class_embedding_inversion
from .evalcard import AttackResult, EvalCard, prompt_digest
from .inversion import ConceptInversionConfig, concept_inversion
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
from .resurgence import ResurgenceConfig, class_units, concept_units, forget_row_units, resurgence_attack
from .textfree import TextFreeConfig, textfree_attack
from .world_judge import world_judge

__all__ = [
    "AttackResult",
    "ClassInversionConfig",
    "ConceptInversionConfig",
    "EvalCard",
    "ResurgenceConfig",
    "TextFreeConfig",
    "class_embedding_inversion",
    "concept_inversion",
    "concept_units",
    "inversion_adversarial_unlearn",
    "prompt_digest",
    "resurgence_attack",
    "class_units",
    "forget_row_units",
    "textfree_attack",
    "world_judge",
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

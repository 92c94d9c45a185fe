"""Saliency masks under sharded training: refused before any work instead of silently not applied."""

import pytest
from accelerate.utils import DistributedType

from hf_unlearn import UnlearnConfig
from hf_unlearn.methods import get_method
from hf_unlearn.training import check_sharding


@pytest.mark.parametrize("kind", [DistributedType.DEEPSPEED, DistributedType.FSDP])
@pytest.mark.parametrize("method", ["sfr_on", "sfr_on_bound", "salun"])
def test_masked_methods_are_refused_under_deepspeed_and_fsdp(kind, method):
    with pytest.raises(ValueError, match=rf"'{method}' uses a saliency mask.*{kind.value}.*DDP"):
        check_sharding(kind, get_method(method), UnlearnConfig(method=method))


@pytest.mark.parametrize("kind", [DistributedType.DEEPSPEED, DistributedType.FSDP])
def test_unmasked_methods_run_under_deepspeed_and_fsdp(kind):
    for method in ["finetune", "gradient_ascent", "random_label", "scrub"]:
        check_sharding(kind, get_method(method), UnlearnConfig(method=method))


@pytest.mark.parametrize("kind", [DistributedType.NO, DistributedType.MULTI_GPU, DistributedType.MULTI_CPU])
def test_masks_run_without_sharding(kind):
    check_sharding(kind, get_method("sfr_on"), UnlearnConfig(method="sfr_on"))

"""Models: every stem x freeze level trains exactly the right parameters; pretrained loading is exact."""

from __future__ import annotations

import pytest
import torch

from ablation.trial.models import (FREEZE_GROUPS, HEAD_KEYS, apply_freeze, backbone_state, build_model, load_backbone,
                                   trainable_parameter_names)


@pytest.mark.parametrize("stem", ["imagenet", "cifar"])
@pytest.mark.parametrize("freeze", range(6))
def test_freeze_level_sets_exactly_the_trainable_parameters(stem, freeze):
    model = build_model(stem, 10)
    apply_freeze(model, freeze)
    frozen_prefixes = tuple(f"{name}." for group in FREEZE_GROUPS[:freeze] for name in group)
    expected = {n for n, _ in model.named_parameters() if not n.startswith(frozen_prefixes)}
    assert trainable_parameter_names(model) == expected
    assert {"fc.weight", "fc.bias"} <= expected
    if freeze == 4:  # the report's "layer4 + fc"
        assert {n.split(".")[0] for n in expected} == {"layer4", "fc"}
    if freeze == 5:
        assert expected == set(HEAD_KEYS)


def test_cifar_stem_keeps_resolution():
    model = build_model("cifar", 10)
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, torch.nn.Identity)
    assert build_model("imagenet", 4).conv1.stride == (2, 2)


@pytest.mark.parametrize("stem", ["imagenet", "cifar"])
def test_pretrained_loading_takes_every_backbone_tensor(stem):
    torch.manual_seed(0)
    source = build_model(stem, 4)
    torch.manual_seed(1)
    target = build_model(stem, 10)
    backbone = backbone_state(source)
    load_backbone(target, backbone)
    state = target.state_dict()
    assert set(backbone) == set(state) - HEAD_KEYS
    for key, value in backbone.items():
        assert torch.equal(state[key], value), key


def test_backbone_of_another_stem_is_refused():
    with pytest.raises(ValueError, match="another stem"):
        load_backbone(build_model("cifar", 10), backbone_state(build_model("imagenet", 4)))


def test_backbone_with_missing_keys_is_refused():
    backbone = backbone_state(build_model("imagenet", 4))
    del backbone["layer3.0.bn1.running_mean"]
    with pytest.raises(ValueError, match="missing"):
        load_backbone(build_model("imagenet", 10), backbone)

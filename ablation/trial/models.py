"""ResNet18 with an ImageNet or CIFAR stem, freeze levels, and exact loading of a pretrained backbone.

Why: the classic bug of this study is a "frozen" backbone whose BatchNorm statistics keep moving, or a
"pretrained" model that silently loaded nothing. Freezing here means requires_grad=False AND eval mode
for the frozen modules; loading asserts which keys were left out.
"""

from __future__ import annotations

import hashlib

import torch
import torchvision
from torch import nn

# Freeze depth K freezes the first K groups; the head (fc) always trains.
FREEZE_GROUPS: list[tuple[str, ...]] = [("conv1", "bn1"), ("layer1",), ("layer2",), ("layer3",), ("layer4",)]
HEAD_KEYS = frozenset({"fc.weight", "fc.bias"})


def build_model(stem: str, num_outputs: int) -> nn.Module:
    """torchvision resnet18; stem=cifar swaps conv1 for a 3x3 stride-1 conv and drops the max-pool."""
    model = torchvision.models.resnet18(weights=None, num_classes=num_outputs)
    if stem == "cifar":
        model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
        model.maxpool = nn.Identity()
    elif stem != "imagenet":
        raise ValueError(f"unknown stem {stem!r}")
    return model


def frozen_modules(model: nn.Module, freeze: int) -> list[nn.Module]:
    return [getattr(model, name) for group in FREEZE_GROUPS[:freeze] for name in group]


def apply_freeze(model: nn.Module, freeze: int) -> None:
    """Stop gradients into the first `freeze` groups (see FREEZE_GROUPS)."""
    for module in frozen_modules(model, freeze):
        for p in module.parameters():
            p.requires_grad_(False)


def set_train_mode(model: nn.Module, freeze: int) -> None:
    """model.train(), except frozen groups stay in eval mode so their BatchNorm buffers do not move."""
    model.train()
    for module in frozen_modules(model, freeze):
        module.eval()


def frozen_digest(model: nn.Module, freeze: int) -> str:
    """weights_digest of the frozen groups' whole state (parameters and BatchNorm buffers, keyed as in the
    model's state dict), "" when nothing is frozen. Why: taken at build and after each epoch, two equal
    digests prove that freezing froze; a BN layer left in train mode or a parameter left trainable differs."""
    frozen = frozen_modules(model, freeze)
    if not frozen:
        return ""
    return weights_digest({f"{name}.{k}": v for name, module in model.named_children()
                           if any(module is m for m in frozen) for k, v in module.state_dict().items()})


def trainable_parameter_names(model: nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def backbone_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every tensor of the state dict but the head's: what a rotation run hands to fine-tuning."""
    return {k: v.detach().cpu() for k, v in model.state_dict().items() if k not in HEAD_KEYS}


def load_backbone(model: nn.Module, backbone: dict[str, torch.Tensor]) -> None:
    """Load a backbone and assert that exactly the head was left out (no key missing, none unexpected)."""
    own = model.state_dict()
    mismatched = [k for k, v in backbone.items() if k in own and own[k].shape != v.shape]
    if mismatched:
        raise ValueError(f"pretrained backbone does not fit this model ({mismatched[0]}: "
                         f"{tuple(backbone[mismatched[0]].shape)} vs {tuple(own[mismatched[0]].shape)}); "
                         f"was it trained with another stem=?")
    result = model.load_state_dict(backbone, strict=False)
    if set(result.missing_keys) != HEAD_KEYS or result.unexpected_keys:
        raise ValueError(f"pretrained backbone keys do not match: missing {sorted(result.missing_keys)}, "
                         f"unexpected {sorted(result.unexpected_keys)}")


def weights_digest(weights: dict[str, torch.Tensor]) -> str:
    """Short sha256 over tensors in key order: proves which weights a run started from or ended with."""
    h = hashlib.sha256()
    for key in sorted(weights):
        h.update(key.encode())
        h.update(weights[key].detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]

"""Typed trial config: one flat list of defaults, each with a comment, validated loudly.

Why: an ablation is only as good as its bookkeeping. Every knob a trial reads lives here, with the
report's protocol as the default, and every bad key or value becomes one line that names the key and
the valid choices (no torch, no ray: this module is imported by the CLI before anything heavy).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any, Iterable

from ..errors import ConfigError, shown, unknown_key_message


def _opt(default, doc, *, choices=None, lo=None, hi=None, lo_open=False, stage=None):
    """A config key: its default, its one-line doc, its valid choices or range, and, for a key that only one
    stage reads, that stage (TrialConfig.check refuses it at a non-default value in the other stage)."""
    return field(default=default, metadata={"doc": doc, "choices": choices, "lo": lo, "hi": hi, "lo_open": lo_open,
                                            "stage": stage})


STAGES = ("rotation", "finetune")
SEED_MAX = 2**32 - 1  # torch's generators take seeds below 2**64; data_seed + 1 seeds the test subset
# Keys that say where things are, not what is computed: a trial's identity and a resume ignore them.
LOCATION_KEYS = ("data_dir", "cache_dir", "pretrained_from")
# Keys that configs recorded by an earlier version may hold, at the value that meant "off": identity ignores
# them there, so those trials keep their keys (crash_at_epoch: a test switch, now an environment variable).
RETIRED_KEYS = {"crash_at_epoch": 0}
DATASETS = ("cifar10", "fashion-mnist", "imagefolder")


@dataclass(frozen=True)
class TrialConfig:
    """One training run. Defaults follow the report's protocol (SGD, batch 128, 20 epochs, step decay)."""

    # what to train
    stage: str = _opt("rotation", "rotation = predict 0/90/180/270 degrees; finetune = CIFAR classes", choices=STAGES)
    dataset: str = _opt("cifar10", "cifar10 (torchvision), fashion-mnist, or imagefolder (root/train, root/test)",
                        choices=DATASETS)
    data_dir: str = _opt("data", "where the dataset lives or is downloaded to (imagefolder: the tree or its zips)")
    cache_dir: str = _opt("", "where decoded image folders are cached; empty = ~/.cache/ablation")
    train_subset: int = _opt(0, "stratified training subset size; 0 = the whole training split", lo=0)
    test_subset: int = _opt(0, "stratified test subset size; 0 = the whole test split", lo=0)
    labels_per_class: int = _opt(0, "finetune only: labelled training images per class; 0 = all", lo=0,
                                 stage="finetune")
    data_seed: int = _opt(0, "seed of the subsets, fixed across trial seeds so seeds vary only the training", lo=0,
                          hi=SEED_MAX)
    val_split: int = _opt(0, "hold out N training images for validation (stratified, fixed by data_seed: the same "
                          "for every seed and cell, before any other subset); epoch rows gain val_loss and val_acc, "
                          "and the report selects an epoch on them; 0 = off (the report's protocol)", lo=0)
    augment: str = _opt("on", "random crop (pad 4) + horizontal flip of training batches, in both stages as the "
                        "report's assignment did; auto = finetune only (small rotation runs learn faster: README)",
                        choices=("on", "off", "auto"))
    rotation_mode: str = _opt("random1", "random1 = one random quarter-turn per image (the report); "
                              "all4 = all four turns of each image in one batch (RotNet)", choices=("random1", "all4"),
                              stage="rotation")
    # the network
    stem: str = _opt("imagenet", "imagenet = torchvision resnet18 as is (the report); cifar = 3x3 stride-1 conv1, "
                     "no max-pool", choices=("imagenet", "cifar"))
    init: str = _opt("random", "finetune only: random, or pretrained (backbone of a rotation run)",
                     choices=("random", "pretrained"), stage="finetune")
    pretrained_from: str = _opt("", "rotation run dir or checkpoint file, when init=pretrained", stage="finetune")
    freeze: int = _opt(0, "freeze the first K of [stem, layer1, layer2, layer3, layer4]; 0 = full fine-tuning, "
                       "4 = the report's layer4+fc, 5 = linear probe", lo=0, hi=5, stage="finetune")
    # optimisation
    epochs: int = _opt(20, "training epochs (the report: 20 for each fine-tuning stage)", lo=1)
    batch_size: int = _opt(128, "model inputs per step (all4: batch_size/4 images x 4 turns)", lo=4)
    lr: float = _opt(0.01, "peak SGD learning rate", lo=0.0, lo_open=True)
    momentum: float = _opt(0.9, "SGD momentum", lo=0.0, hi=0.999)
    nesterov: bool = _opt(False, "Nesterov momentum")
    weight_decay: float = _opt(5e-4, "L2 weight decay on trainable parameters", lo=0.0)
    schedule: str = _opt("step", "step = multiply lr by lr_gamma every lr_step epochs (the report); cosine",
                         choices=("step", "cosine"))
    lr_step: int = _opt(10, "step schedule: epochs between decays", lo=1)
    lr_gamma: float = _opt(0.1, "step schedule: decay factor", lo=0.0, hi=1.0, lo_open=True)
    label_smoothing: float = _opt(0.0, "cross-entropy label smoothing", lo=0.0, hi=0.999)
    eval_batch_size: int = _opt(1024, "batch size of the gradient-free evaluation", lo=1)
    # execution
    seed: int = _opt(0, "seed of weights, batch order and augmentation", lo=0, hi=SEED_MAX)
    device: str = _opt("auto", "auto = cuda when available, else cpu", choices=("auto", "cpu", "cuda"))
    precision: str = _opt("auto", "auto = bf16 autocast on cuda, fp32 on cpu", choices=("auto", "fp32", "bf16"))
    channels_last: str = _opt("auto", "auto = on for cuda", choices=("auto", "on", "off"))
    compile: bool = _opt(False, "torch.compile the model (cuda; costs a warm-up)")
    compile_mode: str = _opt("default", "with compile=true, torch.compile's mode: default; reduce-overhead = CUDA "
                             "graphs (one launch per step: for small, launch-bound steps); max-autotune = CUDA graphs "
                             "+ autotuned kernels (longest warm-up); on a CPU every mode compiles without graphs",
                             choices=("default", "reduce-overhead", "max-autotune"))
    deterministic: bool = _opt(False, "cuda: deterministic cuDNN kernels, no autotuning (same-seed reruns and "
                                      "resumes bit-identical; slower, unmeasured); cpu runs are so anyway")

    @classmethod
    def fields(cls) -> dict[str, dataclasses.Field]:
        return {f.name: f for f in dataclasses.fields(cls)}

    @classmethod
    def from_dict(cls, values: dict[str, Any], *, where: str = "config") -> "TrialConfig":
        """Build and validate from plain values (YAML, JSON or parsed overrides)."""
        known = cls.fields()
        for key in values:
            if key not in known:
                raise ConfigError(unknown_key_message(key, known, where))
        coerced = {k: coerce(known[k], v, where) for k, v in values.items()}
        cfg = cls(**coerced)
        cfg.check()
        return cfg

    def replace(self, **changes) -> "TrialConfig":
        return TrialConfig.from_dict({**self.to_dict(), **changes})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def augments(self) -> bool:
        """Whether training batches get crop + flip: `auto` (the default before 2026-11-30) is finetune only."""
        return self.augment == "on" or (self.augment == "auto" and self.stage == "finetune")

    @property
    def images_per_step(self) -> int:
        """Training images one step draws: all4 feeds a quarter of the batch, each image in four turns."""
        return self.batch_size // 4 if self.stage == "rotation" and self.rotation_mode == "all4" else self.batch_size

    @classmethod
    def stage_only_keys(cls) -> dict[str, str]:
        """Keys that only one stage reads -> that stage. Rule: the other stage refuses them at a non-default
        value (one line), so that a key that would be ignored is never silently accepted."""
        return {name: f.metadata["stage"] for name, f in cls.fields().items() if f.metadata.get("stage")}

    def check(self) -> None:
        """Cross-field rules that a single field's range cannot say."""
        fields = self.fields()
        for key, stage in self.stage_only_keys().items():
            if self.stage != stage and getattr(self, key) != fields[key].default:
                raise ConfigError(f"{key} applies to stage={stage} only; drop {key}= or set stage={stage}")
        if self.init == "pretrained" and self.stage == "finetune" and not self.pretrained_from:
            raise ConfigError("init=pretrained needs pretrained_from=<rotation run dir or checkpoint>")
        if self.pretrained_from and self.init != "pretrained":
            raise ConfigError("pretrained_from is read only with init=pretrained; drop pretrained_from= "
                              "or set init=pretrained")
        if self.labels_per_class and self.train_subset:
            raise ConfigError(f"train_subset={self.train_subset} and labels_per_class={self.labels_per_class} both "
                              f"cut the training split (the second would silently cut the first); set only one")
        if self.compile_mode != "default" and not self.compile:
            raise ConfigError(f"compile_mode={self.compile_mode} is read only with compile=true; set compile=true "
                              f"or drop compile_mode=")
        if self.rotation_mode == "all4" and self.batch_size % 4:
            raise ConfigError(f"rotation_mode=all4 needs batch_size divisible by 4, got {self.batch_size}")

    def identity(self) -> dict[str, Any]:
        """What the run computes: the keys set away from their defaults, but where its data, cache and
        pretrained weights live. A key added later, whose default keeps today's behaviour, so leaves every
        earlier trial's identity (and study key) as it was; a default must therefore never change meaning."""
        return self.identity_of(self.to_dict())

    @classmethod
    def identity_of(cls, values: dict[str, Any]) -> dict[str, Any]:
        """identity() of a config as recorded (run.json, a checkpoint), written by this or an earlier version."""
        fields = cls.fields()
        return {k: v for k, v in values.items() if k not in LOCATION_KEYS
                and not (k in fields and v == fields[k].default) and not (k in RETIRED_KEYS and v == RETIRED_KEYS[k])}

    def describe(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


def data_source(dataset: str, data_dir: str) -> str:
    """How a study's manifest names a data copy: "dataset:data_dir" (fashion-mnist: the system's files)."""
    return f"{dataset}:{data_dir}" if dataset != "fashion-mnist" and data_dir else dataset


def dataset_of(source: str) -> str:
    """The dataset of a data_source() name."""
    return source.split(":")[0]


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def coerce(f: dataclasses.Field, value: Any, where: str = "config") -> Any:
    """Coerce one value to its field's type and check its choices and range."""
    kind = type(f.default)
    name = f.name
    try:
        if kind is bool:
            if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
                value = value.lower() in _TRUE
            elif not isinstance(value, bool):
                raise TypeError
        elif kind is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise TypeError
            value = int(value)
        elif kind is float:
            if isinstance(value, bool):
                raise TypeError
            value = float(value)
        elif kind is str:
            if isinstance(value, bool) and {"on", "off"} <= set(f.metadata.get("choices") or ()):
                value = "on" if value else "off"  # YAML 1.1 reads a bare on/off as a boolean
            elif not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise TypeError
            value = str(value)
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(f"{where}: {name} must be {kind.__name__}, got {shown(value)}") from None
    if kind is float and not math.isfinite(value):  # nan passes every range test; inf and 1e999 train to nan
        raise ConfigError(f"{where}: {name}={value} is not a finite number; use a number like {f.default}")
    if kind is str and "\0" in value:
        raise ConfigError(f"{where}: {name} contains a NUL character; remove it")
    meta = f.metadata
    if meta.get("choices") and value not in meta["choices"]:
        raise ConfigError(f"{where}: {name}={shown(value)} is not one of {', '.join(meta['choices'])}")
    lo, hi = meta.get("lo"), meta.get("hi")
    if lo is not None and (value < lo or (meta.get("lo_open") and value == lo)):
        rng = f"> {lo}" if meta.get("lo_open") else f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ConfigError(f"{where}: {name}={value} is out of range (must be {rng})")
    if hi is not None and value > hi:
        raise ConfigError(f"{where}: {name}={value} is out of range (must be in [{lo}, {hi}])")
    return value


def parse_overrides(items: Iterable[str]) -> dict[str, str]:
    """`key=value` strings from the command line -> dict; values are coerced later by their field."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {shown(item)} is not key=value (e.g. epochs=5)")
        out[key.strip()] = value.strip()
    return out


def defaults_table() -> str:
    """Markdown table of every key, its default and its meaning (for the README and `--help`)."""
    rows = ["| key | default | meaning |", "| --- | --- | --- |"]
    for f in dataclasses.fields(TrialConfig):
        rows.append(f"| `{f.name}` | `{f.default}` | {f.metadata['doc']} |")
    return "\n".join(rows)

"""Datasets as uint8 tensors in memory (read by sources.py), label subsets, and batched augmentation and
rotation.

Why: ResNet18 on 32x32 images is so cheap that PIL transforms in a DataLoader starve a GPU. Every image
is decoded once into one uint8 tensor (N, 3, H, H), 32x32 here, that can live on the training device; crops, flips
and rotations then act on whole batches there, with no per-sample Python in the training loop.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import ConfigError
from .config import TrialConfig, data_source
from .sources import SOURCES, Split


@dataclass
class Data:
    train: Split
    test: Split
    classes: list[str]
    mean: tuple[float, ...]  # per channel, in [0, 1], of the full training split
    std: tuple[float, ...]
    fingerprint: str  # sha256 over the full splits' bytes: which data copy a result came from
    val: Split | None = None  # held out of the training split (val_split), for epoch selection


# ---------------------------------------------------------------------------------------------- loading


def load_data(cfg: TrialConfig) -> Data:
    """Load cfg.dataset and cut the subsets cfg asks for (stratified, seeded by cfg.data_seed)."""
    full = full_data(cfg)
    train, test = full.train, full.test
    _check_subsets(cfg, train.y, test.y)
    val = None
    if cfg.val_split:
        held, kept = validation_split(train.y, cfg.val_split, cfg.data_seed)
        train, val = take(train, kept), take(train, held)
    if cfg.stage == "finetune" and cfg.labels_per_class:
        train = take(train, per_class_subset(train.y, cfg.labels_per_class, cfg.data_seed))
    if cfg.train_subset and cfg.train_subset < len(train.y):
        train = take(train, stratified_subset(train.y, cfg.train_subset, cfg.data_seed))
    if cfg.test_subset and cfg.test_subset < len(test.y):
        test = take(test, stratified_subset(test.y, cfg.test_subset, cfg.data_seed + 1))
    return Data(train, test, full.classes, full.mean, full.std, full.fingerprint, val)


def validation_split(labels: torch.Tensor, n: int, data_seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(held-out indices, the rest) of a training split: n images stratified by class, seeded by data_seed
    alone (its own stream: data_seed + 2; the test subset uses + 1), so every seed and cell sees the same."""
    held = stratified_subset(labels, n, data_seed + 2)
    keep = torch.ones(len(labels), dtype=torch.bool)
    keep[held] = False
    return held, keep.nonzero().flatten()


_FULL: dict[tuple, Data] = {}  # this process's loaded sources, by what they were read from (newest last)
_FULL_KEEP = 2


def full_data(cfg: TrialConfig) -> Data:
    """The whole splits of cfg's data source, with channel stats and fingerprint, read once per process.

    Why: a Ray worker runs trial after trial on the same data; decoding, hashing and the channel statistics
    cost seconds each time. The memo is keyed by the source's files (names, sizes, mtimes), so a copy that
    changed is read again, never served from memory."""
    signature, read = SOURCES[cfg.dataset](cfg)
    if signature not in _FULL:
        train, test, classes = read()
        mean, std = channel_stats(train.x)
        _FULL[signature] = Data(train, test, classes, mean, std, fingerprint_of(train, test))
        while len(_FULL) > _FULL_KEEP:
            del _FULL[next(iter(_FULL))]
    return _FULL[signature]


def _source_name(cfg: TrialConfig) -> str:
    return f"imagefolder {cfg.data_dir}" if cfg.dataset == "imagefolder" else cfg.dataset


def _check_subsets(cfg: TrialConfig, train_labels: torch.Tensor, test_labels: torch.Tensor) -> None:
    """A subset never silently holds less than it says: one larger than its split, or labels per class beyond
    the smallest class, is refused. A validation split is held out first: the rest is what they cut."""
    if cfg.val_split:
        if cfg.val_split >= len(train_labels):
            raise ConfigError(f"val_split={cfg.val_split} leaves no training images of the {len(train_labels)} "
                              f"of {_source_name(cfg)}; use fewer")
        train_labels = train_labels[validation_split(train_labels, cfg.val_split, cfg.data_seed)[1]]
    if cfg.stage == "finetune" and cfg.labels_per_class:
        have = int(torch.bincount(train_labels).min())
        if cfg.labels_per_class > have:
            raise ConfigError(f"labels_per_class={cfg.labels_per_class} exceeds the {have} images per class "
                              f"that {_source_name(cfg)} has; use at most {have}")
    kept = f"training images left after val_split={cfg.val_split}" if cfg.val_split else "training images"
    for key, labels, split in (("train_subset", train_labels, kept), ("test_subset", test_labels, "test images")):
        want, have = getattr(cfg, key), len(labels)
        if want > have:
            raise ConfigError(f"{key}={want} exceeds the {have} {split} of {_source_name(cfg)}; "
                              f"use at most {have} (0 = all of them)")


CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def describe(dataset: str, full: Data) -> dict[str, Any]:
    """What a report says about a data copy: fingerprint, sizes, classes, and the task it is. An image folder
    with CIFAR-10's classes and 50,000 + 10,000 images of 3x32x32 is CIFAR-10 (a copy, e.g. the lossy JPEG
    one: its fingerprint tells copies apart), so its results sit beside the report's CIFAR-10 numbers."""
    shape = list(full.train.x.shape[1:])
    sizes = (len(full.train.y), len(full.test.y))
    is_cifar10 = full.classes == CIFAR10_CLASSES and sizes == (50_000, 10_000) and shape == [3, 32, 32]
    return {"fingerprint": full.fingerprint, "train_images": sizes[0], "test_images": sizes[1],
            "classes": list(full.classes), "image_shape": shape,
            "task": "cifar10" if dataset == "cifar10" or is_cifar10 else dataset}


def preflight(cfgs: list[TrialConfig]) -> dict[str, dict[str, Any]]:
    """Load each distinct data source of a study once, before anything is written: a missing dataset, or a
    subset or labels_per_class beyond it, fails here. Returns {"dataset:data_dir": describe(...)} for the
    manifest."""
    loaded: dict[str, tuple[torch.Tensor, torch.Tensor, dict[str, Any]]] = {}  # labels only: not every copy's pixels
    for cfg in cfgs:
        source = data_source(cfg.dataset, cfg.data_dir)
        if source not in loaded:
            full = full_data(cfg)
            loaded[source] = full.train.y, full.test.y, describe(cfg.dataset, full)
        _check_subsets(cfg, *loaded[source][:2])
    return {source: description for source, (_, _, description) in loaded.items()}


def take(split: Split, idx: torch.Tensor) -> Split:
    return Split(split.x[idx], split.y[idx])


def channel_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std in [0, 1] of a uint8 (N, C, H, W) tensor, from a 256-bin histogram per
    channel: exact in float64, and 8x faster than summing float copies of every pixel."""
    levels = torch.arange(256, dtype=torch.float64) / 255
    means, stds = [], []
    for c in range(x.shape[1]):
        h = torch.bincount(x[:, c].reshape(-1), minlength=256).to(torch.float64)
        mean = (h * levels).sum() / h.sum()
        std = ((h * levels * levels).sum() / h.sum() - mean * mean).clamp_min(1e-12).sqrt()
        means.append(round(mean.item(), 6))
        stds.append(round(std.item(), 6))
    return tuple(means), tuple(stds)


def fingerprint_of(train: Split, test: Split) -> str:
    h = hashlib.sha256()
    for t in (train.x, train.y, test.x, test.y):
        h.update(t.contiguous().numpy().data)  # the tensor's own bytes: no copy (tobytes() cost 0.1 s here)
    return h.hexdigest()[:16]


# ---------------------------------------------------------------------------------------------- subsets


def stratified_subset(labels: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """min(n, len(labels)) indices, split over classes as evenly as the class sizes allow: n // C each and
    one more for the first n % C classes; what a small class cannot give goes to the others in the same way,
    so the subset always has its full size (on balanced data the split is the plain even one)."""
    classes = torch.unique(labels).tolist()
    pools = [torch.nonzero(labels == c).flatten() for c in classes]
    take = [0] * len(classes)
    left = min(n, len(labels))
    while left:
        open_ = [i for i, pool in enumerate(pools) if take[i] < len(pool)]
        base, extra = divmod(left, len(open_))
        for j, i in enumerate(open_):
            k = min(len(pools[i]) - take[i], base + (1 if j < extra else 0))
            take[i] += k
            left -= k
    gen = torch.Generator().manual_seed(seed)
    picked = [pool[torch.randperm(len(pool), generator=gen)[:k]] for pool, k in zip(pools, take)]
    return torch.cat(picked).sort().values


def per_class_subset(labels: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    """Exactly k indices of every class (the RotNet paper's semi-supervised axis)."""
    return stratified_subset(labels, k * len(torch.unique(labels)), seed)


# ---------------------------------------------------------------------------------------------- batches


def rotate(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Turn image i of x by k[i] quarter-turns counter-clockwise (torch.rot90 over H, W); label = k.
    One gather through four precomputed pixel permutations: no per-turn masks, no host sync on a GPU."""
    n, c, h, w = x.shape
    if h != w:
        raise ValueError(f"quarter turns need square images, got {h}x{w}")
    perms = _turns(h, x.device)
    return x.flatten(-2).gather(-1, perms[k][:, None, :].expand(n, c, h * w)).view_as(x)


@functools.lru_cache(maxsize=8)
def _turns(side: int, device: torch.device) -> torch.Tensor:
    """The four pixel permutations of a side x side image's quarter turns, built once per size and device (not
    at every step: on a GPU each build is a few more small kernel launches)."""
    grid = torch.arange(side * side, device=device).view(side, side)
    return torch.stack([torch.rot90(grid, turns).flatten() for turns in range(4)])


def rotation_batch(x: torch.Tensor, mode: str, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """random1: one random turn per image; all4: every image in all four turns, grouped per image."""
    if mode == "all4":
        turned = torch.stack([torch.rot90(x, turns, dims=(-2, -1)) for turns in range(4)], dim=1)
        return turned.flatten(0, 1), torch.arange(4, device=x.device).repeat(x.shape[0])
    k = torch.randint(0, 4, (x.shape[0],), generator=gen, device=x.device)
    return rotate(x, k), k


def augment(x: torch.Tensor, gen: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop with zero padding `pad` and random horizontal flip, for a whole uint8 batch at once."""
    n, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen, device=x.device)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen, device=x.device)
    windows = padded.unfold(2, h, 1).unfold(3, w, 1)  # (n, c, 2*pad+1, 2*pad+1, h, w): a view, no copy
    out = windows[torch.arange(n, device=x.device), :, dy, dx]  # whole crops, not per-pixel indices
    flip = torch.rand(n, generator=gen, device=x.device) < 0.5
    return torch.where(flip[:, None, None, None], out.flip(-1), out)


def normalize(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 batch -> float, standardised per channel (mean and std as (1, C, 1, 1) tensors in [0, 1])."""
    return (x.float().div_(255) - mean) / std

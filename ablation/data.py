"""Datasets as uint8 tensors in memory, label subsets, and batched augmentation and rotation.

Why: ResNet18 on 32x32 images is so cheap that PIL transforms in a DataLoader starve a GPU. Every image
is decoded once into one uint8 tensor (N, 3, 32, 32) that can live on the training device; crops, flips
and rotations then act on whole batches there, with no per-sample Python in the training loop.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .config import ConfigError, TrialConfig, UserError

FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
CIFAR_JPEG_HINT = "dataset=imagefolder data_dir=<unzipped ../shared/data/cifar10-jpeg or the folder with its zips>"


class DataError(UserError):
    """A dataset that cannot be found or read; its message is one line that says how to get it."""


@dataclass
class Split:
    x: torch.Tensor  # uint8 (N, 3, H, W)
    y: torch.Tensor  # int64 (N,)


@dataclass
class Data:
    train: Split
    test: Split
    classes: list[str]
    mean: tuple[float, ...]  # per channel, in [0, 1], of the full training split
    std: tuple[float, ...]
    fingerprint: str  # sha256 over the full splits' bytes: which data copy a result came from


# ---------------------------------------------------------------------------------------------- loading


def load_data(cfg: TrialConfig) -> Data:
    """Load cfg.dataset and cut the subsets cfg asks for (stratified, seeded by cfg.data_seed)."""
    train, test, classes = _LOADERS[cfg.dataset](cfg)
    mean, std = channel_stats(train.x)
    fingerprint = fingerprint_of(train, test)
    if cfg.stage == "finetune" and cfg.labels_per_class:
        _check_labels_per_class(cfg, train.y)
        train = take(train, per_class_subset(train.y, cfg.labels_per_class, cfg.data_seed))
    if cfg.train_subset and cfg.train_subset < len(train.y):
        train = take(train, stratified_subset(train.y, cfg.train_subset, cfg.data_seed))
    if cfg.test_subset and cfg.test_subset < len(test.y):
        test = take(test, stratified_subset(test.y, cfg.test_subset, cfg.data_seed + 1))
    return Data(train, test, classes, mean, std, fingerprint)


def _check_labels_per_class(cfg: TrialConfig, labels: torch.Tensor) -> None:
    have = int(torch.bincount(labels).min())
    if cfg.labels_per_class > have:
        raise ConfigError(f"labels_per_class={cfg.labels_per_class} exceeds the {have} images per class "
                          f"that {cfg.dataset} has; use at most {have}")


def preflight(cfgs: list[TrialConfig]) -> dict[str, str]:
    """Load each distinct data source of a study once, before anything is written: a missing dataset or
    a labels_per_class beyond it fails here. Returns {"dataset:data_dir": fingerprint} for the manifest."""
    loaded: dict[tuple, tuple] = {}
    for cfg in cfgs:
        key = (cfg.dataset, cfg.data_dir if cfg.dataset != "fashion-mnist" else "", cfg.cache_dir)
        if key not in loaded:
            train, test, _ = _LOADERS[cfg.dataset](cfg)
            loaded[key] = (fingerprint_of(train, test), train.y)
        if cfg.stage == "finetune" and cfg.labels_per_class:
            _check_labels_per_class(cfg, loaded[key][1])
    return {f"{d}:{src}" if src else d: fp for (d, src, _), (fp, _) in loaded.items()}


def take(split: Split, idx: torch.Tensor) -> Split:
    return Split(split.x[idx], split.y[idx])


def _load_cifar10(cfg: TrialConfig):
    import torchvision

    root = Path(cfg.data_dir).expanduser()
    try:
        tr = torchvision.datasets.CIFAR10(str(root), train=True, download=True)
        te = torchvision.datasets.CIFAR10(str(root), train=False, download=True)
    except Exception as exc:  # torchvision raises URLError, RuntimeError, ... when offline
        raise DataError(f"CIFAR-10 is not in {root} and could not be downloaded ({type(exc).__name__}); "
                        f"put cifar-10-batches-py under data_dir=, or use the offline copy: {CIFAR_JPEG_HINT}") from None

    def split(ds):
        return Split(torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous(), torch.tensor(ds.targets))

    return split(tr), split(te), list(tr.classes)


FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot"]


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as fh:
        raw = fh.read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _load_fashion_mnist(cfg: TrialConfig):
    """28x28 greyscale, zero-padded to 32x32 and repeated to 3 channels so every stem applies unchanged."""
    names = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
             "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
    candidates = [FASHION_MNIST_SYSTEM_DIR, Path(cfg.data_dir).expanduser(),
                  Path(cfg.data_dir).expanduser() / "FashionMNIST" / "raw"]
    src = next((d for d in candidates if all((d / f).exists() for pair in names.values() for f in pair)), None)
    if src is None:
        import torchvision

        root = Path(cfg.data_dir).expanduser()
        try:
            torchvision.datasets.FashionMNIST(str(root), train=True, download=True)
            torchvision.datasets.FashionMNIST(str(root), train=False, download=True)
        except Exception as exc:
            raise DataError(f"Fashion-MNIST not found ({type(exc).__name__} on download); install it offline with "
                            f"'apt-get install dataset-fashion-mnist' or put the idx .gz files in {root}") from None
        src = root / "FashionMNIST" / "raw"

    def split(which):
        imgs, labels = names[which]
        x = torch.from_numpy(_read_idx(src / imgs).copy())
        x = torch.nn.functional.pad(x, (2, 2, 2, 2)).unsqueeze(1).repeat(1, 3, 1, 1).contiguous()
        return Split(x, torch.from_numpy(_read_idx(src / labels).astype(np.int64)))

    return split("train"), split("test"), list(FASHION_CLASSES)


def _load_imagefolder(cfg: TrialConfig):
    """root/{train,test}/<class>/* as folders or as root/{train,test}.zip; decoded once, then cached."""
    root = Path(cfg.data_dir).expanduser().resolve()
    sources = {s: _folder_source(root, s) for s in ("train", "test")}
    stamp = hashlib.sha256(repr(sorted((s, str(p), p.stat().st_size, p.stat().st_mtime_ns)
                                       for s, p in sources.items())).encode()).hexdigest()[:16]
    cache_root = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else Path.home() / ".cache" / "ablation"
    cache = cache_root / f"imagefolder-{stamp}.pt"
    if cache.exists():
        try:
            blob = torch.load(cache, weights_only=True)
            return Split(blob["train_x"], blob["train_y"]), Split(blob["test_x"], blob["test_y"]), blob["classes"]
        except Exception:
            cache.unlink(missing_ok=True)  # a torn cache is rebuilt, never trusted
    (tx, ty, classes), (vx, vy, vclasses) = (_decode(sources[s], s) for s in ("train", "test"))
    if classes != vclasses:
        raise DataError(f"{root}: train classes {classes} differ from test classes {vclasses}")
    cache_root.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(f".tmp{os.getpid()}")
    torch.save({"train_x": tx, "train_y": ty, "test_x": vx, "test_y": vy, "classes": classes}, tmp)
    os.replace(tmp, cache)
    return Split(tx, ty), Split(vx, vy), classes


def _folder_source(root: Path, split: str) -> Path:
    for cand in (root / split, root / f"{split}.zip"):
        if cand.exists():
            return cand
    raise DataError(f"imagefolder: neither {root / split}/ nor {root / split}.zip exists; "
                    f"data_dir= must hold train/<class>/* and test/<class>/* (folders or zips)")


def _decode(src: Path, split: str):
    from PIL import Image

    if src.is_dir():
        files = sorted(p.relative_to(src).as_posix() for p in src.glob("*/*") if p.is_file())
        read = lambda name: (src / name).read_bytes()  # noqa: E731
    else:
        zf = zipfile.ZipFile(src)
        prefix = f"{split}/"
        files = sorted(n[len(prefix):] for n in zf.namelist() if n.startswith(prefix) and not n.endswith("/")
                       and n.count("/") == 2)
        read = lambda name: zf.read(prefix + name)  # noqa: E731
    if not files:
        raise DataError(f"imagefolder: no images under {src} (expected {split}/<class>/<image>)")
    classes = sorted({f.split("/")[0] for f in files})
    index = {c: i for i, c in enumerate(classes)}
    images, labels = [], []
    for name in files:
        with Image.open(io.BytesIO(read(name))) as im:
            images.append(np.asarray(im.convert("RGB")))
        labels.append(index[name.split("/")[0]])
    shapes = {a.shape for a in images}
    if len(shapes) != 1:
        raise DataError(f"imagefolder: images under {src} differ in size {sorted(shapes)[:3]}; resize them first")
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    return x, torch.tensor(labels, dtype=torch.int64), classes


_LOADERS = {"cifar10": _load_cifar10, "fashion-mnist": _load_fashion_mnist, "imagefolder": _load_imagefolder}


def channel_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std in [0, 1] of a uint8 (N, C, H, W) tensor, in float64 chunks."""
    total = torch.zeros(x.shape[1], dtype=torch.float64)
    sq = torch.zeros_like(total)
    for chunk in x.split(8192):
        c = chunk.to(torch.float64) / 255
        total += c.sum(dim=(0, 2, 3))
        sq += (c * c).sum(dim=(0, 2, 3))
    n = x.shape[0] * x.shape[2] * x.shape[3]
    mean = total / n
    std = (sq / n - mean * mean).clamp_min(1e-12).sqrt()
    return tuple(round(v, 6) for v in mean.tolist()), tuple(round(v, 6) for v in std.tolist())


def fingerprint_of(train: Split, test: Split) -> str:
    h = hashlib.sha256()
    for t in (train.x, train.y, test.x, test.y):
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


# ---------------------------------------------------------------------------------------------- subsets


def stratified_subset(labels: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """n indices, split over classes as evenly as the class sizes allow (the first n % C classes get one more)."""
    classes = torch.unique(labels)
    base, extra = divmod(n, len(classes))
    gen = torch.Generator().manual_seed(seed)
    picked = []
    for i, c in enumerate(classes.tolist()):
        pool = torch.nonzero(labels == c).flatten()
        k = min(len(pool), base + (1 if i < extra else 0))
        picked.append(pool[torch.randperm(len(pool), generator=gen)[:k]])
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
    grid = torch.arange(h * w, device=x.device).view(h, w)
    perms = torch.stack([torch.rot90(grid, turns).flatten() for turns in range(4)])
    return x.flatten(-2).gather(-1, perms[k][:, None, :].expand(n, c, h * w)).view_as(x)


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

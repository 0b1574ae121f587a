"""Where the images come from: torchvision's CIFAR-10 batches, Fashion-MNIST's idx files (Debian's offline
copy first), or an image folder (root/{train,test}/<class>/*, as folders or zips), each read whole into uint8
tensors.

Why: every source is named by a signature of its files (names, sizes, mtimes), so data.py can keep what it
read in memory and a copy that changed is read again; an image folder is decoded once and cached on disk,
since decoding 60,000 JPEGs takes minutes and a trial should not pay them. Every failure is one DataError
line that names the file and the fix.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from ..storage.atomic import write_atomic
from ..storage.files import unwritable
from .config import TrialConfig

FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
CIFAR_JPEG_HINT = "dataset=imagefolder data_dir=<the CIFAR-10 JPEG copy: unzipped, or the folder of its zips>"


class DataError(UserError):
    """A dataset that cannot be found or read; its message is one line that says how to get it."""


@dataclass
class Split:
    x: torch.Tensor  # uint8 (N, 3, H, W)
    y: torch.Tensor  # int64 (N,)


CIFAR10_BATCHES = "cifar-10-batches-py"  # torchvision's folder under data_dir


def _cifar10_source(cfg: TrialConfig):
    root = Path(cfg.data_dir).expanduser()
    batches = root / CIFAR10_BATCHES
    signature = ("cifar10", str(root.resolve()), tuple(_list_source(batches)) if batches.is_dir() else ())

    def read():
        import torchvision

        try:
            tr = torchvision.datasets.CIFAR10(str(root), train=True, download=True)
            te = torchvision.datasets.CIFAR10(str(root), train=False, download=True)
        except Exception as exc:  # torchvision raises URLError, RuntimeError, ... when offline
            raise DataError(f"CIFAR-10 is not in {root} and could not be downloaded ({type(exc).__name__}); put "
                            f"{CIFAR10_BATCHES} under data_dir=, or use the offline copy: {CIFAR_JPEG_HINT}") from None

        def split(ds):
            return Split(torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous(), torch.tensor(ds.targets))

        return split(tr), split(te), list(tr.classes)

    return signature, read


FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot"]


def _read_idx(path: Path) -> np.ndarray:
    try:
        with gzip.open(path, "rb") as fh:
            raw = fh.read()
        ndim = raw[3]
        dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
        return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)
    except (OSError, EOFError, zlib.error, IndexError, ValueError) as exc:
        raise DataError(f"{path}: not a readable gzipped idx file ({_reason(exc)}); reinstall it "
                        f"('apt-get install --reinstall dataset-fashion-mnist') or download it again") from None


def _fashion_mnist_source(cfg: TrialConfig):
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

    signature = ("fashion-mnist", str(src), tuple(_list_source(src)))

    def split(which):
        imgs, labels = names[which]
        x, y = _read_idx(src / imgs), _read_idx(src / labels)
        if x.ndim != 3 or x.shape[1:] != (28, 28) or y.ndim != 1 or len(y) != len(x) or y.max(initial=0) > 9:
            raise DataError(f"{src}: {imgs} and {labels} are not a Fashion-MNIST split (images {x.shape}, "
                            f"labels {y.shape}); reinstall dataset-fashion-mnist or download it again")
        x = torch.nn.functional.pad(torch.from_numpy(x.copy()), (2, 2, 2, 2)).unsqueeze(1).repeat(1, 3, 1, 1)
        return Split(x.contiguous(), torch.from_numpy(y.astype(np.int64)))

    return signature, lambda: (split("train"), split("test"), list(FASHION_CLASSES))


def _imagefolder_source(cfg: TrialConfig):
    """root/{train,test}/<class>/* as folders or as root/{train,test}.zip; decoded once, then cached.

    The cache is keyed by what it holds: the name, size, mtime and ctime of every file under train/ and
    test/ (of the zip itself for a zip), so an image replaced, added or removed is decoded anew. A side file
    per root keeps the listing the cache was made from, to say in one line why a cache is re-decoded."""
    root = Path(cfg.data_dir).expanduser().resolve()
    sources = {s: _folder_source(root, s) for s in ("train", "test")}
    listing = {s: _list_source(src) for s, src in sources.items()}
    stamp = hashlib.sha256(json.dumps([CACHE_FORMAT, str(root), {s: [str(sources[s]), listing[s]] for s in listing}])
                           .encode()).hexdigest()[:16]
    cache_root = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else Path.home() / ".cache" / "ablation"
    index = cache_root / f"imagefolder-{hashlib.sha256(str(root).encode()).hexdigest()[:16]}.json"
    return ("imagefolder", stamp), lambda: _read_imagefolder(cfg, root, sources, listing, stamp, cache_root, index)


def _read_imagefolder(cfg: TrialConfig, root: Path, sources: dict, listing: dict, stamp: str, cache_root: Path,
                      index: Path):
    """The cached tensors of this exact listing, or a fresh decode (then cached)."""
    cache = cache_root / f"imagefolder-{stamp}.pt"
    try:
        blob = torch.load(cache, weights_only=True)
        return Split(blob["train_x"], blob["train_y"]), Split(blob["test_x"], blob["test_y"]), blob["classes"]
    except FileNotFoundError:
        pass
    except Exception:  # a torn cache is rebuilt, never trusted
        with contextlib.suppress(OSError):
            cache.unlink(missing_ok=True)
    problem = unwritable(cache_root)  # before minutes of decoding, not after
    if problem:
        raise DataError(f"cache_dir={cfg.cache_dir or cache_root}: {problem}; set cache_dir= to a writable folder")
    files = {f"{s}/{name}": entry for s in listing for name, *entry in listing[s]}
    old = _read_index(index)
    print(f"imagefolder: {_why_decode(root, old, stamp, files, cache_root)}", flush=True)
    (tx, ty, classes), (vx, vy, vclasses) = (_decode(sources[s], s, listing[s]) for s in ("train", "test"))
    if classes != vclasses:
        raise DataError(f"{root}: train classes {classes} differ from test classes {vclasses}")
    if tx.shape[1:] != vx.shape[1:]:
        raise DataError(f"imagefolder: {root}: train images are {tx.shape[-2]}x{tx.shape[-1]} but test images "
                        f"{vx.shape[-2]}x{vx.shape[-1]}; resize them to one size")
    cache_root.mkdir(parents=True, exist_ok=True)
    blob = io.BytesIO()
    torch.save({"train_x": tx, "train_y": ty, "test_x": vx, "test_y": vy, "classes": classes}, blob)
    write_atomic(cache, blob.getvalue())
    if old and old.get("stamp") != stamp:  # the old copy's cache is stale for good: free its disk
        (cache_root / f"imagefolder-{old['stamp']}.pt").unlink(missing_ok=True)
    write_atomic(index, json.dumps({"root": str(root), "stamp": stamp, "files": files}))
    return Split(tx, ty), Split(vx, vy), classes


CACHE_FORMAT = 2  # part of the cache key: bump it when what a cache holds changes


def _list_source(src: Path) -> list[tuple[str, int, int, int]]:
    """(name, size, mtime_ns, ctime_ns) of every file under a split's folder (names relative to it), or of
    the zip itself. ctime catches a file replaced with its old mtime kept (cp -p, rsync -a, tar)."""
    def entry(path: str, name: str) -> tuple[str, int, int, int]:
        try:
            st = os.stat(path)
        except OSError as exc:
            raise DataError(f"imagefolder: cannot read {path} ({exc.strerror}); fix its permissions or remove it") \
                from None
        return name, st.st_size, st.st_mtime_ns, st.st_ctime_ns

    if not src.is_dir():
        return [entry(str(src), src.name)]
    out = []
    for folder, dirs, names in os.walk(src, followlinks=True):
        dirs.sort()
        for name in names:
            path = os.path.join(folder, name)
            out.append(entry(path, Path(os.path.relpath(path, src)).as_posix()))
    return sorted(out)


def _read_index(index: Path) -> dict | None:
    try:
        old = json.loads(index.read_text())
        return old if isinstance(old, dict) and isinstance(old.get("files"), dict) else None
    except (OSError, ValueError):
        return None


def _why_decode(root: Path, old: dict | None, stamp: str, files: dict, cache_root: Path) -> str:
    """One line: why this image folder is decoded now (first use, changed files, or a lost cache)."""
    n = len(files)
    if old is None:
        return f"decoding {root} ({n} files; first use, cached in {cache_root})"
    if old.get("stamp") == stamp:
        return f"decoding {root} again ({n} files; its cache in {cache_root} is missing or unreadable)"
    before = old["files"]
    added = sorted(set(files) - set(before))
    removed = sorted(set(before) - set(files))
    changed = sorted(k for k in set(files) & set(before) if list(files[k]) != list(before[k]))
    parts = [f"{len(names)} {what} (e.g. {names[0]})" for what, names in
             (("changed", changed), ("added", added), ("removed", removed)) if names]
    if not parts:
        return f"re-decoding {root}: the cache format changed since it was cached"
    return f"re-decoding {root}: its files changed since it was cached ({', '.join(parts)}); the old cache is not used"


def _folder_source(root: Path, split: str) -> Path:
    for cand in (root / split, root / f"{split}.zip"):
        if cand.exists():
            return cand
    raise DataError(f"imagefolder: neither {root / split}/ nor {root / split}.zip exists; "
                    f"data_dir= must hold train/<class>/* and test/<class>/* (folders or zips)")


def _reason(exc: BaseException) -> str:
    """An exception as a short reason for a one-line message."""
    from PIL import UnidentifiedImageError

    if isinstance(exc, UnidentifiedImageError):
        return "not an image format PIL knows"
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 100 else text[:97] + "..."


def _image_name(name: str) -> bool:
    """A class's image: <class>/<file>, not hidden (.DS_Store, ._x.jpg) and not macOS zip metadata."""
    parts = name.split("/")
    return len(parts) == 2 and all(p and not p.startswith(".") for p in parts) and parts[0] != "__MACOSX"


def _decode(src: Path, split: str, listing: list[tuple]):
    """Every image of a split as one uint8 (N, 3, H, W) tensor and its labels; a file that is not an image, a
    damaged zip, or images of different or non-square sizes are one DataError line that names the file."""
    from PIL import Image

    if src.is_dir():
        files = [name for name, *_ in listing if _image_name(name)]
        read = lambda name: (src / name).read_bytes()  # noqa: E731
        where = lambda name: src / name  # noqa: E731
    else:
        try:
            zf = zipfile.ZipFile(src)
            members = zf.namelist()
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
            raise DataError(f"imagefolder: {src} is not a readable zip ({_reason(exc)}); download or "
                            f"re-create it, or unzip it into {src.with_suffix('')}/") from None
        prefix = f"{split}/"
        files = sorted(n[len(prefix):] for n in members if n.startswith(prefix) and not n.endswith("/")
                       and _image_name(n[len(prefix):]))
        read = lambda name: zf.read(prefix + name)  # noqa: E731
        where = lambda name: f"{src}:{prefix}{name}"  # noqa: E731
    if not files:
        raise DataError(f"imagefolder: no images under {src} (expected {split}/<class>/<image>)")
    classes = sorted({f.split("/")[0] for f in files})
    index = {c: i for i, c in enumerate(classes)}
    images, labels = [], []
    for name in files:
        try:
            raw = read(name)
        except (zipfile.BadZipFile, OSError, EOFError, zlib.error, ValueError, RuntimeError,
                NotImplementedError) as exc:
            raise DataError(f"imagefolder: cannot read {where(name)} ({_reason(exc)}); the archive or file is "
                            f"damaged: download or re-create it") from None
        try:
            with Image.open(io.BytesIO(raw)) as im:
                images.append(np.asarray(im.convert("RGB")))
        except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError, ...
            raise DataError(f"imagefolder: {where(name)} is not a readable image ({_reason(exc)}); "
                            f"remove or replace it") from None
        labels.append(index[name.split("/")[0]])
    odd = next((i for i, a in enumerate(images) if a.shape != images[0].shape), None)
    if odd is not None:
        size = lambda a: f"{a.shape[0]}x{a.shape[1]}"  # noqa: E731
        raise DataError(f"imagefolder: images under {src} differ in size ({where(files[0])} is {size(images[0])}, "
                        f"{where(files[odd])} is {size(images[odd])}); resize them to one size first")
    h, w = images[0].shape[:2]
    if h != w:
        raise DataError(f"imagefolder: images under {src} are {h}x{w} (height x width), not square; quarter-turn "
                        f"rotation needs square images: crop or resize them first")
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    return x, torch.tensor(labels, dtype=torch.int64), classes


def check_present(cfg: TrialConfig) -> None:
    """Raise a DataError when this machine lacks cfg's data: a Ray node's look before a sweep. Finding a source
    checks folders and files; CIFAR-10's batches are only downloaded when read, so they are looked for here:
    a node without them would download them in every trial that lands on it, or fail each one offline."""
    SOURCES[cfg.dataset](cfg)
    root = Path(cfg.data_dir).expanduser()
    if cfg.dataset == "cifar10" and not (root / CIFAR10_BATCHES).is_dir():
        raise DataError(f"CIFAR-10 is not in {root / CIFAR10_BATCHES} on this machine; put it at that path on "
                        f"every node (or data_dir= on the shared filesystem), or use the offline copy: "
                        f"{CIFAR_JPEG_HINT}")


# dataset -> (cfg -> (signature of the source's files, a function that reads the whole splits))
SOURCES = {"cifar10": _cifar10_source, "fashion-mnist": _fashion_mnist_source, "imagefolder": _imagefolder_source}

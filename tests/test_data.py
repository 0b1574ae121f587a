"""Data: real Fashion-MNIST, image folders (dirs and zips), subsets, batched augmentation and rotation."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest
import torch
from conftest import tiny
from PIL import Image

from ablation.errors import ConfigError
from ablation.trial import data as D
from ablation.trial import sources as S


def test_fashion_mnist_is_real_padded_and_three_channel():
    d = D.load_data(tiny(train_subset=0, test_subset=0))
    assert d.train.x.shape == (60000, 3, 32, 32) and d.test.x.shape == (10000, 3, 32, 32)
    assert d.train.x.dtype == torch.uint8
    assert torch.equal(torch.bincount(d.train.y), torch.full((10,), 6000))
    assert d.train.x[:, :, :2].max() == 0 and d.train.x[:, :, -2:].max() == 0  # zero padding rows
    assert torch.equal(d.train.x[:, 0], d.train.x[:, 2])  # grey repeated
    assert abs(d.mean[0] - 0.2860 * 28 * 28 / (32 * 32)) < 0.002 and len(d.fingerprint) == 16  # known mean, padded


@pytest.mark.parametrize("n", [100, 257, 1000])
def test_stratified_subset_counts_and_seed(fashion, n):
    labels = D.load_data(tiny(train_subset=0)).train.y
    idx = D.stratified_subset(labels, n, seed=3)
    counts = torch.bincount(labels[idx], minlength=10)
    assert len(idx) == n == len(set(idx.tolist()))
    assert counts.max() - counts.min() <= 1
    assert torch.equal(idx, D.stratified_subset(labels, n, seed=3))
    assert not torch.equal(idx, D.stratified_subset(labels, n, seed=4))


def test_labels_per_class_gives_exact_counts():
    d = D.load_data(tiny(stage="finetune", labels_per_class=20, train_subset=0))
    assert torch.equal(torch.bincount(d.train.y, minlength=10), torch.full((10,), 20))


def test_labels_per_class_above_dataset_is_a_config_error():
    with pytest.raises(ConfigError, match="labels_per_class=7000 exceeds the 6000"):
        D.load_data(tiny(stage="finetune", labels_per_class=7000, train_subset=0))


@pytest.mark.parametrize("mode", ["random1", "all4"])
def test_rotating_back_by_the_label_restores_the_image(fashion, mode):
    x = fashion.train.x[:64]
    xr, k = D.rotation_batch(x, mode, torch.Generator().manual_seed(0))
    src = x.repeat_interleave(4, 0) if mode == "all4" else x
    assert len(xr) == len(k) == len(src)
    assert set(k.tolist()) == {0, 1, 2, 3}
    for img, rotated, turns in zip(src, xr, k.tolist()):
        assert torch.equal(torch.rot90(rotated, -turns, dims=(-2, -1)), img)
        if turns == 1:  # counter-clockwise: the top row becomes the left column, read bottom-up
            assert torch.equal(rotated[:, :, 0].flip(-1), img[:, 0, :])


def test_augment_is_a_seeded_shifted_crop_or_flip(fashion):
    x = fashion.train.x[:32]
    a = D.augment(x, torch.Generator().manual_seed(1))
    b = D.augment(x, torch.Generator().manual_seed(1))
    assert a.dtype == torch.uint8 and a.shape == x.shape and torch.equal(a, b)
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    for img, src in zip(a, padded):  # every output is some 32x32 window of the padded image, maybe flipped
        windows = src.unfold(1, 32, 1).unfold(2, 32, 1).permute(1, 2, 0, 3, 4).reshape(-1, 3, 32, 32)
        match = (windows == img).flatten(1).all(1) | (windows.flip(-1) == img).flatten(1).all(1)
        assert match.any()


def _write_tree(root, x, y, classes, as_zip):
    for split in ("train", "test"):
        for i, (img, label) in enumerate(zip(x, y)):
            path = root / split / classes[label] / f"{i:04d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img.permute(1, 2, 0).numpy()).save(path)
        if as_zip:
            with zipfile.ZipFile(root / f"{split}.zip", "w") as zf:
                for p in sorted((root / split).rglob("*.png")):
                    zf.write(p, p.relative_to(root).as_posix())


@pytest.mark.parametrize("as_zip", [False, True])
def test_imagefolder_reads_folders_and_zips_and_caches(tmp_path, fashion, as_zip):
    x, y = fashion.train.x[:40], fashion.train.y[:40]
    names = [f"class{i}" for i in range(10)]
    src = tmp_path / "tree"
    _write_tree(src, x, y, names, as_zip)
    if as_zip:
        import shutil

        for split in ("train", "test"):
            shutil.rmtree(src / split)
    cfg = tiny(dataset="imagefolder", data_dir=str(src), cache_dir=str(tmp_path / "cache"), train_subset=0,
               test_subset=0)
    d = D.load_data(cfg)
    order = np.lexsort((np.arange(40), [names[i] for i in y.tolist()]))  # sorted by class, then file
    assert d.classes == sorted(set(names[i] for i in y.tolist()))
    assert torch.equal(d.train.x, x[torch.from_numpy(order)])  # PNG is lossless: the very pixels
    assert [d.classes[i] for i in d.train.y.tolist()] == [names[y[i]] for i in order]
    assert len(list((tmp_path / "cache").glob("imagefolder-*.pt"))) == 1
    again = D.load_data(cfg)
    assert torch.equal(again.train.x, d.train.x) and again.fingerprint == d.fingerprint


def test_missing_imagefolder_says_what_to_do(tmp_path):
    with pytest.raises(S.DataError, match="data_dir= must hold train"):
        D.load_data(tiny(dataset="imagefolder", data_dir=str(tmp_path)))


def test_a_source_is_read_once_per_process_until_its_files_change(tmp_path, monkeypatch):
    """Workers run trial after trial: the splits are read, hashed and measured once, and read again only when
    a file of the source changed (names, sizes, mtimes), so a changed copy is never served from memory."""
    import os
    import shutil

    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
                 "t10k-labels-idx1-ubyte.gz"):
        shutil.copy(S.FASHION_MNIST_SYSTEM_DIR / name, tmp_path / name)
    monkeypatch.setattr(S, "FASHION_MNIST_SYSTEM_DIR", tmp_path)
    reads = []
    real = S._read_idx
    monkeypatch.setattr(S, "_read_idx", lambda path: reads.append(path.name) or real(path))
    a = D.load_data(tiny(train_subset=100))
    b = D.load_data(tiny(train_subset=300, seed=4))
    assert len(reads) == 4 and a.fingerprint == b.fingerprint and len(b.train.y) == 300
    os.utime(tmp_path / "t10k-labels-idx1-ubyte.gz", ns=(1, 1))
    assert D.load_data(tiny()).fingerprint == a.fingerprint and len(reads) == 8


def test_channel_stats_match_the_float_computation():
    x = torch.randint(0, 256, (50, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    mean, std = D.channel_stats(x)
    f = x.double() / 255
    assert mean == tuple(round(v, 6) for v in f.mean(dim=(0, 2, 3)).tolist())
    assert std == pytest.approx(f.std(dim=(0, 2, 3), unbiased=False).tolist(), abs=2e-6)


def test_a_validation_split_is_held_out_stratified_and_the_same_for_every_seed_and_subset():
    full = D.load_data(tiny(train_subset=0, test_subset=0))
    a = D.load_data(tiny(train_subset=0, val_split=500, seed=0))
    b = D.load_data(tiny(train_subset=300, val_split=500, seed=7, stage="finetune", init="random"))
    assert torch.equal(a.val.x, b.val.x) and torch.equal(a.val.y, b.val.y)  # same images whatever else varies
    assert torch.equal(torch.bincount(a.val.y), torch.full((10,), 50))  # stratified
    assert len(a.train.y) == 60000 - 500 and len(b.train.y) == 300 and a.fingerprint == full.fingerprint
    held, kept = D.validation_split(full.train.y, 500, 0)
    assert not set(held.tolist()) & set(kept.tolist()) and len(held) + len(kept) == 60000
    assert torch.equal(a.val.x, full.train.x[held]) and torch.equal(a.train.x, full.train.x[kept])
    assert D.load_data(tiny(val_split=0)).val is None


def test_a_validation_split_as_large_as_the_training_split_is_refused():
    with pytest.raises(ConfigError, match="val_split=60000 leaves no training images"):
        D.load_data(tiny(train_subset=0, val_split=60000))
    with pytest.raises(ConfigError, match="train_subset=59800 exceeds the 59500 training images"):
        D.load_data(tiny(train_subset=59800, val_split=500))


def _shaped(classes, n_train, n_test, side) -> D.Data:
    def split(n):  # the shapes describe() reads, without 150 MB of pixels
        return S.Split(torch.zeros(1, 3, side, side, dtype=torch.uint8).expand(n, -1, -1, -1),
                       torch.zeros(n, dtype=torch.int64))
    return D.Data(split(n_train), split(n_test), list(classes), (0.5,) * 3, (0.25,) * 3, "f" * 16)


def test_an_image_folder_is_cifar10_only_with_its_classes_sizes_and_image_shape():
    """What lets the report put the JPEG copy's cells beside the report's CIFAR-10 numbers, and nothing else."""
    cifar = _shaped(D.CIFAR10_CLASSES, 50_000, 10_000, 32)
    assert D.describe("imagefolder", cifar) == {
        "fingerprint": "f" * 16, "train_images": 50_000, "test_images": 10_000, "classes": D.CIFAR10_CLASSES,
        "image_shape": [3, 32, 32], "task": "cifar10"}
    for other in (_shaped(D.CIFAR10_CLASSES, 5_000, 10_000, 32), _shaped(D.CIFAR10_CLASSES, 50_000, 10_000, 28),
                  _shaped([f"c{i}" for i in range(10)], 50_000, 10_000, 32)):
        assert D.describe("imagefolder", other)["task"] == "imagefolder"
    assert D.describe("cifar10", _shaped(D.CIFAR10_CLASSES, 500, 100, 32))["task"] == "cifar10"


@pytest.mark.slow
def test_the_loader_reads_the_cifar10_jpeg_copy_as_cifar10_with_the_readmes_fingerprint(tmp_path, monkeypatch):
    """The real copy through the loader (decoded into a fresh cache, ~20-40 s): the task, sizes and data
    fingerprint that the study's manifest and the README state."""
    from test_bad_input_round2 import CIFAR_JPEG

    root = next((d for d in CIFAR_JPEG if (d / "train.zip").exists()), None)
    if root is None:
        pytest.skip("the CIFAR-10 JPEG copy is not on this machine")
    monkeypatch.setattr(D, "_FULL", {})  # do not keep 180 MB of pixels for the rest of the test run
    cfg = tiny(dataset="imagefolder", data_dir=str(root), cache_dir=str(tmp_path / "cache"))
    assert D.describe("imagefolder", D.full_data(cfg)) == {
        "fingerprint": "eec90e10bd2f5438", "train_images": 50_000, "test_images": 10_000,
        "classes": D.CIFAR10_CLASSES, "image_shape": [3, 32, 32], "task": "cifar10"}


def test_a_node_without_the_cifar10_batches_says_so_before_the_sweep(tmp_path):
    """The cluster preflight (nodes._look, run on every Ray node) finds CIFAR-10 missing on a node, where
    reading would download it per trial (or fail offline), and passes a node that has the batches."""
    from ablation.driver.nodes import _look

    probe = tmp_path / "probe"
    probe.write_text("driver")
    cfg = tiny(dataset="cifar10", data_dir=str(tmp_path / "data")).to_dict()
    (problem,) = _look(str(probe), [cfg])
    assert problem.startswith(f"CIFAR-10 is not in {tmp_path / 'data' / 'cifar-10-batches-py'} on this machine")
    (tmp_path / "data" / "cifar-10-batches-py").mkdir(parents=True)
    (tmp_path / "data" / "cifar-10-batches-py" / "data_batch_1").write_bytes(b"x")
    assert _look(str(probe), [cfg]) == []

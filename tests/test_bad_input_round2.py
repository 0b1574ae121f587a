"""Bad input, round 2 (issue 14): a stale image-folder cache, a bench that hung, NaN that passed as valid,
output paths checked too late, broken data files, silent conflicts between keys, and `--version`.

Each test fails on the code before the fix. Image folders are built from a few dozen real JPEGs (the
CIFAR-10 JPEG copy's train.zip, or real Fashion-MNIST images encoded as JPEG where that copy is absent).
"""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from conftest import tiny
from helpers import read_only_dir
from PIL import Image

from ablation.cli import main
from ablation.errors import ConfigError
from ablation.trial import data as D
from ablation.trial import sources as S
from ablation.trial.config import TrialConfig

# The CIFAR-10 JPEG copy: $CIFAR10_JPEG, or shared/data/cifar10-jpeg beside the repository (the tests that
# need it skip without it)
CIFAR_JPEG = [Path(os.environ.get("CIFAR10_JPEG", "/nonexistent")),
              Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg"]
CLASSES = ("cat", "dog", "ship")


@pytest.fixture(scope="module")
def jpegs() -> dict[str, list[bytes]]:
    """Real 32x32 JPEGs, 14 per class: CIFAR-10's own files if the JPEG copy is here, else real Fashion-MNIST
    images encoded as JPEG."""
    src = next((d / "train.zip" for d in CIFAR_JPEG if (d / "train.zip").exists()), None)
    if src is not None:
        with zipfile.ZipFile(src) as zf:
            names = sorted(n for n in zf.namelist() if n.endswith(".jpg"))
            return {c: [zf.read(n) for n in [n for n in names if n.split("/")[1] == c][:14]] for c in CLASSES}
    fashion = D.load_data(tiny(train_subset=0, test_subset=0)).train
    out = {}
    for label, c in enumerate(CLASSES):
        out[c] = []
        for img in fashion.x[fashion.y == label][:14]:
            buf = io.BytesIO()
            Image.fromarray(img.permute(1, 2, 0).numpy()).save(buf, "JPEG", quality=90)
            out[c].append(buf.getvalue())
    return out


@pytest.fixture(autouse=True)
def no_training(monkeypatch):
    """Nothing here may reach a training step: input that is refused must be refused before one (and were a
    refusal lost, the test fails at once instead of training a whole run)."""
    import ablation.trial.train

    def refuse(*_):
        raise AssertionError("a training step ran: the bad input was not refused")

    monkeypatch.setattr(ablation.trial.train, "train_step", refuse)


def make_tree(root: Path, jpegs, n_train=8, n_test=4) -> Path:
    for split, picks in (("train", range(n_train)), ("test", range(n_train, n_train + n_test))):
        for c in CLASSES:
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in picks:
                (root / split / c / f"{i:04d}.jpg").write_bytes(jpegs[c][i])
    return root


def decoded(raw: bytes) -> torch.Tensor:
    import numpy as np

    with Image.open(io.BytesIO(raw)) as im:
        return torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1)


def folder_cfg(tree: Path, cache: Path, **over) -> TrialConfig:
    return tiny(**{"dataset": "imagefolder", "data_dir": str(tree), "cache_dir": str(cache), "train_subset": 0,
                   "test_subset": 0, **over})


def run_cli(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def assert_one_line(rc, err, expected):
    assert rc == 2, err
    assert err.count("\n") == 1 and err.startswith("ablation: error: ") and expected in err, err


def assert_train_on_tree_is_one_line(capsys, tree: Path, tmp_path: Path, expected: str) -> None:
    """`ablation train` on the image folder `tree` fails in one line naming the problem, and writes no run dir."""
    out = tmp_path / "run"
    rc, _, err = run_cli(capsys, "train", "dataset=imagefolder", f"data_dir={tree}", f"cache_dir={tmp_path / 'c'}",
                         "device=cpu", "--out", str(out))
    assert_one_line(rc, err, expected)
    assert not out.exists()


# ---------------------------------------------------------------------------------------------- 1. stale cache


def test_a_replaced_image_is_decoded_anew_with_a_new_fingerprint(tmp_path, jpegs, capsys):
    tree, cache = make_tree(tmp_path / "tree", jpegs), tmp_path / "cache"
    cfg = folder_cfg(tree, cache)
    first = D.load_data(cfg)
    assert "first use" in capsys.readouterr().out
    target = tree / "train" / "dog" / "0003.jpg"
    st = target.stat()
    target.write_bytes(jpegs["dog"][13])  # another real image under the same name ...
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))  # ... with the old mtime kept, as cp -p would
    again = D.load_data(cfg)
    line = capsys.readouterr().out
    assert line.count("\n") == 1 and "re-decoding" in line and "1 changed (e.g. train/dog/0003.jpg)" in line, line
    assert again.fingerprint != first.fingerprint
    i = 8 + 3  # sorted by class, then file: cat 0-7, dog 0-7
    assert torch.equal(again.train.x[i], decoded(jpegs["dog"][13]))
    assert not torch.equal(first.train.x[i], again.train.x[i])
    assert len(list(cache.glob("imagefolder-*.pt"))) == 1  # the stale cache is gone, not left to fill the disk
    third = D.load_data(cfg)  # unchanged now: the new cache is used, silently
    assert capsys.readouterr().out == "" and third.fingerprint == again.fingerprint


def test_an_added_image_is_decoded_anew(tmp_path, jpegs, capsys):
    tree, cache = make_tree(tmp_path / "tree", jpegs), tmp_path / "cache"
    cfg = folder_cfg(tree, cache)
    first = D.load_data(cfg)
    (tree / "train" / "ship" / "0099.jpg").write_bytes(jpegs["ship"][13])
    capsys.readouterr()
    again = D.load_data(cfg)
    assert "1 added (e.g. train/ship/0099.jpg)" in capsys.readouterr().out
    assert len(again.train.y) == len(first.train.y) + 1 and again.fingerprint != first.fingerprint


# ---------------------------------------------------------------------------------------------- 2. bench hang


def test_bench_with_a_batch_larger_than_the_data_is_one_line_not_a_hang(tmp_path, jpegs):
    tree = make_tree(tmp_path / "tree", jpegs, n_train=10, n_test=2)  # 30 training images
    env = {**os.environ, "HOME": str(tmp_path / "home")}  # bench's cache goes to ~/.cache/ablation
    try:
        proc = subprocess.run([sys.executable, "-m", "ablation.cli", "bench", "--device", "cpu", "--data",
                               "imagefolder", "--data-dir", str(tree), "--steps", "2", "--warmup", "0"],
                              capture_output=True, text=True, timeout=120, env=env)
    except subprocess.TimeoutExpired:
        pytest.fail("ablation bench hung on a batch larger than its training set")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "--batch-size 128 needs 128 training images per step but --data " \
        "imagefolder has 30; use --batch-size 30 or less" in proc.stderr, proc.stderr


def test_an_endless_batch_source_that_is_empty_stops():
    from ablation.errors import UserError
    from ablation.trial.bench import forever

    with pytest.raises(UserError, match="gives no batch"):
        next(forever(lambda: []))


# ---------------------------------------------------------------------------------------------- 3. NaN, inf


FLOAT_KEYS = [k for k, f in TrialConfig.fields().items() if type(f.default) is float]


def test_the_float_keys_are_known():
    assert set(FLOAT_KEYS) == {"lr", "momentum", "weight_decay", "lr_gamma", "label_smoothing"}


@pytest.mark.parametrize("key", FLOAT_KEYS)
@pytest.mark.parametrize("value", ["nan", "NaN", "inf", "-inf", "1e999", "-1e999"])
def test_non_finite_floats_are_refused(tmp_path, capsys, key, value):
    out = tmp_path / "run"
    rc, _, err = run_cli(capsys, "train", f"{key}={value}", "--out", str(out))
    assert_one_line(rc, err, f"train: {key}=")
    assert "is not a finite number; use a number like" in err
    assert not out.exists()


@pytest.mark.parametrize("text", ["lr: .nan", "lr: .inf", "momentum: .NaN", "lr: 1e999", "weight_decay: .inf"])
def test_non_finite_floats_in_yaml_are_refused(tmp_path, capsys, text):
    (tmp_path / "c.yaml").write_text(text + "\n")
    rc, _, err = run_cli(capsys, "train", "--config", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "run"))
    assert_one_line(rc, err, "is not a finite number")


def test_nan_through_the_cli_subprocess(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "ablation.cli", "train", "lr=nan", "--out", str(tmp_path / "r")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr == \
        "ablation: error: train: lr=nan is not a finite number; use a number like 0.01\n"


# ---------------------------------------------------------------------------------------------- 4. output paths


def test_train_out_below_a_regular_file_is_refused_before_loading_data(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    out = tmp_path / "file" / "run"
    # a dataset that is missing: were data loaded first, the message would be about the data
    rc, _, err = run_cli(capsys, "train", "dataset=imagefolder", f"data_dir={tmp_path / 'none'}", "--out", str(out))
    assert_one_line(rc, err, f"--out {out}: {tmp_path / 'file'} is a file, not a directory; choose another --out")


def test_sweep_storage_that_is_a_file_is_refused_before_ray_starts(tmp_path, capsys, monkeypatch):
    import ray

    monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("Ray started before --storage was checked"))
    (tmp_path / "file").write_text("x")
    spec = Path(__file__).resolve().parents[1] / "experiments" / "demo.yaml"
    rc, _, err = run_cli(capsys, "sweep", str(spec), "--storage", str(tmp_path / "file"))
    assert_one_line(rc, err, f"--storage {tmp_path / 'file'}: {tmp_path / 'file'} is a file, not a directory")
    assert (tmp_path / "file").read_text() == "x"


def test_train_out_that_is_a_file_is_refused(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    rc, _, err = run_cli(capsys, "train", "--out", str(tmp_path / "file"))
    assert_one_line(rc, err, "is a file, not a directory")


def test_train_out_in_a_read_only_dir_is_refused_before_loading_data(tmp_path):
    ro = tmp_path / "ro"
    prefix = read_only_dir(ro)
    if prefix is None:
        pytest.skip("no way to make a read-only directory here (root without user namespaces)")
    proc = subprocess.run([*prefix, sys.executable, "-m", "ablation.cli", "train", "dataset=imagefolder",
                           f"data_dir={tmp_path / 'none'}", "--out", str(ro / "run")],
                          capture_output=True, text=True, timeout=120)
    ro.chmod(0o755)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert f"--out {ro / 'run'}: {ro} is not writable (read-only file system or no permission)" in proc.stderr
    assert list(ro.iterdir()) == []


@pytest.mark.parametrize("where, expected", [
    ("missing/b.json", "missing does not exist; create the folder first or choose another path"),
    ("file/b.json", "file is a file, not a directory"),
    ("dir", "dir is a directory; give a file name"),
])
def test_bench_json_that_cannot_be_written_is_refused_before_measuring(tmp_path, capsys, where, expected):
    (tmp_path / "file").write_text("x")
    (tmp_path / "dir").mkdir()
    rc, out, err = run_cli(capsys, "bench", "--device", "cpu", "--json", str(tmp_path / where))
    assert_one_line(rc, err, expected)
    assert out == ""  # not even the first line of a measurement
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir", "file"]


def test_an_unwritable_cache_dir_is_refused_before_decoding(tmp_path, jpegs, capsys):
    tree = make_tree(tmp_path / "tree", jpegs)
    (tmp_path / "file").write_text("x")
    with pytest.raises(S.DataError, match=r"cache_dir=.*file/c: .*file is a file, not a directory; set cache_dir= "
                                          r"to a writable folder"):
        D.load_data(folder_cfg(tree, tmp_path / "file" / "c"))
    assert "decoding" not in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------- 5. broken files


def zip_tree(tree: Path) -> None:
    for split in ("train", "test"):
        with zipfile.ZipFile(tree / f"{split}.zip", "w", zipfile.ZIP_STORED) as zf:
            for p in sorted((tree / split).rglob("*.jpg")):
                zf.write(p, p.relative_to(tree).as_posix())
        shutil.rmtree(tree / split)


def corrupt_zip(path: Path, how: str) -> None:
    raw = bytearray(path.read_bytes())
    if how == "not a zip":
        path.write_bytes(b"this is not a zip file\n" * 50)
    elif how == "truncated":
        path.write_bytes(bytes(raw[: len(raw) // 2]))
    else:  # bad CRC: one byte of the first member's data flipped (stored, not compressed)
        with zipfile.ZipFile(path) as zf:
            info = zf.infolist()[0]
        at = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra) + 100
        raw[at] ^= 0xFF
        path.write_bytes(bytes(raw))


@pytest.mark.parametrize("how, expected", [
    ("not a zip", "train.zip is not a readable zip (File is not a zip file)"),
    ("truncated", "train.zip is not a readable zip"),
    ("bad crc", "train.zip:train/cat/0000.jpg (Bad CRC-32"),
])
def test_a_broken_zip_is_one_line_naming_it(tmp_path, jpegs, capsys, how, expected):
    tree = make_tree(tmp_path / "tree", jpegs)
    zip_tree(tree)
    corrupt_zip(tree / "train.zip", how)
    assert_train_on_tree_is_one_line(capsys, tree, tmp_path, expected)


@pytest.mark.parametrize("how, expected", [
    ("text", "train/dog/0002.jpg is not a readable image (not an image format PIL knows); remove or replace it"),
    ("truncated", "train/dog/0002.jpg is not a readable image (image file is truncated"),
    ("empty", "train/dog/0002.jpg is not a readable image"),
])
def test_a_file_that_is_not_an_image_is_one_line_naming_it(tmp_path, jpegs, capsys, how, expected):
    tree = make_tree(tmp_path / "tree", jpegs)
    bad = tree / "train" / "dog" / "0002.jpg"
    bad.write_bytes({"text": b"hello, not a jpeg\n", "truncated": jpegs["dog"][2][:-300], "empty": b""}[how])
    assert_train_on_tree_is_one_line(capsys, tree, tmp_path, expected)


def resave(tree: Path, size: tuple[int, int], only: str | None = None) -> None:
    for p in sorted(tree.rglob("*.jpg")):
        if only is None or p.as_posix().endswith(only):
            with Image.open(p) as im:
                im.convert("RGB").resize(size).save(p, "JPEG")


@pytest.mark.parametrize("case, expected", [
    ("not square", "are 32x24 (height x width), not square; quarter-turn rotation needs square images"),
    ("one odd size", "differ in size"),
    ("test size differs", "train images are 32x32 but test images 40x40; resize them to one size"),
])
def test_images_of_the_wrong_shape_are_one_line(tmp_path, jpegs, capsys, case, expected):
    tree = make_tree(tmp_path / "tree", jpegs)
    if case == "not square":
        resave(tree, (24, 32))
    elif case == "one odd size":
        resave(tree, (40, 40), only="train/cat/0001.jpg")
    else:
        resave(tree / "test", (40, 40))
    assert_train_on_tree_is_one_line(capsys, tree, tmp_path, expected)


def test_hidden_files_beside_images_are_skipped(tmp_path, jpegs):
    tree = make_tree(tmp_path / "tree", jpegs)
    (tree / "train" / "cat" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    d = D.load_data(folder_cfg(tree, tmp_path / "c"))
    assert len(d.train.y) == 24


# ---------------------------------------------------------------------------------------------- 6. conflicts


def test_stage_only_keys():
    assert TrialConfig.stage_only_keys() == {"labels_per_class": "finetune", "init": "finetune",
                                             "pretrained_from": "finetune", "freeze": "finetune",
                                             "rotation_mode": "rotation"}


@pytest.mark.parametrize("args, expected", [
    (["stage=rotation", "labels_per_class=5"],
     "labels_per_class applies to stage=finetune only; drop labels_per_class= or set stage=finetune"),
    (["stage=rotation", "init=pretrained"], "init applies to stage=finetune only; drop init= or set stage=finetune"),
    (["stage=rotation", "pretrained_from=/tmp/r"], "pretrained_from applies to stage=finetune only"),
    (["stage=rotation", "freeze=4"], "freeze applies to stage=finetune only; drop freeze= or set stage=finetune"),
    (["stage=finetune", "rotation_mode=all4"],
     "rotation_mode applies to stage=rotation only; drop rotation_mode= or set stage=rotation"),
    (["stage=finetune", "pretrained_from=/tmp/r"], "pretrained_from is read only with init=pretrained"),
    (["stage=finetune", "train_subset=200", "labels_per_class=1000"],
     "train_subset=200 and labels_per_class=1000 both cut the training split"),
])
def test_keys_that_would_be_ignored_are_refused(tmp_path, capsys, args, expected):
    rc, _, err = run_cli(capsys, "train", *args, "--out", str(tmp_path / "run"))
    assert_one_line(rc, err, expected)


def test_a_stage_only_key_at_its_default_is_fine():
    assert TrialConfig.from_dict({"stage": "rotation", "init": "random", "freeze": 0, "labels_per_class": 0})
    assert TrialConfig.from_dict({"stage": "finetune", "rotation_mode": "random1"})


@pytest.mark.parametrize("args, expected", [
    (["train_subset=70000"], "train_subset=70000 exceeds the 60000 training images of fashion-mnist; use at most "
                             "60000 (0 = all of them)"),
    (["test_subset=10001"], "test_subset=10001 exceeds the 10000 test images of fashion-mnist; use at most 10000"),
    # the validation split is what made it too large: said (was "exceeds the 59000 training images")
    (["train_subset=60000", "val_split=1000"], "train_subset=60000 exceeds the 59000 training images left after "
                                               "val_split=1000 of fashion-mnist"),
])
def test_a_subset_larger_than_its_split_is_refused(tmp_path, capsys, args, expected):
    out = tmp_path / "run"
    rc, _, err = run_cli(capsys, "train", "dataset=fashion-mnist", "device=cpu", *args, "--out", str(out))
    assert_one_line(rc, err, expected)
    assert not out.exists()


def test_a_subset_of_an_uneven_folder_has_its_full_size(tmp_path, jpegs):
    labels = torch.tensor([0] * 3 + [1] * 20 + [2] * 20)
    idx = D.stratified_subset(labels, 30, seed=0)
    assert len(idx) == 30 and torch.equal(torch.bincount(labels[idx]), torch.tensor([3, 14, 13]))
    tree = make_tree(tmp_path / "tree", jpegs)
    for p in sorted((tree / "train" / "cat").iterdir())[3:]:
        p.unlink()  # cat 3, dog 8, ship 8
    d = D.load_data(folder_cfg(tree, tmp_path / "c", train_subset=17))  # 6 + 6 + 5 asked, cat has 3
    assert len(d.train.y) == 17 and torch.equal(torch.bincount(d.train.y), torch.tensor([3, 8, 6]))


def test_a_study_preflight_refuses_a_subset_larger_than_its_split():
    with pytest.raises(ConfigError, match="train_subset=70000 exceeds the 60000 training images"):
        D.preflight([tiny(), tiny(train_subset=70000)])


def test_a_corrupt_fashion_mnist_file_is_one_line(tmp_path, monkeypatch):
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
                 "t10k-labels-idx1-ubyte.gz"):
        shutil.copy(S.FASHION_MNIST_SYSTEM_DIR / name, tmp_path / name)
    raw = (tmp_path / "train-images-idx3-ubyte.gz").read_bytes()
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(raw[: len(raw) // 3])
    monkeypatch.setattr(S, "FASHION_MNIST_SYSTEM_DIR", tmp_path)
    with pytest.raises(S.DataError, match="train-images-idx3-ubyte.gz: not a readable gzipped idx file"):
        D.load_data(tiny())


def test_balanced_subsets_are_the_same_as_before():
    """The even split (the only one balanced data ever had) picks exactly the indices it picked before."""
    labels = torch.arange(10).repeat_interleave(50)
    gen = torch.Generator().manual_seed(5)
    before = torch.cat([torch.nonzero(labels == c).flatten()[torch.randperm(50, generator=gen)[:k]]
                        for c, k in zip(range(10), [4] * 3 + [3] * 7)]).sort().values
    assert torch.equal(D.stratified_subset(labels, 33, seed=5), before)


# ---------------------------------------------------------------------------------------------- 7. --version


def test_version_prints_package_and_code_version():
    from ablation import __version__
    from ablation.storage.provenance import code_version

    proc = subprocess.run([sys.executable, "-m", "ablation.cli", "--version"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0 and proc.stdout == f"ablation {__version__} (code {code_version()})\n"


def code_version_of(package_parent: Path) -> str:
    """The code version a process importing the package at package_parent/ablation records."""
    return subprocess.run([sys.executable, "-c", "from ablation.storage.provenance import code_version; "
                           "print(code_version())"], cwd=package_parent, capture_output=True, text=True,
                          timeout=60, check=True).stdout.strip()


def test_a_copy_without_git_records_a_digest_of_its_source_and_an_edit_anywhere_is_dirty(tmp_path):
    """A copy of the tree without .git recorded the bare package version, the same for every copy; and the
    dirty check must cover every folder of the package, not the one provenance.py lives in."""
    from ablation import __version__

    source = Path(__file__).resolve().parents[1] / "ablation"
    plain = tmp_path / "plain"
    shutil.copytree(source, plain / "ablation", ignore=shutil.ignore_patterns("__pycache__"))
    first = code_version_of(plain)
    assert re.fullmatch(rf"{re.escape(__version__)}\+src\.[0-9a-f]{{12}}", first), first
    with open(plain / "ablation" / "trial" / "train.py", "a") as fh:
        fh.write("\n# edited\n")
    assert code_version_of(plain) not in (first, __version__)
    repo = tmp_path / "repo"
    shutil.copytree(source, repo / "ablation", ignore=shutil.ignore_patterns("__pycache__"))
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    for args in (["init", "-q"], ["add", "."], ["commit", "-qm", "x"]):
        subprocess.run(git + args, check=True, capture_output=True)
    assert not code_version_of(repo).endswith(".dirty")
    with open(repo / "ablation" / "trial" / "train.py", "a") as fh:
        fh.write("\n# edited\n")
    assert code_version_of(repo).endswith(".dirty")

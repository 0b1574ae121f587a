"""Bad input to `ablation sweep / status / report`: one line naming the problem and the fix, exit code 2,
and no study directory created or changed."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import write_spec


def ablation(*args):
    return subprocess.run([sys.executable, "-m", "ablation.cli", *args], capture_output=True, text=True, timeout=300)


def snapshot(root):
    return sorted((str(p.relative_to(root)), p.stat().st_mtime_ns) for p in root.rglob("*"))


def assert_one_line_exit_2(result, expected):
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.count("\n") == 1 and expected in result.stderr, result.stderr
    assert result.stderr.startswith("ablation: error: ")


CASES = {
    "unknown key suggests": ({"finetune": {"epoch": 3}}, "unknown key 'epoch' (did you mean 'epochs'?)"),
    "unknown top-level key": ({"seed": [0]}, "'seed' is set by the study's planner; use seeds: [...]"),
    "wrong type": ({"finetune": {"lr": "fast"}}, "lr must be float, got 'fast'"),
    "negative epochs": ({"pretrain": {"epochs": -2}}, "epochs=-2 is out of range (must be >= 1)"),
    "zero epochs": ({"finetune": {"epochs": 0}}, "epochs=0 is out of range"),
    "freeze outside 0-5": ({"freeze": [4, 6]}, "freeze=6 is out of range (must be in [0, 5])"),
    "unknown dataset": ({"dataset": "imagenet"}, "dataset='imagenet' is not one of cifar10, fashion-mnist"),
    "gpu above 1": ({"resources": {"cpu": 1, "gpu": 1.5}}, "resources.gpu=1.5 must be a fraction of one GPU"),
    "gpu below 0": ({"resources": {"cpu": 1, "gpu": -0.25}}, "resources.gpu=-0.25 must be a fraction"),
    "name with separator": ({"name": "a/b"}, "name must be a plain directory name (no path separator)"),
    "labels per class above dataset": ({"labels_per_class": [100, 7000], "train_subset": 0},
                                       "labels_per_class=7000 exceeds the 6000 images per class"),
    "dataset missing offline": ({"dataset": "imagefolder", "data_dir": "/nonexistent/cifar"},
                                "data_dir= must hold train/<class>/* and test/<class>/*"),
    "unknown init": ({"init": ["pretrained", "imagenet"]}, "init='imagenet' is not one of random, pretrained"),
    # where files are is no axis: cache_dir's two values were one trial; data_dir's was Tune's "Trial dirname
    # must not contain /" traceback after the study directory was created
    "cache_dir as an axis": ({"axes": {"cache_dir": ["a", "b"]}}, "cache_dir says where files are, not what a "
                                                                  "trial computes, so it cannot be an axis"),
    "data_dir as an axis": ({"dataset": "imagefolder", "axes": {"finetune.data_dir": ["/x/a", "/x/b"]}},
                            "finetune.data_dir says where files are"),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_bad_spec_is_refused_before_anything_is_written(tmp_path, case, capfd):
    """In this process (the data cases load torch: seconds each in a fresh one); what reaches the stderr file
    descriptor is checked, as from a subprocess. The other tests here run the command in a process of its own."""
    from ablation.cli import main

    over, expected = CASES[case]
    spec = write_spec(tmp_path / "s.yaml", **over)
    storage = tmp_path / "studies"
    capfd.readouterr()
    code = main(["sweep", str(spec), "--storage", str(storage)])
    assert_one_line_exit_2(subprocess.CompletedProcess([], code, "", capfd.readouterr().err), expected)
    assert not storage.exists()


def test_malformed_yaml_names_the_line(tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text("name: t\nseeds: [0, 1\nfreeze: [4]\n")
    assert_one_line_exit_2(ablation("sweep", str(spec), "--storage", str(tmp_path / "st")), "malformed YAML at line")
    assert not (tmp_path / "st").exists()


def test_missing_spec_file(tmp_path):
    assert_one_line_exit_2(ablation("sweep", str(tmp_path / "none.yaml")), "cannot read")


def test_a_study_of_the_old_phase_layout_is_refused(tmp_path):
    """Studies written before trials were keyed by their config (phase1/phase2 dirs) are not mixed with new ones."""
    storage = tmp_path / "studies"
    study = storage / "t"
    (study / "phase1").mkdir(parents=True)
    (study / "manifest.json").write_text(json.dumps({"spec_digest": "0" * 16, "trials": []}))
    before = snapshot(study)
    assert_one_line_exit_2(ablation("sweep", str(write_spec(tmp_path / "s.yaml")), "--storage", str(storage)),
                           "was written by an older ablation (phase1/phase2 layout)")
    assert snapshot(study) == before


@pytest.mark.parametrize("command", ["status", "report"])
def test_status_and_report_refuse_a_directory_that_is_not_a_study(tmp_path, command):
    before = snapshot(tmp_path)
    assert_one_line_exit_2(ablation(command, str(tmp_path)), "is not a study directory")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("lock", ["alive here", "another host"])
def test_a_study_with_a_live_driver_is_refused(tmp_path, lock):
    import os

    storage = tmp_path / "studies"
    study = storage / "t"
    study.mkdir(parents=True)
    (study / "driver.pid").write_text(f"{os.getpid()}\n" if lock == "alive here" else "1 gpu-box-7\n")
    before = snapshot(study)
    expected = "is being run by process " + (f"{os.getpid()}" if lock == "alive here" else "1 on gpu-box-7")
    assert_one_line_exit_2(ablation("sweep", str(write_spec(tmp_path / "s.yaml")), "--storage", str(storage)),
                           expected)
    assert snapshot(study) == before


def test_fresh_on_uri_storage_is_refused_without_touching_the_study(tmp_path):
    from ablation.study.spec import load_spec

    study = tmp_path / "bucket" / "t"
    study.mkdir(parents=True)
    old = load_spec(str(write_spec(tmp_path / "old.yaml")))
    (study / "manifest.json").write_text(json.dumps({"spec_digest": old.digest, "trials": []}))
    before = snapshot(study)
    spec = write_spec(tmp_path / "new.yaml", seeds=[0, 1, 2])
    assert_one_line_exit_2(ablation("sweep", str(spec), "--storage", f"file://{tmp_path}/bucket", "--fresh"),
                           "--fresh cannot move a study aside on object storage")
    assert snapshot(study) == before


@pytest.mark.parametrize("command", ["sweep", "status", "report"])
def test_gcs_credentials_that_cannot_be_used_are_one_line_naming_googles_variable(tmp_path, monkeypatch, capfd,
                                                                                 command):
    """pyarrow's GCS client raises a bare ArrowException (no OSError) on a credentials file it cannot open, in a
    paragraph of retry metadata: one line with its cause and Google's variable, nothing copied or written."""
    from ablation.cli import main

    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing.json"))
    monkeypatch.setenv("ABLATION_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    spec = write_spec(tmp_path / "s.yaml")
    args = {"sweep": ["sweep", str(spec), "--storage", "gs://bucket/studies"]}.get(command, [command, "gs://bucket/t"])
    capfd.readouterr()
    code = main(args)
    result = subprocess.CompletedProcess([], code, "", capfd.readouterr().err)
    assert_one_line_exit_2(result, f"(no access token: Cannot open credentials file {tmp_path / 'missing.json'}); "
                                   "check the credentials (GOOGLE_APPLICATION_CREDENTIALS")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.yaml"]


def test_status_of_a_uri_that_holds_no_study(tmp_path):
    assert_one_line_exit_2(ablation("status", f"file://{tmp_path}/nothing"), "is not a study directory")


def a_study(tmp_path):
    """A study directory as the committed demo's manifest describes it (no trial has trained yet)."""
    from pathlib import Path

    study = tmp_path / "studies" / "demo"
    study.mkdir(parents=True)
    manifest = json.loads((Path(__file__).parents[1] / "results" / "demo" / "manifest.json").read_text())
    (study / "manifest.json").write_text(json.dumps(manifest))
    return study, manifest


@pytest.mark.parametrize("damage, expected", [
    (lambda m: json.dumps(m)[:200],
     "manifest.json is damaged: not JSON (Unterminated string starting at: line 1, column"),
    (lambda m: json.dumps({k: v for k, v in m.items() if k != "invocations"}), "its 'invocations' is missing"),
    (lambda m: json.dumps({**m, "data": []}), "its 'data' is not a dict"),
    (lambda m: json.dumps({**m, "trials": {k: {**v, "name": ""} for k, v in m["trials"].items()}}), "has no name"),
], ids=["torn", "no invocations", "data a list", "trial without name"])
@pytest.mark.parametrize("command", ["sweep", "status", "report"])
def test_a_damaged_manifest_is_one_line_that_says_where_and_what_to_do(tmp_path, damage, expected, command, capfd):
    """Was a KeyError in study.begin (no invocations), a parse error without its position, or "no trials" /
    "trained on ," with an empty name. In this process (each a subprocess cost seconds); what reaches the
    stderr file descriptor is checked, as from a subprocess."""
    from ablation.cli import main

    study, manifest = a_study(tmp_path)
    (study / "manifest.json").write_text(damage(manifest))
    before = snapshot(study)
    args = ["sweep", str(write_spec(tmp_path / "demo.yaml", name="demo")), "--storage", str(study.parent)] \
        if command == "sweep" else [command, str(study)]
    capfd.readouterr()
    code = main(args)
    result = subprocess.CompletedProcess(args, code, "", capfd.readouterr().err)
    assert_one_line_exit_2(result, expected)
    assert "restore it from a backup, or start over with `ablation sweep SPEC --fresh`" in result.stderr
    assert snapshot(study) == before


def test_a_report_of_a_read_only_study_is_one_line_and_out_writes_it_elsewhere(tmp_path):
    """Was a PermissionError traceback from mkdtemp, and no way to write the report anywhere else."""
    from helpers import read_only_dir

    study, _ = a_study(tmp_path)
    prefix = read_only_dir(study)
    if prefix is None:
        pytest.skip("no way to make a read-only directory here (root without user namespaces)")
    before = snapshot(study)
    command = [*prefix, sys.executable, "-m", "ablation.cli", "report", str(study)]
    refused = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert_one_line_exit_2(refused, f"cannot write the report into the study: {study} is not writable")
    assert "give --out DIR" in refused.stderr
    written = subprocess.run([*command, "--out", str(tmp_path / "elsewhere")], capture_output=True, text=True,
                             timeout=300)
    study.chmod(0o755)
    assert written.returncode == 0, written.stderr[-3000:]
    assert written.stdout == f"wrote {tmp_path / 'elsewhere' / 'report.md'}\n"
    assert "# Ablation report: demo" in (tmp_path / "elsewhere" / "report.md").read_text()
    assert (tmp_path / "elsewhere" / "tables" / "trials.csv").exists()
    assert snapshot(study) == before

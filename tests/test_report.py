"""`ablation report` on a real tiny study (tests/fixtures/study_tiny: manifest + trial records of
`ablation sweep tests/fixtures/tiny.yaml`, checkpoints and Tune logs stripped): the tables hold the numbers
computed here independently from the raw metrics.jsonl lines, figures are written, an unfinished study still
reports, a key the report was never taught keeps its cells apart, and a directory that is not a study is
one line and exit code 2.
"""

from __future__ import annotations

import csv
import json
import math
import re
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from scipy import stats

FIXTURE = Path(__file__).parent / "fixtures" / "study_tiny"


def raw_trials(study: Path) -> list[dict]:
    """Per planned trial: config and its raw epochs (last line per epoch wins, torn lines skipped)."""
    manifest = json.loads((study / "manifest.json").read_text())
    out = []
    for key in manifest["invocations"][-1]["planned"]:
        t = {**manifest["trials"][key], "id": manifest["trials"][key]["name"]}
        path = study / "trials" / t["dir"] / "metrics.jsonl"
        by_epoch = {}
        for line in (path.read_text().splitlines() if path.exists() else []):
            try:
                row = json.loads(line)
            except ValueError:
                continue
            by_epoch[row["epoch"]] = row
        out.append({**t["config"], "id": t["id"], "rows": [by_epoch[e] for e in sorted(by_epoch)]})
    return out


def finished(trials, **where):
    return [t for t in trials if len(t["rows"]) >= t["epochs"] and all(t[k] == v for k, v in where.items())]


def best(t):
    return max(r["test_acc"] for r in t["rows"]) * 100


def final(t):
    return t["rows"][-1]["test_acc"] * 100


def read_csv(path: Path) -> list[dict]:
    with open(path) as fh:
        return list(csv.DictReader(fh))


def protocol_copy(study: Path) -> Path:
    """A copy of the fixture marked as the report's protocol: it trained at batch 64 (fast), and a cell off the
    protocol gets none of the report's numbers (reference.comparable), which these tests compare with."""
    shutil.copytree(FIXTURE, study)
    manifest = json.loads((study / "manifest.json").read_text())
    for t in manifest["trials"].values():
        t["config"]["batch_size"] = 128
    (study / "manifest.json").write_text(json.dumps(manifest))
    return study


def t_ci(values):
    n, m = len(values), statistics.mean(values)
    half = stats.t.ppf(0.975, n - 1) * statistics.stdev(values) / math.sqrt(n)
    return m, m - half, m + half


def close(a, b):
    return math.isclose(float(a), b, rel_tol=1e-9, abs_tol=1e-9)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    from ablation.report import write_report

    study = tmp_path_factory.mktemp("s") / "tiny"
    protocol_copy(study)
    assert write_report(study) == study / "report" / "report.md"
    return study


@pytest.mark.parametrize("module, absent", [
    ("ablation.report.build", {"torch", "ray"}),  # a report is written where the study's files are, no GPU stack
    ("ablation.report.reference", {"torch", "ray", "pandas", "scipy", "matplotlib", "seaborn"}),  # report_protocol.sh
])
def test_import_does_not_load_what_its_users_may_lack(module, absent):
    code = f"import sys, {module}; print(sorted({{m.split('.')[0] for m in sys.modules}} & set({sorted(absent)!r})))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_tidy_frames(study):
    raw = raw_trials(study)
    tables = study / "report" / "tables"
    for name in ("epochs", "trials"):
        assert (tables / f"{name}.csv").exists() and (tables / f"{name}.parquet").stat().st_size > 0
    epochs = read_csv(tables / "epochs.csv")
    assert len(epochs) == sum(len(t["rows"]) for t in raw)
    trials = {r["trial"]: r for r in read_csv(tables / "trials.csv")}
    assert set(trials) == {t["id"] for t in raw}
    for t in raw:
        row = trials[t["id"]]
        assert row["finished"] == "True" and int(row["epochs_done"]) == t["epochs"] == int(row["epochs"])
        assert close(row["best_test_acc"], best(t) / 100) and close(row["final_test_acc"], final(t) / 100)
        assert close(row["lowest_test_loss"], min(r["test_loss"] for r in t["rows"]))
        assert close(row["wall_time_s"], sum(r["epoch_time_s"] for r in t["rows"]))


@pytest.mark.parametrize("table, freeze, report", [("finetune_partial", 4, {"pretrained": 49.44, "random": 45.82}),
                                                   ("finetune_full", 0, {"pretrained": 67.94, "random": 77.10})])
def test_finetune_tables_match_raw_results(study, table, freeze, report):
    raw = raw_trials(study)
    rows = {r["init"]: r for r in read_csv(study / "report" / "tables" / f"{table}.csv")}
    assert set(rows) == {"pretrained", "random"}
    for init, row in rows.items():
        cell = finished(raw, stage="finetune", freeze=freeze, init=init)
        assert int(row["n seeds"]) == len(cell) == 2 and row["task"] == "fashion-mnist"
        for label, value in (("best acc (%)", best), ("final acc (%)", final)):
            mean, low, high = t_ci([value(t) for t in cell])
            assert close(row[f"{label} mean"], mean)
            assert close(row[f"{label} CI low"], low) and close(row[f"{label} CI high"], high)
        assert float(row["best acc (%) report"]) == report[init]
        outside = not low_high_contains(row, "best acc (%)", report[init])
        assert row["best acc (%) report outside CI"] == str(outside)
    md = (study / "report" / "tables" / f"{table}.md").read_text()
    assert "task fashion-mnist" in md and "best acc (%)" in md and "final acc (%)" in md
    assert (study / "report" / "tables" / f"{table}.tex").read_text().startswith(r"\begin{table}")


def low_high_contains(row, label, value):
    return float(row[f"{label} CI low"]) <= value <= float(row[f"{label} CI high"])


def test_rotation_table(study):
    cell = finished(raw_trials(study), stage="rotation")
    (row,) = read_csv(study / "report" / "tables" / "rotation.csv")
    assert int(row["n seeds"]) == len(cell) == 2
    assert close(row["best acc (%) mean"], statistics.mean(best(t) for t in cell))
    assert close(row["lowest loss mean"], statistics.mean(min(r["test_loss"] for r in t["rows"]) for t in cell))
    assert float(row["best acc (%) report"]) == 77.93 and float(row["lowest loss report"]) == 0.529


def test_paired_difference_matches_scipy(study):
    raw = raw_trials(study)
    rows = {int(r["freeze"]): r for r in read_csv(study / "report" / "tables" / "pretraining_effect.csv")}
    assert set(rows) == {0, 4}
    for freeze, row in rows.items():
        by_seed = {init: {t["seed"]: best(t) for t in finished(raw, stage="finetune", freeze=freeze, init=init)}
                   for init in ("pretrained", "random")}
        seeds = sorted(by_seed["pretrained"])
        pre, rnd = [by_seed["pretrained"][s] for s in seeds], [by_seed["random"][s] for s in seeds]
        res = stats.ttest_rel(pre, rnd)
        diffs = [a - b for a, b in zip(pre, rnd)]
        mean, low, high = t_ci(diffs)
        assert int(row["n pairs"]) == int(row["best diff (pts) n"]) == len(seeds) == 2
        # where one more seed pair would fall (what the report's single pair is compared with): sqrt(n+1) x the CI
        half = stats.t.ppf(0.975, len(diffs) - 1) * statistics.stdev(diffs) * math.sqrt(1 + 1 / len(diffs))
        assert close(row["best diff (pts) PI low"], mean - half) and close(row["best diff (pts) PI high"], mean + half)
        report = float(row["best diff (pts) report"])
        assert row["best diff (pts) report outside PI"] == str(not mean - half <= report <= mean + half)
        assert row["best diff (pts) report outside CI"] == str(not low <= report <= high)
        assert close(row["best diff (pts) mean"], mean) and close(row["best diff (pts) CI low"], low)
        assert close(row["best diff (pts) CI high"], high)
        assert close(row["best diff (pts) t"], res.statistic) and close(row["best diff (pts) p"], res.pvalue)
    assert float(rows[4]["best diff (pts) report"]) == pytest.approx(49.44 - 45.82)
    assert float(rows[0]["best diff (pts) report"]) == pytest.approx(67.94 - 77.10)


def test_figures_written(study):
    figures = study / "report" / "figures"
    for name in ("learning_curves", "rotation_curve", "accuracy_by_freeze", "pretraining_gap"):
        assert (figures / f"{name}.png").stat().st_size > 20_000
        assert (figures / f"{name}.svg").read_text().lstrip().startswith("<?xml")
    assert not list(figures.glob("accuracy_by_labels*"))  # one label count: no such figure


def test_every_panel_of_a_figure_shows_all_of_its_curves():
    """Panels share y: a range fixed while the first panel was drawn cut off the others (freeze 0 at ~80% went
    off the top of a range drawn for freeze 4 at ~60%)."""
    from ablation.report.figures import _clip_y, learning_curves
    from ablation.report.frames import load_study

    _, epochs, trials = load_study(FIXTURE)
    full = epochs["freeze"] == 0
    epochs.loc[full, "test_acc"] = (epochs.loc[full, "test_acc"] + 0.7).clip(upper=1)  # far above freeze 4
    fig = learning_curves(epochs, trials, None)
    _clip_y(fig)
    panels = [ax for ax in fig.axes if ax.lines]
    assert len(panels) == 2
    for ax in panels:
        low, high = ax.get_ylim()
        for line in ax.lines:
            assert low <= min(line.get_ydata()) and max(line.get_ydata()) <= high, ax.get_title()


def test_report_md(study):
    text = (study / "report" / "report.md").read_text()
    manifest = json.loads((study / "manifest.json").read_text())
    for needle in ("# Ablation report: tiny", "fashion-mnist", manifest["invocations"][0]["code_version"],
                   manifest["data"]["fashion-mnist"], "Trials finished: 10 of 10",
                   "here: fashion-mnist data, not cifar10; 192 training images (train_subset), not all; 128 test "
                   "images (test_subset), not all; 2 fine-tune epochs, not 20. So they are context, not a like-for-like",
                   "Pretraining changes partial fine-tuning (freeze 4)", "paired p = ", "n = 2 seeds"):
        assert needle in text, needle
    from ablation.storage import provenance

    assert f"; this report written by {provenance.code_version()}\n" in text  # its tables' code, beside the training's
    fixed = {line.split(":")[0]: line for line in text.splitlines() if line.startswith("- Fixed, ")}
    assert set(fixed) == {"- Fixed, rotation pretraining", "- Fixed, fine-tuning"}  # the playbook: report them
    assert ", epochs 2, batch_size 128, lr 0.01, momentum 0.9," in fixed["- Fixed, fine-tuning"]
    assert not re.search(r"\b(freeze|init|seed|rotation_mode) ", fixed["- Fixed, fine-tuning"])  # axes; rotation's
    assert "rotation_mode random1" in fixed["- Fixed, rotation pretraining"]
    assert not re.search(r"\b(freeze|init|labels/class) ", fixed["- Fixed, rotation pretraining"])  # fine-tuning's
    assert re.search(r"partial fine-tuning \(freeze 4\) best-epoch .*The report's best-epoch difference, \+3\.62 points, "
                     r"lies (in|out)side the 95% CI of our mean.{0,30} the 95% prediction interval of one seed pair of "
                     r"ours \[[-+.\d]+, [-+.\d]+\]", text)
    assert re.search(r"the report's 77\.93 % \(one run\) lies (in|out)side the 95% CI of our mean.{0,30} the 95% "
                     r"prediction interval of one run of ours \[[.\d]+, [.\d]+\]", text)
    for link in text.split("](")[1:]:
        assert (study / "report" / link.split(")")[0]).exists()
    assert not list((study / "report").rglob(".*.tmp*"))  # atomic writes leave no temp files


def trial_path(study: Path, name: str) -> Path:
    manifest = json.loads((study / "manifest.json").read_text())
    (entry,) = [t for t in manifest["trials"].values() if t["name"] == name]
    return study / "trials" / entry["dir"] / "metrics.jsonl"


def test_unfinished_study_still_reports(tmp_path):
    from ablation.report import write_report
    from ablation.trial.rundir import read_rows

    study = tmp_path / "tiny"
    protocol_copy(study)
    trial_path(study, "ft-pretrained-f4-s1").unlink()
    cut = trial_path(study, "ft-random-f0-s0")
    cut.write_text(cut.read_text().splitlines()[0] + '\n{"epoch": 2, "test_a')  # 1 epoch, then a torn line
    rot = trial_path(study, "rot-s0")  # an epoch written twice: the last line wins
    lines = rot.read_text().splitlines()
    rot.write_text("\n".join(lines + [json.dumps({**json.loads(lines[1]), "test_acc": 0.5})]) + "\n")
    assert [r["test_acc"] for r in read_rows(rot.parent)][-1] == 0.5 and len(read_rows(cut.parent)) == 1

    text = write_report(study).read_text()
    assert "Trials finished: 8 of 10" in text and "2 of 10 planned trials are unfinished" in text
    assert "| ft-pretrained-f4-s1 |" in text and "| not started (0/2 epochs) |" in text
    assert "| ft-random-f0-s0 |" in text and "| interrupted (1/2 epochs) |" in text
    tables = study / "report" / "tables"
    partial = {r["init"]: r for r in read_csv(tables / "finetune_partial.csv")}
    assert partial["pretrained"]["n seeds"] == "1" and partial["pretrained"]["planned"] == "2"
    assert partial["pretrained"]["best acc (%) CI low"] == ""  # no interval from one seed
    effect = {int(r["freeze"]): r for r in read_csv(tables / "pretraining_effect.csv")}
    assert effect[4]["n pairs"] == "1" and effect[4]["best diff (pts) p"] == ""
    assert "| pretrained | 1 | 2 |" in (tables / "finetune_partial.md").read_text()
    (rot_row,) = read_csv(tables / "rotation.csv")
    raw = finished(raw_trials(study), stage="rotation")
    assert close(rot_row["best acc (%) mean"], statistics.mean(best(t) for t in raw))
    assert (study / "report" / "figures" / "learning_curves.png").stat().st_size > 20_000


def test_the_trial_table_says_which_code_trained_each_trial_and_what_was_retrained(tmp_path):
    """A study resumed by newer code: each trial lists the versions in its trained.log; a line from before
    versions were logged gets that of the invocation that started last before it ("unrecorded" if none did, or
    if a trial has epochs but no log), and an epoch trained twice counts as retrained."""
    from ablation.report import write_report

    study = tmp_path / "tiny"
    protocol_copy(study)
    old = json.loads((study / "manifest.json").read_text())["invocations"][0]["code_version"]
    log = trial_path(study, "rot-s0").parent / "trained.log"
    log.write_text(log.read_text() + json.dumps({"epoch": 2, "pid": 1, "time": "t", "code": "9.9+gnew"}) + "\n")
    early = trial_path(study, "rot-s1").parent / "trained.log"
    early.write_text(json.dumps({"epoch": 1, "pid": 1, "time": "2026-01-01T00:00:00+00:00"}) + "\n"
                     + early.read_text())  # before the study's first invocation: no version to give it
    (trial_path(study, "ft-random-f0-s0").parent / "trained.log").unlink()  # epochs, but no log of who trained them
    text = write_report(study).read_text()
    trials = {r["trial"]: r for r in read_csv(study / "report" / "tables" / "trials.csv")}
    assert trials["rot-s0"]["code"] == f"{old}, 9.9+gnew" and trials["rot-s0"]["retrained"] == "1"
    assert trials["rot-s1"]["code"] == f"unrecorded, {old}" and trials["rot-s1"]["retrained"] == "1"
    assert trials["ft-random-f4-s0"]["code"] == old and trials["ft-random-f4-s0"]["retrained"] == "0"
    assert trials["ft-random-f0-s0"]["code"] == "unrecorded"
    assert f"| {old}, 9.9+gnew |" in text


def test_report_on_a_non_study_dir_is_one_line_and_exit_2(tmp_path):
    result = subprocess.run([sys.executable, "-m", "ablation.cli", "report", str(tmp_path)], capture_output=True,
                            text=True)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "is not a study directory" in result.stderr, result.stderr
    assert not (tmp_path / "report").exists()


def relabel(study: Path, **values) -> None:
    """Give seed 1's fine-tune trials other config values in the manifest, as if an axis had produced them."""
    manifest = json.loads((study / "manifest.json").read_text())
    for t in manifest["trials"].values():
        if t["config"]["stage"] == "finetune" and t["config"]["seed"] == 1:
            t["config"].update(values)
    (study / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("task, comparable", [("cifar10", True), ("imagefolder", False)])
def test_an_image_folder_copy_of_cifar10_is_compared_with_the_report(tmp_path, task, comparable):
    """The CIFAR-10 JPEG copy is dataset=imagefolder: the sweep records what the copy is (data.describe), and
    the report then puts its cells beside the report's CIFAR-10 numbers; any other image folder stays context."""
    from ablation.report import write_report

    study = tmp_path / "tiny"
    protocol_copy(study)
    manifest = json.loads((study / "manifest.json").read_text())
    for t in manifest["trials"].values():
        t["config"].update(dataset="imagefolder", data_dir="/data/cifar10-jpeg")
    fingerprint = manifest["data"].pop("fashion-mnist")
    manifest["data"]["imagefolder:/data/cifar10-jpeg"] = {
        "fingerprint": fingerprint, "train_images": 50_000, "test_images": 10_000, "classes": ["c"] * 10,
        "image_shape": [3, 32, 32], "task": task}
    (study / "manifest.json").write_text(json.dumps(manifest))
    text = write_report(study).read_text()
    assert ("- Data: imagefolder cifar10-jpeg" + (" = cifar10" if comparable else "")
            + ": 50,000 train / 10,000 test images, 10 classes, 3x32x32 (data fingerprint " + fingerprint) in text
    assert f"Setup: task {task}, epochs 2." in text and ("data, not cifar10" not in text) == comparable
    assert "; here: " + "imagefolder data, not cifar10; " * (not comparable) + "192 training images" in text
    assert ("images came from a copy (imagefolder; see Data above)" in text) == comparable  # its caveat stays


def test_a_key_the_report_never_heard_of_keeps_its_cells_apart(tmp_path):
    """momentum is named nowhere in the report: when it varies it is a cell key, and the two seeds that now sit
    in different cells are not pooled as if they were seeds of one (n = 1 per cell, never 2)."""
    from ablation.report import write_report

    study = tmp_path / "tiny"
    protocol_copy(study)
    relabel(study, momentum=0.8)
    text = write_report(study).read_text()
    tables, raw = study / "report" / "tables", raw_trials(study)
    for name in ("finetune_partial", "finetune_full", "finetune_cells"):
        rows = read_csv(tables / f"{name}.csv")
        assert {float(r["momentum"]) for r in rows} == {0.8, 0.9} and {r["n seeds"] for r in rows} == {"1"}, name
    for row in read_csv(tables / "finetune_cells.csv"):
        (trial,) = finished(raw, stage="finetune", freeze=int(row["freeze"]), init=row["init"],
                            momentum=float(row["momentum"]))
        assert close(row["best acc (%) mean"], best(trial))
        assert (row["best acc (%) report"] == "") == (row["momentum"] == "0.8")  # 0.8 is not the report's protocol
    assert {r["n pairs"] for r in read_csv(tables / "pretraining_effect.csv")} == {"1"}
    assert "momentum" in (tables / "finetune_cells.md").read_text()
    assert (study / "report" / "figures" / "accuracy_by_momentum.png").stat().st_size > 20_000
    assert "[momentum 0.8]" in text


def test_label_and_freeze_axes_get_log_and_linear_figures(tmp_path):
    from ablation.report import write_report

    study = tmp_path / "tiny"
    protocol_copy(study)
    relabel(study, labels_per_class=10)
    text = write_report(study).read_text()
    rows = read_csv(study / "report" / "tables" / "finetune_cells.csv")
    assert {r["labels_per_class"] for r in rows} == {"0", "10"}
    assert "| all |" in (study / "report" / "tables" / "finetune_cells.md").read_text()
    for name in ("accuracy_by_freeze", "accuracy_by_labels_per_class"):
        assert (study / "report" / "figures" / f"{name}.png").stat().st_size > 20_000
    assert "Test accuracy by labels/class" in text


def test_axes_of_words_and_booleans_get_their_columns_and_figures(tmp_path):
    """Axis values of any type the spec accepts: words and booleans are placed in order, not compared with 0
    (`ablation report` on experiments/cifar_stem.yaml's stem axis crashed in the figure)."""
    from ablation.report import write_report

    study = tmp_path / "tiny"
    protocol_copy(study)
    axes = {"schedule": ("cosine", "step"), "nesterov": (True, False), "stem": ("cifar", "imagenet")}
    relabel(study, **{key: value for key, (value, _) in axes.items()})
    write_report(study)
    rows = read_csv(study / "report" / "tables" / "finetune_cells.csv")
    for key, values in axes.items():
        assert {r[key] for r in rows} == set(map(str, values)), key
        assert (study / "report" / "figures" / f"accuracy_by_{key}.png").stat().st_size > 20_000, key


def test_sweep_cost_ends_a_killed_run_at_its_last_logged_line_and_skips_a_study_still_running():
    import pandas as pd

    from ablation.report.findings import sweep_cost

    trials = pd.DataFrame({"wall_time_s": [90.0, 30.0]})
    run = {"started": "2026-11-30T10:00:00+00:00", "ended": "2026-11-30T10:02:00+00:00", "slots": 2}
    (line,) = sweep_cost([run, run], trials)
    assert "4.0 min of wall time over 2 invocation(s)" in line and "25% of the slots" in line  # 120 s / (240 s x 2)
    killed = {"started": "2026-11-30T09:00:00+00:00", "last_logged": "2026-11-30T09:04:00+00:00", "slots": 2}
    (line,) = sweep_cost([killed, run], trials)  # a SIGKILLed driver records no end: its log's last line does
    assert "6.0 min of wall time over 2 invocation(s)" in line and "(1 killed: each ends at its log" in line
    assert "17% of the slots" in line  # 120 s / (360 s x 2)
    running = {"started": "2026-11-30T09:00:00+00:00", "slots": 2}
    (line,) = sweep_cost([running, run], trials)
    assert line == "- Sweep cost: not computed: still running"
    (line,) = sweep_cost([{**running, "last_logged": None}, run], trials)  # killed, and no log (URI storage)
    assert "2.0 min of wall time over 2 invocation(s)" in line  # its start to its start: 0 s, said so
    assert "(1 killed before a log line dated its end: counted as 0 s, so the wall time is a lower bound and the " \
           "share in epochs an upper one)" in line


def test_a_killed_invocation_ends_at_its_logs_last_stamp_and_a_live_one_has_no_end(tmp_path):
    import os

    from ablation.study import records as study

    manifest = {"invocations": [{"started": "2026-12-01T23:07:32+00:00"}, {"started": "2026-12-02T02:07:57+00:00",
                                                                           "ended": "2026-12-02T02:12:44+00:00"},
                                {"started": "2026-12-02T03:00:00+00:00"}]}
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "run001.log").write_text("[0:01] started  rot-s0\n[2:38:17] 0/15 trials done\n")
    (tmp_path / "logs" / "run003.log").write_text("[0:30] 0/15 trials done\n[1:00] 0/15 trials done\n")
    runs = study.with_ends(tmp_path, manifest)
    assert runs[0]["last_logged"] == "2026-12-02T01:45:49+00:00" and "last_logged" not in runs[1]
    assert runs[2]["last_logged"] == "2026-12-02T03:01:00+00:00"  # its driver is gone: killed
    (tmp_path / study.LOCK).write_text(f"{os.getpid()} {__import__('socket').gethostname()}\n")  # alive
    assert "last_logged" not in study.with_ends(tmp_path, manifest)[2]
    assert "last_logged" not in manifest["invocations"][0]  # the manifest itself is not changed


def test_the_epoch_chosen_on_validation_data_gives_the_test_accuracy_reported_for_it():
    from ablation.report.frames import _summary

    rows = [{"epoch": e, "test_acc": t, "test_loss": 1.0, "epoch_time_s": 1.0, "val_acc": v}
            for e, t, v in ((1, 0.50, 0.40), (2, 0.70, 0.45), (3, 0.60, 0.55))]
    summary = _summary({"rows": rows})
    assert summary["best_test_acc"] == 0.70 and summary["best_val_epoch"] == 3
    assert summary["test_acc_at_best_val"] == 0.60  # not the best test epoch: chosen without the test set
    assert "test_acc_at_best_val" not in _summary({"rows": [{k: v for k, v in r.items() if k != "val_acc"}
                                                             for r in rows]})


def test_a_validated_effect_finding_states_the_difference_at_the_epoch_chosen_on_validation_data():
    import pandas as pd

    from ablation.report.findings import effect_findings
    from ablation.report.tables import GAP_AT_VAL, GAP_BEST, GAP_FINAL, Table

    row = {"freeze": 0, "n pairs": 3}
    for m, mean in ((GAP_BEST, 5.0), (GAP_FINAL, 4.0), (GAP_AT_VAL, 1.5)):
        row.update({f"{m.label} mean": mean, f"{m.label} std": 1.0, f"{m.label} CI low": mean - 2,
                    f"{m.label} CI high": mean + 2, f"{m.label} p": 0.2})
    (text,) = effect_findings(Table("pretraining_effect", "t", pd.DataFrame([row]), keys=["freeze"]))
    assert "best-epoch test accuracy by +5.00 points" in text
    assert "At the epoch chosen on validation data: +1.50 points, 95% CI [-0.50, +3.50], paired p = 0.200" in text
    del row[f"{GAP_AT_VAL.label} mean"]
    (plain,) = effect_findings(Table("pretraining_effect", "t", pd.DataFrame([row]), keys=["freeze"]))
    assert "validation" not in plain


def test_effect_pairs_cells_that_lack_a_key_and_counts_pairs_per_metric():
    """A cell whose trials lack a key (NaN: recorded before the key existed) still finds its random partner;
    n pairs is the best-epoch difference's, and a metric that one trial lacks says its own, smaller n."""
    import pandas as pd

    from ablation.report.findings import effect_findings
    from ablation.report.tables import GAP_AT_VAL, GAP_BEST, GAP_FINAL, Table, pretraining_effect

    rows = [{"init": init, "seed": seed, "finished": True, "freeze": 0, "sched": None, "best_test_acc": acc,
             "final_test_acc": acc, "test_acc_at_best_val": math.nan if (seed, init) == (2, "pretrained") else acc}
            for seed, pair in enumerate([(0.80, 0.78), (0.81, 0.785), (0.79, 0.782)])
            for init, acc in zip(("pretrained", "random"), pair)]
    effect = pretraining_effect(pd.DataFrame(rows), ["freeze", "sched", "init"], (GAP_BEST, GAP_FINAL, GAP_AT_VAL))
    (row,) = effect.to_dict("records")
    assert (row["n pairs"], row[f"{GAP_BEST.label} n"], row[f"{GAP_AT_VAL.label} n"]) == (3, 3, 2)
    assert row[f"{GAP_BEST.label} mean"] == pytest.approx((2.0 + 2.5 + 0.8) / 3)
    (text,) = effect_findings(Table("pretraining_effect", "t", effect, keys=["freeze", "sched"],
                                    metrics=(GAP_BEST, GAP_FINAL, GAP_AT_VAL)))
    assert "n = 3 seeds (final epoch" in text and "paired p = 0.070, n = 2 seeds." in text


@pytest.mark.parametrize("report, mark, words", [
    (78.0, "", "inside the 95% CI of our mean (and so inside the 95% prediction interval of one run of ours"),
    (82.0, "†", "outside the 95% CI of our mean but inside the 95% prediction interval of one run of ours"),
    (90.0, "‡", "outside the 95% CI of our mean and outside the 95% prediction interval of one run of ours"),
])
def test_a_report_number_is_judged_against_our_mean_and_against_one_run_of_ours(report, mark, words):
    """The report's numbers are single runs: outside the CI of our mean is not outside what one run of ours
    could give (the prediction interval, sqrt(n + 1) times as wide); the table marks and the finding say which."""
    import pandas as pd

    from ablation.report.findings import rotation_findings
    from ablation.report.render import markdown
    from ablation.report.stats import t_interval
    from ablation.report.tables import Metric, Table, metric_columns

    best = Metric("best acc (%)", "best_test_acc", reference=lambda cell: report)
    iv = t_interval([77.0, 78.0, 79.5])  # CI [75.04, 81.29]; one run: [71.92, 84.42]
    row = {"task": "cifar10", "n seeds": 3, "planned": 3, **metric_columns(best, iv, {})}
    assert (row["best acc (%) PI low"], row["best acc (%) PI high"]) == pytest.approx((71.9151, 84.4183), abs=1e-4)
    table = Table("rotation", "Rotation", pd.DataFrame([row]), keys=["task"], metrics=(best,))
    (finding,) = rotation_findings(table)
    assert words in finding and "[71.92, 84.42]" in finding
    text = markdown(table)
    assert f"| {report:.2f}{mark} |" in text
    assert ("‡ the report's number (one run) lies outside" in text) == (mark == "‡")
    assert ("† the report's number (one run) lies outside" in text) == (mark == "†")


def test_the_reports_difference_is_judged_as_one_seed_pair_in_the_table_and_the_finding():
    """The report's pretrained - random gap is one seed pair, not one run: the effect table's note and the
    finding both say so, from the difference metric itself (tables.GAP_BEST.sample)."""
    import pandas as pd

    from ablation.report.findings import effect_findings
    from ablation.report.render import markdown
    from ablation.report.stats import paired_test
    from ablation.report.tables import GAP_BEST, GAP_FINAL, Table, metric_columns

    res = paired_test(pd.Series([80.0, 81.0, 79.5]), pd.Series([78.0, 78.2, 78.1]))  # diffs 2.0, 2.8, 1.4
    row = {"freeze": 0, "n pairs": 3, f"{GAP_BEST.label} t": res.t, f"{GAP_BEST.label} p": res.p,
           **metric_columns(GAP_BEST, res.diff, {"freeze": 0, "stage": "finetune"})}  # the report's -9.16
    row.update(metric_columns(GAP_FINAL, res.diff, {}))
    row[f"{GAP_FINAL.label} p"] = res.p
    table = Table("pretraining_effect", "Effect", pd.DataFrame([row]), keys=["freeze"], metrics=(GAP_BEST, GAP_FINAL))
    (finding,) = effect_findings(table)
    assert "outside the 95% CI of our mean and outside the 95% prediction interval of one seed pair of ours" in finding
    text = markdown(table)
    assert "-9.16‡" in text and "‡ the report's number (one seed pair) lies outside" in text and "one run" not in text


def test_identical_differences_have_no_p_value_rather_than_p_zero():
    """Seeds that all differ by exactly the same amount (e.g. deterministic runs) give sd 0: scipy says p = 0,
    which the report would print as <0.001; the test is undefined there, so the report says n/a."""
    import pandas as pd

    from ablation.report.stats import paired_test

    exact = paired_test(pd.Series([3.0, 4.0, 5.0]), pd.Series([1.0, 2.0, 3.0]))
    assert exact.diff.mean == 2.0 and exact.diff.std == 0.0
    assert math.isnan(exact.t) and math.isnan(exact.p)


def test_a_table_refuses_report_columns_without_their_metric():
    """The notes say what the report's number is a sample of (one run, one seed pair) from the table's metrics:
    a table holding a report column of no metric it knows is a programming error, caught when it is built."""
    import pandas as pd

    from ablation.report.tables import GAP_BEST, Table

    frame = pd.DataFrame([{"freeze": 0, f"{GAP_BEST.label} report": -9.16}])
    with pytest.raises(ValueError, match=r"best diff \(pts\) report"):
        Table("pretraining_effect", "t", frame, keys=["freeze"])
    assert Table("pretraining_effect", "t", frame, keys=["freeze"], metrics=(GAP_BEST,)).metrics == (GAP_BEST,)


@pytest.mark.parametrize("change, says", [
    ({}, []),
    ({"stage": "rotation", "epochs": 30}, []),  # the report's rotation length is not known: not a departure
    ({"task": "fashion-mnist"}, ["fashion-mnist data, not cifar10"]),
    ({"train_subset": 5000, "test_subset": float("nan")}, ["5,000 training images (train_subset), not all"]),
    ({"val_split": 5000}, ["5,000 training images held out for validation (val_split)"]),
    ({"epochs": 5}, ["5 fine-tune epochs, not 20"])])
def test_the_report_numbers_are_context_wherever_data_or_epochs_depart_from_its_setup(change, says):
    from ablation.report import reference

    cfg = {"task": "cifar10", "stage": "finetune", "epochs": 20, "train_subset": 0, "test_subset": 0, "val_split": 0,
           **change}
    assert reference.departures(cfg) == says
    assert (reference.context_note([cfg, {**cfg, "seed": 1}]) is None) == (not says)


def test_a_rebuilt_report_keeps_no_table_or_figure_of_an_older_spec(tmp_path):
    from ablation.report import write_report

    study = tmp_path / "tiny"
    protocol_copy(study)
    write_report(study)
    stale = [study / "report" / "tables" / "accuracy_by_lr.md", study / "report" / "figures" / "accuracy_by_lr.png"]
    for path in stale:  # what a spec with an lr axis left, before the axis was dropped
        path.write_text("old")
    write_report(study)
    assert not any(p.exists() for p in stale) and (study / "report" / "tables" / "rotation.md").exists()
    assert sorted(p.name for p in study.iterdir() if p.name.startswith(".report")) == []


def test_a_report_whose_swap_fails_leaves_the_old_one_in_place(tmp_path, monkeypatch):
    import os

    from ablation.report import write_report

    study = tmp_path / "tiny"
    protocol_copy(study)
    write_report(study)
    before = (study / "report" / "report.md").read_text()
    rename = os.rename

    def fail_the_swap(src, dst):
        if str(src).startswith(str(study / ".report.new-")):
            raise OSError("disk gone")
        rename(src, dst)

    monkeypatch.setattr(os, "rename", fail_the_swap)
    with pytest.raises(OSError, match="disk gone"):
        write_report(study)
    assert (study / "report" / "report.md").read_text() == before
    assert not [p.name for p in study.iterdir() if p.name.startswith(".report")]


@pytest.mark.parametrize("key, value", [("label_smoothing", 0.1), ("batch_size", 64), ("schedule", "cosine"),
                                        ("nesterov", True), ("augment", "off"), ("rotation_mode", "all4"),
                                        ("pretrain.augment", "off"), ("lr", 0.1)])
def test_a_cell_off_the_reports_protocol_gets_none_of_its_numbers(key, value):
    """Comparability was a hand list of five keys: a study that changed label_smoothing, batch_size, schedule,
    nesterov, augment or rotation_mode was still put beside the report's numbers."""
    from ablation.report import reference

    cell = {"freeze": 0, "init": "pretrained", **reference.protocol()}
    assert reference.finetune_best_acc(cell) == 67.94
    assert math.isnan(reference.finetune_best_acc({**cell, key: value}))
    assert math.isnan(reference.rotation_best_acc({**cell, key: value}))
    assert reference.finetune_best_acc({**cell, key: float("nan")}) == 67.94  # trials from before the key existed


def test_a_trial_key_added_later_is_part_of_the_reports_protocol(monkeypatch):
    """Derived from every trial key: a key added to TrialConfig is never silently comparable off its default."""
    import dataclasses

    from ablation.report import reference
    from ablation.trial.config import TrialConfig

    added = dataclasses.field(default=0.0)
    added.name = "mixup_alpha"
    known = TrialConfig.fields()
    monkeypatch.setattr(TrialConfig, "fields", classmethod(lambda cls: {**known, "mixup_alpha": added}))
    cell = {"freeze": 4, "init": "random"}
    assert reference.finetune_best_acc({**cell, "mixup_alpha": 0.0}) == 45.82
    assert math.isnan(reference.finetune_best_acc({**cell, "mixup_alpha": 0.2}))

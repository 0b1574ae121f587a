"""The dependency-driven searcher: what Tune is offered next, when, and what happens when a rotation fails."""

from __future__ import annotations

from pathlib import Path

import pytest
from ray.tune.search import Searcher

from ablation.driver.launch import DependencySearcher
from ablation.study.planner import plan
from ablation.study.spec import parse_spec


def trials(seeds=(0, 1)):
    spec = parse_spec({"name": "s", "dataset": "fashion-mnist", "seeds": list(seeds), "freeze": [4]}, where="t")
    return plan(spec, Path("/tmp/s"))


def make(planned, finished=()):
    return DependencySearcher(planned, set(finished), lambda t: {"name": t.name})


def names(suggestions):
    return [s["trial"]["name"] for s in suggestions if isinstance(s, dict)]


def last_epoch(epochs=2):
    return {"epoch": epochs, "epochs": epochs}


def test_a_pretrained_trial_is_offered_once_its_own_rotation_finished():
    planned = trials()
    s = make(planned)
    first = [s.suggest(f"t{i}") for i in range(5)]
    assert names(first) == ["rot-s0", "rot-s1", "ft-random-f4-s0", "ft-random-f4-s1"] and first[-1] is None
    s.on_trial_complete("t1", result=last_epoch())  # rot-s1 done: its fine-tune, not seed 0's
    assert names([s.suggest("t5")]) == ["ft-pretrained-f4-s1"] and s.suggest("t6") is None
    s.on_trial_complete("t0", result={"epoch": 1, "epochs": 2})  # ended before its last epoch: not finished
    for tid in ("t2", "t3", "t5"):
        s.on_trial_complete(tid, result=last_epoch())
    assert s.suggest("t7") == Searcher.FINISHED  # nothing runs, what waits cannot start: skipped, no hang
    assert list(s.skipped.values()) == ["its rotation trial did not finish in this invocation"]


def test_a_failed_rotation_skips_its_dependents_and_the_rest_goes_on():
    planned = trials()
    told = []
    s = DependencySearcher(planned, set(), lambda t: {"name": t.name}, on_skip=lambda t, why: told.append(t.name))
    [s.suggest(f"t{i}") for i in range(4)]
    s.on_trial_complete("t0", error=True)
    assert s.failed == {planned[0].key}
    assert {planned[0].name} == {t.name for t in planned if t.key in s.failed}
    skipped = [t.name for t in planned if t.key in s.skipped]
    assert skipped == ["ft-pretrained-f4-s0"] and "rot-s0 failed" in s.skipped[planned[2].key]
    assert told == skipped  # the progress line hears of it
    s.on_trial_complete("t1", result=last_epoch())
    assert names([s.suggest("t4")]) == ["ft-pretrained-f4-s1"]


def test_trials_whose_rotation_finished_in_an_earlier_invocation_are_offered_at_once():
    planned = [t for t in trials() if t.config.stage == "finetune"]
    s = make(planned, finished={t.depends_on for t in planned if t.depends_on})
    assert len(names([s.suggest(f"t{i}") for i in range(4)])) == 4 and s.suggest("t4") == Searcher.FINISHED


class FakeTrial:
    def __init__(self, name, trial_id):
        self.config, self.trial_id = {"trial": {"name": name}}, trial_id
        self.last_result, self.error_file = {}, f"/x/{name}/error.txt"  # Ray's temp dir: gone here
        self.path = f"/study/tune/run001/{name}"  # the trial's folder in the study


def test_the_console_gets_a_line_per_event_and_a_summary_the_log_every_epoch(tmp_path, capsys):
    from ablation.driver.progress import Progress

    log = tmp_path / "run001.log"
    p = Progress({"rot-s0": (2, 1.0), "ft-random-f0-s0": (1, 1.0)}, log=log, every=0.0)
    a, b = FakeTrial("rot-s0", "a"), FakeTrial("ft-random-f0-s0", "b")
    p.on_trial_start(0, [], a)
    p.on_trial_start(0, [], b)
    for epoch in (1, 2):
        a.last_result = {"epoch": epoch, "epochs": 2, "train_loss": 1.0, "test_acc": 0.5, "epoch_time_s": 1.0}
        p.on_trial_result(0, [], a, a.last_result)
    p.on_trial_complete(0, [], a)
    p.on_trial_error(0, [], b)
    p.on_experiment_end([])
    out = capsys.readouterr().out.splitlines()
    assert [line.split("] ", 1)[1] for line in out if "trials done" not in line] == [
        "started  rot-s0", "started  ft-random-f0-s0", "finished rot-s0  test_acc 0.5000",
        "FAILED   ft-random-f0-s0 after its retries: an error (traceback: "
        "/study/tune/run001/ft-random-f0-s0/error.txt)"]
    assert out[-1].endswith("1/2 trials done, 0 running, 0 waiting, 1 failed; 2/2 epochs; 0:00 elapsed")  # the failed
    # trial's epoch will never be trained: it leaves the total
    text = log.read_text()
    assert text.count("rot-s0 epoch ") == 2 and "FAILED" in text


def test_on_a_terminal_the_log_still_gets_the_summary_lines(tmp_path, capsys, monkeypatch):
    """The bar is redrawn in place on a terminal, but the log keeps a stamped summary line every `every`
    seconds: a killed driver's invocation ends at its log's last line (study.last_logged)."""
    from ablation.driver.progress import Progress

    monkeypatch.setattr(Progress, "tty", property(lambda self: True))
    log = tmp_path / "run001.log"
    p = Progress({"rot-s0": (2, 1.0)}, log=log, every=0.0)
    a = FakeTrial("rot-s0", "a")
    p.on_trial_start(0, [], a)
    a.last_result = {"epoch": 1, "epochs": 2, "train_loss": 1.0, "test_acc": 0.5, "epoch_time_s": 1.0}
    p.on_trial_result(0, [], a, a.last_result)
    summaries = [line for line in log.read_text().splitlines() if "trials done" in line]
    assert summaries and summaries[-1].startswith("[0:00] 0/1 trials done, 1 running") and "1/2 epochs" in summaries[-1]
    assert "\r\033[K[##########..........] 0/1 trials done" in capsys.readouterr().out  # the bar, half full


def test_a_log_on_object_storage_is_written_every_few_minutes_not_only_at_the_end(monkeypatch, tmp_path):
    """A killed driver never reaches on_experiment_end: its URI log must already hold lines that date its end
    (study.last_logged) to within UPLOAD_EVERY: written at the first summary, then every UPLOAD_EVERY."""
    from ablation.driver import progress
    from ablation.driver.progress import Progress
    from ablation.study import records as study
    from ablation.study.records import LOG_UPLOAD_EVERY as UPLOAD_EVERY

    now = [1000.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: now[0])
    monkeypatch.setattr(Progress, "tty", property(lambda self: False))
    study_uri = f"file://{tmp_path}/study"
    log = study.log_location(study_uri, 1)
    p = Progress({"rot-s0": (20, 1.0)}, log=log)
    p.setup()
    a = FakeTrial("rot-s0", "a")
    step = 100.0
    copy = tmp_path / "study" / "logs" / "run001.log"
    uploads = []
    for epoch in range(1, 7):
        now[0] += step
        p.on_trial_result(0, [], a, {"epoch": epoch, "epochs": 20})
        if copy.exists() and copy.read_text().count(" epoch ") == epoch:
            uploads.append(epoch)
    assert uploads == [1, 1 + int(UPLOAD_EVERY // step)] == [1, 4]
    # killed here, after epoch 6 (600 s): the copy is from epoch 4 (400 s), the last upload
    assert study.last_logged(study_uri, 1, "2026-12-01T00:00:00+00:00") == "2026-12-01T00:06:40+00:00"


def test_a_failed_log_upload_is_a_warning_not_the_end_of_the_sweep(monkeypatch, tmp_path, capsys):
    """Tune lets a callback's exception end the whole run: one failed write to object storage must not."""
    from ablation.driver.progress import Progress
    from ablation.storage import store

    def refuse(*args):
        raise OSError("connection reset")

    monkeypatch.setattr(store, "write_file", refuse)
    p = Progress({"rot-s0": (2, 1.0)}, log="s3://bucket/study/logs/run001.log", every=0.0)
    p.on_trial_result(0, [], FakeTrial("rot-s0", "a"), {"epoch": 1, "epochs": 2})
    assert "could not write the sweep log s3://bucket/study/logs/run001.log (connection reset)" in \
        capsys.readouterr().err
    assert p.uploaded == float("-inf")  # tried again at the next summary


def test_log_stamps_count_from_the_invocations_start_not_from_the_callbacks(tmp_path):
    """The sweep builds its Progress after planning and Ray's start; study.last_logged adds the stamps to the
    manifest's start, so they must count from there."""
    from ablation.driver.progress import Progress

    log = tmp_path / "run001.log"
    p = Progress({"rot-s0": (2, 1.0)}, log=log, elapsed=100.0)
    p.event("started  rot-s0")
    assert log.read_text().startswith("[1:40] started  rot-s0")
    assert p.summary().endswith("0/2 epochs; 1:40 elapsed")


def test_the_eta_rate_ignores_the_set_up_and_counts_down_between_epochs(monkeypatch, tmp_path):
    """An invocation that spent 100 s on set-up (planning, Ray's start) and then 100 s on 1 of 3 equal epochs
    has 200 s left, not 400 s."""
    from ablation.driver import progress
    from ablation.driver.progress import Progress

    now = [1000.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: now[0])
    p = Progress({"rot-s0": (3, 1.0)}, log=tmp_path / "run001.log", elapsed=100.0)
    now[0] += 100
    p.on_trial_result(0, [], FakeTrial("rot-s0", "a"), {"epoch": 1, "epochs": 3})
    assert p.summary().endswith("1/3 epochs; 3:20 elapsed, ETA 3:20")
    now[0] += 50  # no epoch reported since: the ETA counts down, it does not grow with the wait
    assert p.summary().endswith("1/3 epochs; 4:10 elapsed, ETA 2:30")


def test_a_trial_stopped_early_is_said_so_and_its_untrained_epochs_leave_the_total(tmp_path, capsys):
    from ablation.driver.progress import Progress

    p = Progress({"ft-random-f0-lr=0.1-s0": (4, 1.0), "ft-random-f0-s0": (4, 1.0)}, log=tmp_path / "run001.log",
                 every=0.0)
    a, b = FakeTrial("ft-random-f0-lr=0.1-s0", "a"), FakeTrial("ft-random-f0-s0", "b")
    for trial in (a, b):
        p.on_trial_start(0, [], trial)
        trial.last_result = {"epoch": 1, "epochs": 4, "train_loss": 1.0, "test_acc": 0.5, "epoch_time_s": 1.0}
        p.on_trial_result(0, [], trial, trial.last_result)
    p.on_trial_complete(0, [], a)  # ASHA stopped it after epoch 1 of 4
    assert "stopped  ft-random-f0-lr=0.1-s0 early at epoch 1 of 4" in capsys.readouterr().out
    assert p.summary().startswith("1/2 trials done, 1 running, 0 waiting, 0 failed; 2/5 epochs")


def test_the_eta_weighs_each_epoch_by_its_trials_cost(monkeypatch, tmp_path):
    """A rotation epoch costs about twice a freeze-4 one: after one rotation epoch in 100 s, 2 rotation and 4
    freeze-4 epochs are left, 2 + 4 x 0.5 = 4 rotation epochs' worth: 400 s (counting epochs alone: 600 s)."""
    from ablation.driver import progress
    from ablation.driver.progress import Progress

    now = [1000.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: now[0])
    p = Progress({"rot-s0": (3, 2.0), "ft-random-f4-s0": (4, 1.0)}, log=tmp_path / "run001.log")
    a = FakeTrial("rot-s0", "a")
    now[0] += 100
    p.on_trial_result(0, [], a, {"epoch": 1, "epochs": 3})
    assert p.summary().endswith("1/7 epochs; 1:40 elapsed, ETA 6:40")
    p.add({"ft-random-f4-s1": (2, 1.0)})  # planned while it runs (a tuned cell's choice)
    assert p.summary().endswith("1/9 epochs; 1:40 elapsed, ETA 8:20")


def test_the_longest_ready_trial_starts_first_so_no_slot_idles_at_the_end():
    from ablation.driver.launch import work

    spec = parse_spec({"name": "s", "dataset": "fashion-mnist", "seeds": [0], "freeze": [4, 0, 5]}, where="t")
    planned = plan(spec, Path("/tmp/s"))
    s = make(planned)
    order = names([s.suggest(f"t{i}") for i in range(4)])
    assert order == ["rot-s0", "ft-random-f0-s0", "ft-random-f4-s0", "ft-random-f5-s0"]  # plan order: f4 first
    by_name = {t.name: t for t in planned}
    assert work(by_name["ft-random-f0-s0"]) > work(by_name["ft-random-f4-s0"]) > work(by_name["ft-random-f5-s0"])
    all4 = plan(parse_spec({"name": "s", "dataset": "fashion-mnist", "seeds": [0], "freeze": [4],
                            "pretrain": {"rotation_mode": "all4"}}, where="t"), Path("/tmp/s"))
    assert work(all4[0]) > work(planned[0])  # all four turns of every image train


def test_pending_trials_follow_each_sweeps_slots_and_leave_a_users_setting_alone(monkeypatch):
    """Tune reads TUNE_MAX_PENDING_TRIALS_PG when a fit starts: a second sweep in the same process with other
    slots must get its own count, and a value the user exported is theirs."""
    import os

    from ablation.driver.sweep import _pending_trials

    monkeypatch.delenv("TUNE_MAX_PENDING_TRIALS_PG", raising=False)
    for slots, expected in ((4, "4"), (2, "2"), (0.5, "1")):
        with _pending_trials(slots):
            assert os.environ["TUNE_MAX_PENDING_TRIALS_PG"] == expected
        assert "TUNE_MAX_PENDING_TRIALS_PG" not in os.environ
    monkeypatch.setenv("TUNE_MAX_PENDING_TRIALS_PG", "7")
    with _pending_trials(4):
        assert os.environ["TUNE_MAX_PENDING_TRIALS_PG"] == "7"
    assert os.environ["TUNE_MAX_PENDING_TRIALS_PG"] == "7"


def test_a_failed_trial_and_the_trials_it_skips_leave_the_epochs_and_the_eta(monkeypatch, tmp_path, capsys):
    """rot-s0 fails after 1 of 3 epochs and its fine-tune is skipped: 2 + 4 epochs will never be trained, so
    they leave the total and the ETA (else it never reaches 0 and a trial stays 'waiting' for ever)."""
    from ablation.driver import progress
    from ablation.driver.progress import Progress

    now = [1000.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: now[0])
    p = Progress({"rot-s0": (3, 2.0), "rot-s1": (3, 2.0), "ft-pretrained-f4-s0": (4, 1.0)},
                 log=tmp_path / "run001.log")
    a = FakeTrial("rot-s0", "a")
    p.on_trial_start(0, [], a)
    now[0] += 100
    p.on_trial_result(0, [], a, {"epoch": 1, "epochs": 3})
    p.on_trial_error(0, [], a)
    p.skip("ft-pretrained-f4-s0", "its rotation trial rot-s0 failed")
    assert "skipped  ft-pretrained-f4-s0: its rotation trial rot-s0 failed" in capsys.readouterr().out
    assert p.summary() == "0/2 trials done, 0 running, 1 waiting, 1 failed; 1/4 epochs; 1:40 elapsed, ETA 5:00"


@pytest.mark.parametrize("share, per_gpu", [(0.1, 10), (0.2, 5), (0.25, 4), (0.33, 3), (0.5, 2), (1.0, 1)])
def test_the_trials_a_gpu_holds_are_counted_as_ray_counts_them(share, per_gpu):
    """In floating point 1 // 0.1 is 9 (and 1 // 0.2 is 4): a tenth of the GPU's slots were never used."""
    from ablation.driver.sweep import fits

    assert fits(1.0, share) == per_gpu
    assert fits(16, 3) == 5 and fits(2, 1) == 2 and fits(1, 2) == 0


@pytest.mark.parametrize("device, share, cuda, expected", [
    ("auto", 0.0, True, "cpu"),  # no share: the CPU, though CUDA shows every GPU (Ray 2.60 no longer hides them)
    ("auto", 0.25, True, "cuda"), ("auto", 0.25, False, "cpu"), ("cpu", 0.5, True, "cpu"), ("cuda", 1.0, True, "cuda"),
])
def test_a_trial_trains_on_a_gpu_only_with_a_gpu_share(monkeypatch, device, share, cuda, expected):
    import torch

    from ablation.driver.trainable import trial_device
    from ablation.trial.train import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    assert resolve_device(trial_device(device, share)).type == expected


def test_device_cuda_without_a_gpu_share_is_refused_in_one_line():
    from ablation.errors import ConfigError

    raw = {"name": "s", "dataset": "fashion-mnist", "device": "cuda", "resources": {"cpu": 1, "gpu": 0}}
    with pytest.raises(ConfigError, match="device=cuda, but resources.gpu is 0"):
        plan(parse_spec(raw, where="t"), Path("/nowhere"))
    assert plan(parse_spec({**raw, "resources": {"cpu": 1, "gpu": 0.5}}, where="t"), Path("/nowhere"))

"""What `ablation sweep` prints while it runs: a line per trial start, finish, retry, skip and failure, and a
short summary (done / running / waiting / failed, epochs, elapsed, ETA) every `every` seconds, drawn in
place with a bar on a terminal. Every epoch's line goes to the invocation's log file in the study (on
object storage, the whole log is written at the first summary, then every study.LOG_UPLOAD_EVERY seconds,
and at the end).

Why: a researcher wants to see at a glance how far a grid is and when it will end; Tune's trial tables
(hundreds of lines for a small grid) are still there with `-v`.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from ray.tune import Callback

from ..storage import store
from ..storage.store import Location
from ..study.records import LOG_EVERY, LOG_UPLOAD_EVERY, STARTED, clock, log_line
from .console import say
from .launch import trial_param


def _name(trial) -> str:
    return trial_param(trial)["name"]


def _error(trial) -> str:
    """The exception's last line, and where its traceback lands in the study (Tune writes it in Ray's temp dir
    first, then copies it to the trial's folder under STUDY/tune/)."""
    try:
        lines = [line for line in Path(trial.error_file).read_text().splitlines() if line.strip()]
    except (OSError, TypeError):
        lines = []
    return f"{lines[-1].strip() if lines else 'an error'} (traceback: {trial.path}/error.txt)"


class Progress(Callback):
    """A Tune callback over one invocation's trials: trial name -> (epochs still to train, the relative cost
    of one of its epochs: schedule.work / epochs). The ETA weighs epochs by that cost (a freeze-4 epoch
    costs about half a rotation epoch), so a study whose long trials run first is not promised an early end.
    elapsed: seconds since the invocation started (its manifest record), the origin of every [elapsed] stamp,
    which is how study.last_logged dates a killed driver's end."""

    def __init__(self, left: dict[str, tuple[int, float]], log: Location, every: float = LOG_EVERY,
                 elapsed: float = 0.0):
        self.log, self.every = log, every
        self.began = time.monotonic()  # the ETA's rate counts from here: set-up before this is no training
        self.start = self.began - elapsed
        self.shown = self.logged = 0.0  # when the bar was drawn / a summary line was logged
        self.uploaded = float("-inf")  # when a URI log was last written whole: the first summary writes it
        self.total = self.epochs = self.done = self.failed = self.trained = 0
        self.cost = self.spent = 0.0  # of every epoch to train / of those trained so far
        self.spent_at = self.began  # when the last epoch was reported
        self.per_epoch: dict[str, float] = {}
        self.left: dict[str, int] = {}  # trial name -> epochs it has still to train
        self.running: set[str] = set()
        self.lines: list[str] = []
        self.drawn = False
        self.add(left)

    def add(self, left: dict[str, tuple[int, float]]) -> None:
        """Trials to run, as in the constructor; also those planned while the run goes on (a tuned cell's choice
        on every seed)."""
        self.total += len(left)
        self.epochs += sum(n for n, _ in left.values())
        self.cost += sum(n * c for n, c in left.values())
        self.per_epoch.update({name: c for name, (_, c) in left.items()})
        self.left.update({name: n for name, (n, _) in left.items()})

    def _forget(self, name: str) -> None:
        """The epochs a trial will never train (stopped early, failed, skipped) leave the total and the ETA."""
        never = self.left.pop(name, 0)
        self.epochs -= never
        self.cost -= never * self.per_epoch.get(name, 0.0)

    def skip(self, name: str, why: str) -> None:
        """A trial the searcher will not run (its rotation trial failed): it leaves the count of trials too."""
        self.total -= 1
        self._forget(name)
        self.event(f"skipped  {name}: {why}")

    # ------------------------------------------------------------------ output

    @property
    def tty(self) -> bool:  # sys.stdout looked up, not kept: Tune pickles its callbacks with its state
        return sys.stdout.isatty()

    def _write_log(self, line: str) -> None:
        self.lines.append(line)
        if not store.is_uri(self.log):
            with open(self.log, "a") as fh:
                fh.write(line + "\n")

    def _upload(self, now: float) -> None:
        """A log on object storage is one object, written whole: a driver killed later leaves this copy. A failed
        write is a warning (the next summary tries again), never the end of the sweep."""
        if not store.is_uri(self.log):
            return
        try:
            store.write_file(self.log, "\n".join(self.lines) + "\n")
            self.uploaded = now
        except Exception as exc:  # pyarrow raises OSError, ArrowException, ... on a network or credential error
            print(f"ablation: warning: could not write the sweep log {self.log} ({store.reason(exc)}); trying "
                  "again later",
                  file=sys.stderr, flush=True)

    def event(self, text: str, echo: bool = True) -> None:
        """A stamped line for the log and, if echo, the console."""
        line = log_line(time.monotonic() - self.start, text)
        self._write_log(line)
        if not echo:
            return
        say(("\r\033[K" if self.drawn else "") + line)
        self.drawn = False

    def summary(self) -> str:
        now = time.monotonic()
        waiting = self.total - self.done - self.failed - len(self.running)
        eta = ""
        if self.spent and self.epochs > self.trained:  # the rate up to the last epoch, counting down since then
            rate = (self.spent_at - self.began) / self.spent  # (not creeping up until the next epoch reports)
            eta = f", ETA {clock(max(rate * max(self.cost - self.spent, 0.0) - (now - self.spent_at), 0.0))}"
        return (f"{self.done}/{self.total} trials done, {len(self.running)} running, {max(waiting, 0)} waiting, "
                f"{self.failed} failed; {self.trained}/{self.epochs} epochs; {clock(now - self.start)} elapsed{eta}")

    def _show(self) -> None:
        now = time.monotonic()
        if now - self.logged >= self.every:  # on a terminal too: a killed driver's run ends at its log's last
            self.logged = now                # line (study.last_logged); the bar shows it there
            self.event(self.summary(), echo=not self.tty)
            if now - self.uploaded >= LOG_UPLOAD_EVERY:
                self._upload(now)
        if self.tty and now - self.shown >= 1.0:
            width = 20
            filled = int(width * self.trained / max(self.epochs, 1))
            say(f"\r\033[K[{'#' * filled}{'.' * (width - filled)}] {self.summary()}", end="")
            self.drawn, self.shown = True, now

    # ------------------------------------------------------------------ Tune's hooks

    def setup(self, **info: Any) -> None:
        self.shown = self.logged = time.monotonic()

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self.running.add(trial.trial_id)
        self.event(f"{STARTED}{_name(trial)}")

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        self.trained += 1
        self.spent += self.per_epoch.get(_name(trial), 0.0)
        self.spent_at = time.monotonic()
        self.left[_name(trial)] = max(self.left.get(_name(trial), 0) - 1, 0)
        self.event(f"{_name(trial)} epoch {result.get('epoch')}/{result.get('epochs')} train_loss "
                   f"{result.get('train_loss', float('nan')):.4f} test_acc {result.get('test_acc', float('nan')):.4f} "
                   f"{result.get('epoch_time_s', 0):.1f}s", echo=False)
        self._show()

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self.running.discard(trial.trial_id)
        self.done += 1
        last = trial.last_result or {}
        if last.get("epoch", 0) < last.get("epochs", 0):  # Tune's ASHA stopped it (tuning.py)
            self._forget(_name(trial))
            self.event(f"stopped  {_name(trial)} early at epoch {last['epoch']} of {last['epochs']}")
            return
        acc = f"test_acc {last['test_acc']:.4f}" if "test_acc" in last else "nothing left to train"
        self.event(f"finished {_name(trial)}  {acc}")

    def on_trial_recover(self, iteration, trials, trial, **info) -> None:
        self.event(f"retrying {_name(trial)} from its last finished epoch: {_error(trial)}")

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self.running.discard(trial.trial_id)
        self.failed += 1
        self._forget(_name(trial))
        self.event(f"FAILED   {_name(trial)} after its retries: {_error(trial)}")

    def on_step_end(self, iteration, trials, **info) -> None:
        self._show()

    def on_experiment_end(self, trials, **info) -> None:
        self.event(self.summary())
        self._upload(time.monotonic())

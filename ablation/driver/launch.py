"""Which trial Tune starts next: every runnable trial at once, a pretrained fine-tune the moment its own
rotation trial has finished.

Why: a study is a small dependency graph (rotation run -> its pretrained fine-tunes). Running it as two
Tune runs left slots idle while the last rotation or random-init trials of the first run finished. A Tune
`Searcher` is Tune's own hook for "what to run next": `suggest` hands out a trial whose dependency is done,
None while the rest wait on a running trial, and FINISHED when nothing is left, so placement, retries,
fractional GPUs and logging stay Tune's. The searcher holds no state worth saving: a rerun of the sweep
plans again from the study directory, where each trial's own checkpoints are.
With a tune block, a cell's chosen configuration is planned once its last search trial is done (`expand`),
and `SearchScheduler` runs Tune's ASHA over each cell's search trials.
"""

from __future__ import annotations

from typing import Any, Callable, TypedDict

from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search import Searcher

from ..study.planner import Trial
from ..study.tuning import TuneBlock


class TrialParam(TypedDict):
    """What Tune hands a trial as its config, under "trial": built by the driver (sweep.py), read by the
    trainable, the progress callback, SearchScheduler and the driver at the end. One definition, one reader."""
    key: str
    name: str
    config: dict[str, Any]  # TrialConfig.to_dict()
    dir: str  # the trial's run dir in the study
    cpu: float
    gpu: float
    search: str  # the cell whose search it belongs to, "" for none


def trial_param(trial: Any) -> TrialParam:
    """The TrialParam of a Tune trial, a Tune result (both have .config) or the config dict itself."""
    return getattr(trial, "config", trial)["trial"]


def work(trial: Trial) -> float:
    """A trial's relative cost, to start the longest ready trial first: per epoch, its training images x (one
    forward + two backward passes over the share of the network that trains) plus its evaluated images (a
    subset size of 0 counts as CIFAR-10's split). An estimate: it orders the trials and weighs the sweep's ETA
    (progress.py), never a figure in a report."""
    c = trial.config
    train = c.train_subset or (c.labels_per_class * 10 if c.labels_per_class else 50_000)
    test = c.test_subset or 10_000
    trains = 1.0 if c.stage == "rotation" else (5 - c.freeze) / 5  # freeze 5 (a linear probe) trains only fc
    turns = 4 if c.stage == "rotation" else 1  # rotation scores all four turns; all4 trains on them too
    return c.epochs * (train * (turns if c.rotation_mode == "all4" else 1) * (1 + 2 * trains) + test * turns)


class DependencySearcher(Searcher):
    """Suggests `trials` as their dependencies finish, the longest ready one first (`work`). `finished` holds
    the keys of trials already finished in the study; `param(trial)` is the config Tune passes to the trainable."""

    def __init__(self, trials: list[Trial], finished: set[str], param: Callable[[Trial], dict[str, Any]],
                 searching: dict[str, set[str]] | None = None,
                 expand: Callable[[str, set[str]], list[Trial]] | None = None, stopped: set[str] | None = None,
                 on_skip: Callable[[Trial, str], None] | None = None,
                 grow: Callable[[Trial, set[str]], list[Trial]] | None = None):
        """searching: cell -> keys of its search trials not done yet; expand(cell, failed keys) -> the trials of
        the cell's choice, called once its search is done; stopped: keys ASHA stopped (SearchScheduler's);
        on_skip(trial, why): told of each trial it will not run (the progress line and ETA drop it);
        grow(trial, failed keys) -> trials an until block adds now that this trial of one of its cells ended."""
        super().__init__()
        self._waiting = list(trials)
        self._finished = set(finished)
        self._param = param
        self._running: dict[str, Trial] = {}  # Tune trial id -> planned trial
        self._searching = {cell: set(keys) for cell, keys in (searching or {}).items()}
        self._expand = expand
        self._stopped = stopped if stopped is not None else set()
        self.failed: set[str] = set()
        self.skipped: dict[str, str] = {}  # trial key -> why it was not run
        self._on_skip = on_skip
        self._grow = grow

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        ready = [t for t in self._waiting if t.depends_on is None or t.depends_on in self._finished]
        if ready:  # longest first (LPT): the slots run out of work together instead of one idling at the end
            trial = max(ready, key=work)  # the first of equal estimates: plan order
            self._waiting.remove(trial)
            self._running[trial_id] = trial
            return {"trial": self._param(trial)}  # read back by trial_param()
        if self._waiting and not self._running:  # what waits can no longer start: say why, do not hang
            for trial in list(self._waiting):
                self._skip(trial, "its rotation trial did not finish in this invocation")
            return self.suggest(trial_id)  # a cell whose search just ended may have planned its choice
        may_grow = self._grow and any(t.group for t in self._running.values())  # its end may add trials
        return Searcher.FINISHED if not self._waiting and not self._searching and not may_grow else None

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        """Tune calls this once per trial: after its last retry failed (error), when it ended, or when it was
        removed unstarted (no result). Only a trial that reported its last epoch counts as finished."""
        trial = self._running.pop(trial_id, None)
        if trial is None:
            return
        if error:
            self.failed.add(trial.key)
            for dependent in [t for t in self._waiting if t.depends_on == trial.key]:
                self._skip(dependent, f"its rotation trial {trial.name} failed")
        elif result and result.get("epoch", 0) >= result.get("epochs", float("inf")) or trial.key in self._stopped:
            self._finished.add(trial.key)
        if trial.search in self._searching:  # finished, stopped, failed, or ended unfinished (the choice reads
            self._search_done(trial.search, trial.key)  # each trial's state from its files: nothing hangs on it)
        self._grown(trial)

    def _grown(self, trial: Trial) -> None:
        if self._grow and trial.group:
            self._add(self._grow(trial, self.failed | set(self.skipped)))

    def _add(self, trials: list[Trial]) -> None:
        known = {t.key for t in self._waiting} | {t.key for t in self._running.values()}
        self._waiting += [t for t in trials if t.key not in self._finished and t.key not in known]

    def _skip(self, trial: Trial, why: str) -> None:
        self._waiting.remove(trial)
        self.skipped[trial.key] = why
        if self._on_skip:
            self._on_skip(trial, why)
        if trial.search in self._searching:
            self._search_done(trial.search, trial.key)
        self._grown(trial)

    def _search_done(self, cell: str, key: str) -> None:
        """A search trial of `cell` finished, was stopped, failed or was skipped: when it was the cell's last,
        the cell's choice is planned (failed and skipped trials are not candidates)."""
        left = self._searching[cell]
        left.discard(key)
        if not left:
            del self._searching[cell]
            self._add(self._expand(cell, self.failed | set(self.skipped)))

    def save(self, checkpoint_path: str) -> None:  # nothing to save (see the module docstring); Tune asks anyway
        open(checkpoint_path, "w").close()

    def restore(self, checkpoint_path: str) -> None:
        pass


class _Key:
    """What ASHA keys its rungs by: the study's trial key (stable across invocations), not Tune's trial id."""

    def __init__(self, key: str):
        self.trial_id = key


class SearchScheduler(FIFOScheduler):
    """Tune's ASHA once per search cell (the cells' configurations compete within a cell only); every other
    trial runs to its last epoch. `history` (key -> (cell, rows)) replays the epochs search trials reported in
    earlier invocations, so a resumed search stops what the uninterrupted one would have. `on_stop(key,
    epoch)` records a stop (the study's stopped.json) before Tune ends the trial."""

    def __init__(self, block: TuneBlock, history: dict[str, tuple[str, list[dict]]],
                 on_stop: Callable[[str, int], None]):
        super().__init__()
        self._block, self._on_stop = block, on_stop
        self._cells: dict[str, AsyncHyperBandScheduler] = {}
        self._seen: set[str] = set()
        for key, (cell, rows) in history.items():
            for row in rows:
                self._decide(cell, key, row)

    def _decide(self, cell: str, key: str, result: dict) -> str:
        if cell not in self._cells:
            self._cells[cell] = AsyncHyperBandScheduler(
                time_attr="epoch", metric=self._block.metric, mode=self._block.mode, max_t=result["epochs"],
                grace_period=min(self._block.grace_period, result["epochs"]),
                reduction_factor=self._block.reduction_factor, stop_last_trials=False)
        asha = self._cells[cell]
        if key not in self._seen:
            self._seen.add(key)
            asha.on_trial_add(None, _Key(key))
        return asha.on_trial_result(None, _Key(key), result)

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        param = trial_param(trial)
        if not param["search"] or result.get("epoch", 0) >= result.get("epochs", 0):
            return TrialScheduler.CONTINUE
        action = self._decide(param["search"], param["key"], result)
        if action == TrialScheduler.STOP:
            self._on_stop(param["key"], result["epoch"])
        return action

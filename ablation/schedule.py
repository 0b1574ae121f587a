"""Which trial Tune starts next: every runnable trial at once, a pretrained fine-tune the moment its own
rotation trial has finished.

Why: a study is a small dependency graph (rotation run -> its pretrained fine-tunes). Running it as two
Tune runs left slots idle while the last rotation or random-init trials of the first run finished. A Tune
`Searcher` is Tune's own hook for "what to run next": `suggest` hands out a trial whose dependency is done,
None while the rest wait on a running trial, and FINISHED when nothing is left, so placement, retries,
fractional GPUs and logging stay Tune's. The searcher holds no state worth saving: a rerun of the sweep
plans again from the study directory, where each trial's own checkpoints are.
"""

from __future__ import annotations

from typing import Any, Callable

from ray.tune.search import Searcher

from .spec import Trial


class DependencySearcher(Searcher):
    """Suggests `trials` (plan order: rotation runs first) as their dependencies finish. `finished` holds the
    keys of trials already finished in the study; `param(trial)` is the config Tune passes to the trainable."""

    def __init__(self, trials: list[Trial], finished: set[str], param: Callable[[Trial], dict[str, Any]]):
        super().__init__()
        self._waiting = list(trials)
        self._finished = set(finished)
        self._param = param
        self._running: dict[str, Trial] = {}  # Tune trial id -> planned trial
        self.failed: set[str] = set()
        self.skipped: dict[str, str] = {}  # trial key -> why it was not run

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        for trial in self._waiting:
            if trial.depends_on is None or trial.depends_on in self._finished:
                self._waiting.remove(trial)
                self._running[trial_id] = trial
                return {"trial": self._param(trial)}
        if self._waiting and not self._running:  # what waits can no longer start: say why, do not hang
            for trial in self._waiting:
                self.skipped[trial.key] = "its rotation trial did not finish in this invocation"
            self._waiting = []
        return Searcher.FINISHED if not self._waiting else None

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        """Tune calls this once per trial: after its last retry failed (error), when it ended, or when it was
        removed unstarted (no result). Only a trial that reported its last epoch counts as finished."""
        trial = self._running.pop(trial_id, None)
        if trial is None:
            return
        if error:
            self.failed.add(trial.key)
            for dependent in [t for t in self._waiting if t.depends_on == trial.key]:
                self._waiting.remove(dependent)
                self.skipped[dependent.key] = f"its rotation trial {trial.name} failed"
        elif result and result.get("epoch", 0) >= result.get("epochs", float("inf")):
            self._finished.add(trial.key)

    @property
    def pending(self) -> int:
        return len(self._waiting)

    def save(self, checkpoint_path: str) -> None:  # nothing to save (see the module docstring); Tune asks anyway
        open(checkpoint_path, "w").close()

    def restore(self, checkpoint_path: str) -> None:
        pass

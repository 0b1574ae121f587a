"""What a study has decided from its trials' own files, and the plan that follows: each tuned cell's choice
(tuning.py) and each until cell's seeds (precision.py).

Why: a sweep is killed and rerun, and grows; nothing it decided may live only in a driver's memory. Every
decision is a function of finished trials' epoch rows, so rereading the files rebuilds it exactly, and the
plan it leads to names the same trials (same keys): nothing is retrained, nothing is decided twice.
"""

from __future__ import annotations

from typing import NamedTuple

from ..storage.store import Location
from ..trial.rundir import read_rows
from . import records
from .precision import Effect, assess, collect, score, seeds_per_cell
from .planner import Trial, plan, trial_dir
from .spec import Spec
from .trial_states import FAILED
from .tuning import choose


def _state(study_dir: Location, trial: Trial, failed: set[str]) -> tuple[str, list[dict]]:
    location = trial_dir(study_dir, trial)
    rows = read_rows(location)
    return records.done_state(location, rows, trial.config.to_dict()) or (
        FAILED if trial.key in failed else "to do"), rows


class Decided(NamedTuple):
    trials: list[Trial]  # the plan that follows from what is decided
    choices: dict[str, dict]  # tuned cell -> its choice (tuning.choose)
    # with an until block: each cell's effects over its first round, what decides its seeds (n, mean and the
    # interval leave out its extra seeds: effects() over the plan says where a cell stands now)
    effects: list[Effect]


def plan_study(spec: Spec, study_dir: Location, failed: set[str] = frozenset(), fresh: bool = False) -> Decided:
    """The spec's trials, with the chosen configuration of every cell whose search is done (read from the
    study's trial dirs: finished, stopped early, or in `failed`), and those cells' choices; with an until
    block, every cell's seeds beyond the first round once its first round is done."""
    trials = plan(spec, study_dir)
    if fresh:
        return Decided(trials, {}, [])
    choices: dict[str, dict] = {}
    if spec.tune:
        cells: dict[str, list[dict]] = {}
        for t in (t for t in trials if t.search):
            state, rows = _state(study_dir, t, failed)
            cells.setdefault(t.search, []).append({"values": {k: getattr(t.config, k) for k in t.tuned},
                                                   "seed": t.config.seed, "rows": rows, "state": state})
        choices = {cell: c for cell, search in cells.items() if (c := choose(spec.tune, search)) is not None}
        trials = plan(spec, study_dir, choices)
    assessed = effects(spec, study_dir, trials, failed) if spec.until else []
    if any((extra := seeds_per_cell(assessed, spec.seeds)).values()):
        trials = plan(spec, study_dir, choices, extra)
    return Decided(trials, choices, assessed)


def effects(spec: Spec, study_dir: Location, trials: list[Trial], failed: set[str] = frozenset()) -> list[Effect]:
    """Every until cell's effects as its trials' files stand (precision.assess)."""
    entries = []
    for t in (t for t in trials if t.group):
        state, rows = _state(study_dir, t, failed)
        entries.append((t.group, t.variant, t.config.seed, state, score(rows, spec.until.metric) if rows else None))
    values = collect(entries)
    return assess(spec.until, spec.seeds, values, dict.fromkeys(values, spec.baseline))


def search_history(spec: Spec, study_dir: Location) -> dict[str, tuple[str, list[dict]]]:
    """key -> (cell, epoch rows) of every search trial that reported an epoch, done ones included: what ASHA
    replays so that a resumed search stops what the uninterrupted one would have."""
    return {t.key: (t.search, rows) for t in plan(spec, study_dir)
            if t.search and (rows := read_rows(trial_dir(study_dir, t)))}

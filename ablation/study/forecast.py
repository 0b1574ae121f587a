"""`ablation plan SPEC --from PILOT`: how many seeds a precision target needs, and the trials and compute that
takes, before anything trains (no Ray, no torch).

Why: "how many seeds for ±1 point?" is answered by a pilot's spread. A pilot is any study (or a published
results folder with tables/trials.csv) whose trials are the spec's own on some seeds: trials are keyed by what
they compute, so the spec's planned trials are looked up in the pilot by key, seed by seed. For each effect of
every cell: the pilot's sd of its paired differences, the seeds a fixed-n study needs (the smallest n with
t(n-1) sd / sqrt(n) <= h, taking that sd as the truth), and the pairs Stein's rule would ask for after a first
round of the spec's seeds (t with first-round-1 degrees of freedom: the price of its exact coverage).
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from ..errors import UserError
from .precision import Until, extra_seeds, seeds_needed, stein_total
from .planner import Trial, plan
from .spec import Spec
from .trial_states import FINISHED

PILOT_TABLE = ("tables/trials.csv", "report/tables/trials.csv")


def pilot_trials(pilot: Path, metric: str) -> pd.DataFrame:
    """key -> (state, metric as a fraction, seconds per epoch) of a pilot study's trials: from its trial dirs,
    else from the trials table a report or a published results folder holds."""
    from .records import read_manifest, trial_records
    from .precision import score

    if (pilot / "manifest.json").exists() and (pilot / "trials").is_dir():
        rows = [{"key": r["key"], "state": r["state"],
                 metric: score(r["rows"], metric) if r["rows"] else None,
                 "epoch_s": sum(x["epoch_time_s"] for x in r["rows"]) / len(r["rows"]) if r["rows"] else None}
                for r in trial_records(pilot, read_manifest(pilot))]
        return pd.DataFrame(rows).set_index("key")
    table = next((pilot / t for t in PILOT_TABLE if (pilot / t).exists()), None)
    if table is None:
        raise UserError(f"--from {pilot}: neither a study (manifest.json and trials/) nor a folder with "
                        f"{' or '.join(PILOT_TABLE)}; give a study directory or a published results folder")
    frame = pd.read_csv(table)
    if metric not in frame:
        raise UserError(f"--from {pilot}: its trials table has no {metric} column; run `ablation report` on it again")
    frame["epoch_s"] = frame["wall_time_s"] / frame["epochs_done"].where(frame["epochs_done"] > 0)
    return frame.set_index("key")[["state", metric, "epoch_s"]]


def forecast(spec: Spec, until: Until, pilot: Path | None, study_dir: Path) -> list[str]:
    """The lines `ablation plan` prints."""
    k = len(spec.seeds)
    first = plan(spec, study_dir)
    groups = sorted({t.group for t in first if t.group})
    out = [f"plan for {spec.name}: 95% half-width ±{until.halfwidth:g} points on the {until.effects} effects "
           f"({until.metric}), first round {k} seeds {list(spec.seeds)}, at most {until.max_seeds}",
           f"first round: {len(first)} trials, {sum(t.config.epochs for t in first)} epochs"]
    if pilot is None:
        out.append("the seeds beyond it follow from the first round's spread (give --from PILOT to forecast them)")
        return out
    trials = pilot_trials(pilot, until.metric)
    widest = plan(spec, study_dir, extra=dict.fromkeys(groups, until.max_seeds - k))  # every seed it may use
    found: dict[str, dict[str, dict[int, float]]] = {}
    for t in widest:
        if t.group and t.key in trials.index and trials.at[t.key, "state"] == FINISHED:
            value = trials.at[t.key, until.metric]
            if value == value and value is not None:
                found.setdefault(t.group, {}).setdefault(t.variant, {})[t.config.seed] = 100.0 * float(value)
    matched = sum(len(runs) for variants in found.values() for runs in variants.values())
    out.append(f"pilot {pilot}: {matched} of its finished trials are this spec's (same config and seed)")
    header = f"{'cell':<24} {'effect':<32} {'pairs':>5} {'sd (pts)':>9} {'fixed-n seeds':>13} " \
             f"{'Stein pairs':>11} {'seeds':>6}"
    out.append(header)
    extra: dict[str, int] = {}
    for group in groups:
        variants = found.get(group, {})
        base = variants.get(spec.baseline, {})
        for variant in sorted(v for v in {t.variant for t in first if t.group == group} if v != spec.baseline):
            runs = variants.get(variant, {})
            diffs = [runs[s] - base[s] for s in runs if s in base]
            sd = float(pd.Series(diffs).std(ddof=1)) if len(diffs) >= 2 else math.nan
            fixed = seeds_needed(sd, until.halfwidth) if sd == sd else None
            stein = stein_total(sd, k, until.halfwidth) if sd == sd else None
            seeds = min(until.max_seeds, stein) if stein else k
            extra[group] = max(extra.get(group, 0), seeds - k)
            out.append(f"{group:<24} {variant + ' - ' + spec.baseline:<32} {len(diffs):>5} "
                       f"{'—' if sd != sd else f'{sd:.2f}':>9} {fixed or '—':>13} {stein or '—':>11} "
                       f"{seeds:>6}{' (max_seeds)' if stein and stein > until.max_seeds else ''}")
    planned = plan(spec, study_dir, extra=extra)
    out.append(_cost(planned, first, trials, extra, spec.seeds))
    return out


def _cost(planned: list[Trial], first: list[Trial], trials: pd.DataFrame, extra: dict[str, int],
          seeds: tuple[int, ...]) -> str:
    """Trials, epochs and slot time of the whole forecast (epoch times: the pilot's, where it ran a trial of
    the same stage and freeze depth)."""
    epochs = sum(t.config.epochs for t in planned)
    per = {}
    for t in planned:
        if t.key in trials.index and trials.at[t.key, "epoch_s"] == trials.at[t.key, "epoch_s"]:
            per.setdefault((t.config.stage, t.config.freeze), []).append(float(trials.at[t.key, "epoch_s"]))
    known = [t for t in planned if (t.config.stage, t.config.freeze) in per]
    seconds = sum(t.config.epochs * sum(per[t.config.stage, t.config.freeze]) / len(per[t.config.stage,
                                                                                        t.config.freeze])
                  for t in known)
    added = ", ".join(f"{g}: +{n} ({', '.join(map(str, extra_seeds(seeds, n)))})" for g, n in extra.items() if n)
    time = f"; about {seconds / 60:.1f} min of slot time at the pilot's epoch times" if len(known) == len(planned) \
        else ""
    return (f"in all: {len(planned)} trials ({len(first)} in the first round, {len(planned) - len(first)} more: "
            f"{added or 'none'}), {epochs} epochs{time}")

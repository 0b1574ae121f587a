"""The study directory, one owner: manifest, driver lock, trial records and their states (no torch, no ray).

Why: sweep, status and report must agree on what a study holds and what state each trial is in. A study is
the set of trials its invocations asked for; each trial is a run dir (rundir.py) named by its config digest,
so an edited spec reuses every finished trial, continues interrupted ones and trains only new configs.
Layout of <storage>/<name>/:
    manifest.json        every trial ever planned (key -> name, dir, config, dependency), the data copies,
                         and one record per invocation: its spec, the trials it planned and added, outcome
    driver.pid           the lock of the live driver (pid host)
    trials/<dir>/        one run dir per trial: run.json, metrics.jsonl, trained.log, checkpoints/
    tune/<run>/          Tune's own experiment logs of each invocation (result.json, TensorBoard events)
    logs/runNNN.log      every trial event and summary line of invocation NNN, stamped [elapsed]
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..storage import provenance, store
from ..storage.store import Location
from ..trial.config import dataset_of
from ..trial.rundir import read_rows_checked, stopped, trained_log
from .planner import TRIALS_DIR, Trial
from .spec import Spec, parse_spec
from .trial_states import FAILED, FINISHED, INTERRUPTED, NOT_STARTED, RUNNING, SKIPPED, STOPPED, WAITING

MANIFEST = "manifest.json"
LOCK = "driver.pid"
STARTED = "started  "  # the sweep log's event when Tune starts a trial (progress.py): "[0:04] started  rot-s0"
CLAIM_SETTLE = 0.5  # seconds between writing a lock that was not created exclusively and reading it back
TUNE_DIR = "tune"
LOGS_DIR = "logs"
FORMAT = 2  # 1: phase1/phase2 Tune experiments (before 2026-12-01)


class StudyError(UserError):
    """A study that cannot run as asked (another data copy, already running, not a study dir)."""


MANIFEST_KEYS = {"study": str, "data": dict, "trials": dict, "invocations": list}  # what every reader relies on


def read_manifest(study_dir: Location) -> dict[str, Any]:
    path = store.child(study_dir, MANIFEST)
    damaged = ("; restore it from a backup, or start over with `ablation sweep SPEC --fresh` (moves the study "
               "aside, deletes nothing)")
    try:
        text = store.read_file(path)
    except OSError:
        text = None
    if not text:
        raise StudyError(f"{study_dir} is not a study directory (no readable {MANIFEST}); "
                         f"point at <storage>/<study name>")
    try:
        manifest = json.loads(text)
    except ValueError as exc:
        raise StudyError(f"{path} is damaged: not JSON ({getattr(exc, 'msg', exc)}: line "
                         f"{getattr(exc, 'lineno', '?')}, column {getattr(exc, 'colno', '?')}){damaged}") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("trials"), (dict, list)):
        raise StudyError(f"{path} lists no trials; is it a study directory?")
    if manifest.get("format") != FORMAT:
        raise StudyError(f"{study_dir} was written by an older ablation (phase1/phase2 layout); report it with "
                         f"that version (its code version is in {MANIFEST}), or start over with --fresh")
    for key, kind in MANIFEST_KEYS.items():
        if not isinstance(manifest.get(key), kind):
            what = "missing" if key not in manifest else f"not a {kind.__name__}"
            raise StudyError(f"{path} is damaged: its '{key}' is {what}{damaged}")
    for key, entry in manifest["trials"].items():
        if not (isinstance(entry, dict) and entry.get("name") and isinstance(entry.get("config"), dict)):
            raise StudyError(f"{path} is damaged: trial {key} has no name or config{damaged}")
    return manifest


def _process_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine (one of another user counts as alive)."""
    try:
        os.kill(pid, 0)
    except PermissionError:
        return True
    except (OSError, OverflowError):
        return False
    return True


def live_driver(study_dir: Location) -> tuple[int, str] | None:
    """(pid, host) of the study's lock if that driver may be alive (a SIGKILLed driver leaves a stale lock).
    A lock taken on another host cannot be checked from here and counts as alive."""
    try:
        fields = (store.read_file(store.child(study_dir, LOCK)) or "").split()
        pid, host = int(fields[0]), (fields[1] if len(fields) > 1 else socket.gethostname())
    except (OSError, ValueError, IndexError):
        return None  # no lock, or a torn one
    if host == socket.gethostname() and not _process_alive(pid):
        return None
    return pid, host


def _refuse_another_driver(study_dir: Location) -> None:
    driver = live_driver(study_dir)
    if driver is not None and driver != (os.getpid(), socket.gethostname()):
        raise StudyError(f"{study_dir} is being run by process {driver[0]} on {driver[1]}; wait for it or stop "
                         f"it first (if that driver is gone, delete {store.child(study_dir, LOCK)})")


def claim(study_dir: Location) -> None:
    """Take the study's lock, or refuse while another live driver holds it. check_claim looked before the data
    was loaded (minutes, the first time); this is the moment that counts. A lock is created only if absent
    (store.create_new: of two drivers starting together locally, one gets it). Replacing a stale one (its
    driver killed), or creating one on object storage, is a check and then a write: there the lock is read
    back after CLAIM_SETTLE seconds, and of drivers that wrote it together only the last writer goes on."""
    lock, mine = store.child(study_dir, LOCK), f"{os.getpid()} {socket.gethostname()}\n"
    if store.create_new(lock, mine) and not store.is_uri(lock):
        return
    if store.read_file(lock) != mine:
        _refuse_another_driver(study_dir)
        store.write_file(lock, mine)
    time.sleep(CLAIM_SETTLE)
    _refuse_another_driver(study_dir)


def check_claim(study_dir: Location, fresh: bool) -> dict[str, Any] | None:
    """Refuse a second live driver; returns the existing manifest (None for a new study, or with --fresh)."""
    if not store.exists(study_dir):
        return None
    _refuse_another_driver(study_dir)
    if fresh:
        if store.is_uri(study_dir):
            raise StudyError(f"--fresh cannot move a study aside on object storage ({study_dir}); give the spec a "
                             f"new name instead")
        return None
    return read_manifest(study_dir) if store.exists(store.child(study_dir, MANIFEST)) else None


def data_sources(manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """{"dataset:data_dir": data.describe(...)} of the study's data copies; a manifest written before the
    descriptions were recorded gives each copy's fingerprint only."""
    return {s: d if isinstance(d, dict) else {"fingerprint": d} for s, d in manifest.get("data", {}).items()}


def check_data(study_dir: Location, manifest: dict[str, Any] | None, data: dict[str, dict[str, Any]]) -> None:
    """Trials of one study must see the same data: another dataset or copy under its name is refused."""
    if not manifest:
        return
    old: dict[str, set[str]] = {}
    for source, d in data_sources(manifest).items():
        old.setdefault(dataset_of(source), set()).add(d["fingerprint"])
    new = {dataset_of(source): d["fingerprint"] for source, d in data.items()}
    common = set(old) & set(new)
    changed = [d for d in common if new[d] not in old[d]]
    if changed or not common:
        what = (f"its {changed[0]} data changed (fingerprint {new[changed[0]][:12]}, was "
                f"{', '.join(sorted(f[:12] for f in old[changed[0]]))})" if changed else
                f"it was trained on {', '.join(sorted(old))}, this spec asks for {', '.join(sorted(new))}")
        raise StudyError(f"study {study_dir}: {what}; rerun with --fresh to set the old study aside, or give the "
                         f"spec a new name")


def move_aside(study_dir: Path) -> Path:
    aside = Path(study_dir).with_name(f"{Path(study_dir).name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}")
    Path(study_dir).rename(aside)
    return aside


def trial_entry(trial: Trial) -> dict[str, Any]:
    return {"name": trial.name, "dir": trial.dirname, "config": trial.config.to_dict(),
            "depends_on": trial.depends_on, "pretrain": [list(p) for p in trial.pretrain],
            "search": trial.search, "chosen": trial.chosen, "tuned": list(trial.tuned), "group": trial.group,
            "variant": trial.variant}


def add_trials(study_dir: Location, manifest: dict[str, Any], trials: list[Trial],
               choices: dict[str, dict], reopened: set[str] = frozenset()) -> None:
    """Trials planned while the invocation runs (a cell's chosen configuration, once its search is done) join
    the study's record, with the choices that made them. A cell in `reopened` but not in `choices` is being
    searched again (more samples, a retried trial): its old choice no longer stands."""
    manifest["choices"] = {c: v for c, v in manifest.get("choices", {}).items()
                           if c not in reopened or c in choices}
    run = manifest["invocations"][-1]
    for trial in trials:
        if trial.key not in manifest["trials"]:
            run["added"].append(trial.key)
        if trial.key not in run["planned"]:
            run["planned"].append(trial.key)
        manifest["trials"][trial.key] = trial_entry(trial)
    manifest["choices"].update(choices)
    save_manifest(study_dir, manifest)


def begin(study_dir: Location, spec: Spec, spec_path: str, trials: list[Trial], data: dict[str, dict[str, Any]],
          old: dict[str, Any] | None, slots: float) -> dict[str, Any]:
    """Take the lock and record this invocation: its spec, the trials it plans and which of them are new."""
    claim(study_dir)
    if store.exists(store.child(study_dir, MANIFEST)):  # again, under the lock: another driver may have run
        old = read_manifest(study_dir)                  # (or begun the study) since check_claim looked
    record = provenance.record()
    manifest = old or {"format": FORMAT, "study": spec.name, "created": record["time"], "provenance": record,
                       "data": {}, "trials": {}, "invocations": []}
    added = [t.key for t in trials if t.key not in manifest["trials"]]
    manifest["trials"].update({t.key: trial_entry(t) for t in trials})  # names follow the newest spec
    manifest["data"].update(data)
    manifest["description"] = spec.description
    manifest["invocations"].append({
        "started": record["time"], "code_version": record["code_version"], "host": record["host"],
        "pid": os.getpid(), "spec_file": str(Path(spec_path).resolve()), "spec": spec.raw,
        "spec_digest": spec.digest, "resources": {"cpu": spec.cpu, "gpu": spec.gpu}, "slots": slots,
        "planned": [t.key for t in trials], "added": added, "failed": {}, "skipped": {}})
    save_manifest(study_dir, manifest)
    return manifest


def end(study_dir: Location, manifest: dict[str, Any], failed: dict[str, str], skipped: dict[str, str],
        unfinished: int | None, interrupted: bool) -> None:
    """Record the invocation's end and release the lock. unfinished: trials of the spec left neither done nor
    failed nor skipped, None when the run ended by an exception; interrupted: Tune was stopped (Ctrl-C)."""
    run = manifest["invocations"][-1]
    parts = [f"{len(failed)} failed"] * bool(failed) + [f"{len(skipped)} skipped"] * bool(skipped)
    parts += ["ended by an exception or a second interrupt" if unfinished is None else
              f"{'stopped' if interrupted else 'ended'} with {unfinished} unfinished" if unfinished else ""]
    run.update(ended=provenance.now(), failed=failed, skipped=skipped,
               outcome=", ".join(p for p in parts if p) or "finished")
    save_manifest(study_dir, manifest)
    store.remove_file(store.child(study_dir, LOCK))


def save_manifest(study_dir: Location, manifest: dict[str, Any]) -> None:
    store.write_file(store.child(study_dir, MANIFEST), json.dumps(manifest, indent=1))


def trial_location(study_dir: Location, entry: dict[str, Any]) -> Location:
    return store.child(study_dir, TRIALS_DIR, entry["dir"])


def current_spec(manifest: dict[str, Any]) -> Spec | None:
    """The spec of the study's newest invocation, where what reads the study needs it (an until block: the
    report's precision table, status); None for a study without an until block."""
    runs = manifest.get("invocations") or []
    if not runs or not runs[-1].get("spec", {}).get("until"):
        return None
    return parse_spec(runs[-1]["spec"], where=f"{manifest.get('study', 'study')}: manifest.json")


def current_keys(manifest: dict[str, Any]) -> list[str]:
    """The trials of the newest invocation's spec: the study as it now stands."""
    return manifest["invocations"][-1]["planned"] if manifest.get("invocations") else []


def is_finished(rows: list[dict[str, Any]], config: dict[str, Any]) -> bool:
    return bool(rows) and rows[-1]["epoch"] >= config["epochs"]


def done_state(location: Location, rows: list[dict[str, Any]], config: dict[str, Any]) -> str | None:
    """FINISHED or STOPPED (by ASHA) from a trial's own files, None when it has more to train."""
    return FINISHED if is_finished(rows, config) else STOPPED if stopped(location) else None


LOG_EVERY = 30.0  # s between a sweep's summary lines in its log: how early a killed driver's end can be dated
LOG_UPLOAD_EVERY = 300.0  # s between writes of a log on object storage (one object, written whole)


def clock(seconds: float) -> str:
    """The [elapsed] stamp of a log line, seconds since the invocation started: m:ss, or h:mm:ss."""
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else \
        f"{seconds // 60}:{seconds % 60:02d}"


def log_line(seconds: float, event: str) -> str:
    """A line of a sweep's log as progress.py writes it: "[0:04] started  rot-s0". This module reads them back
    (last_logged, and which trials a live driver has launched), so the format lives here alone."""
    return f"[{clock(seconds)}] {event}"


def launched(log: str) -> set[str]:
    """The trials whose start a sweep log records (a STARTED event line)."""
    return set(re.findall(rf"^\[[\d:]+\] {STARTED}(\S+)$", log, re.M))


def run_name(number: int) -> str:
    """Invocation `number` (1-based, as in the manifest's order) as its Tune experiment and log are named."""
    return f"run{number:03d}"


def log_location(study_dir: Location, number: int) -> Location:
    """The console log of invocation `number`."""
    return store.child(study_dir, LOGS_DIR, f"{run_name(number)}.log")


def last_logged(study_dir: Location, number: int, started: str) -> str | None:
    """When invocation `number` last wrote its log: its start plus the [elapsed] stamp of the log's last line
    (a summary line every LOG_EVERY seconds). What ends an invocation whose driver was killed and recorded no
    end; None without a stamped line."""
    stamps = re.findall(r"^\[(\d+(?::\d\d){1,2})\]", store.read_file(log_location(study_dir, number)) or "", re.M)
    if not stamps:
        return None
    seconds = sum(int(part) * 60 ** i for i, part in enumerate(reversed(stamps[-1].split(":"))))
    return (datetime.fromisoformat(started) + timedelta(seconds=seconds)).isoformat(timespec="seconds")


def with_ends(study_dir: Location, manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """The manifest's invocations, each killed one (no end recorded, no live driver) given `last_logged`."""
    runs = [dict(r) for r in manifest.get("invocations", [])]
    live = live_driver(study_dir) is not None
    for number, run in enumerate(runs, 1):
        if not run.get("ended") and not (live and number == len(runs)):
            run["last_logged"] = last_logged(study_dir, number, run["started"])
    return runs


def sweep_cost(invocations: list[dict[str, Any]], epoch_seconds: float, trials: int) -> dict[str, float] | None:
    """Where the slots' time went: wall time, the ideal (summed epoch time / slots), their ratio, the share
    of slot time in epochs (training + evaluation) and the fixed cost per trial (the rest / trials). A killed
    invocation ends at its `last_logged` time (with_ends), or at its start when it has no log line to date it
    (killed early, or before its log first reached object storage: the figures are then lower bounds); None
    while one is running."""
    ends = [r.get("ended") or r.get("last_logged") or ("last_logged" in r and r["started"]) for r in invocations]
    if not invocations or not epoch_seconds or not all(ends):
        return None
    walls = [(datetime.fromisoformat(end) - datetime.fromisoformat(r["started"])).total_seconds()
             for end, r in zip(ends, invocations)]
    slot_time = sum(w * r.get("slots", 1) for w, r in zip(walls, invocations))
    ideal = epoch_seconds * sum(walls) / slot_time  # the epochs spread over the (time-weighted mean) slots
    return {"wall_s": sum(walls), "slot_s": slot_time, "epochs_s": epoch_seconds, "ideal_s": ideal,
            "wall_over_ideal": sum(walls) / ideal, "share": epoch_seconds / slot_time,
            "fixed_per_trial_s": (slot_time - epoch_seconds) / max(trials, 1),
            "slots": max(r.get("slots", 1) for r in invocations)}


def trial_records(study_dir: Location, manifest: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """One record per trial the study ever planned, current spec first: its entry, epoch rows (deduplicated),
    epochs trained in all (retrained ones again), the code versions that trained them (in order), state, what
    is damaged in its files ("" when nothing), and whether the current spec asks for it."""
    manifest = manifest or read_manifest(study_dir)
    started = [(r["started"], r["code_version"]) for r in manifest.get("invocations", [])]

    def code(line: dict[str, Any]) -> str:
        """The line's code version; for a line from before versions were logged, that of the invocation that
        started last before it (one driver at a time: the lock)."""
        return line.get("code") or next((v for t, v in reversed(started) if t <= line.get("time", "")),
                                        "unrecorded")

    current = current_keys(manifest)
    last = manifest["invocations"][-1] if manifest.get("invocations") else {}
    live = live_driver(study_dir) is not None
    sweep_log = store.read_file(log_location(study_dir, len(manifest.get("invocations", [])))) if live else None
    launched_names = launched(sweep_log or "")
    order = current + [k for k in manifest["trials"] if k not in set(current)]
    out = []
    for key in order:
        entry = manifest["trials"][key]
        location = trial_location(study_dir, entry)
        rows, damage = read_rows_checked(location)
        reason = last.get("failed", {}).get(key) or last.get("skipped", {}).get(key, "")
        state = done_state(location, rows, entry["config"])
        if damage and state == STOPPED:  # done: a rerun trains it no further, so nothing rewrites its rows
            damage += " (read without that line)"
        elif damage:  # not done until a rerun rewrites its rows from its newest checkpoint (nothing retrained)
            state, damage = None, f"{damage}: rerun the sweep to rewrite it from the trial's checkpoint"
            reason = damage
        if state:
            if state == STOPPED:
                reason = f"by ASHA after epoch {stopped(location)['epoch']}"
        elif key in last.get("failed", {}):
            state = FAILED
        elif key in last.get("skipped", {}):
            state = SKIPPED
        elif live and key in current:  # started, without an epoch yet: running, not waiting
            state = RUNNING if rows or entry["name"] in launched_names else WAITING
        else:
            state = INTERRUPTED if rows or damage else NOT_STARTED
        log = trained_log(location)
        out.append({"key": key, **entry, "location": location, "rows": rows, "trained": len(log),
                    "code": list(dict.fromkeys(code(line) for line in log)) or ["unrecorded"] * bool(rows),
                    "state": state, "damage": damage,
                    "current": key in current, "reason": reason})
    return out

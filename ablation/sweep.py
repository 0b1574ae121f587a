"""`ablation sweep`: spec -> plan -> one Ray Tune Tuner per phase under one study dir, resumable.

Why: a grid on a GPU box gets interrupted. Running the same command again must continue the study:
finished trials are not rerun, interrupted ones continue from their last epoch, errored ones retry.
Only `Tuner.restore` resumes a Tune experiment (a new Tuner with the same name starts over), so each
phase is restored when its experiment state exists. <storage> is a local or shared path or a URI (store.py).
Layout of <storage>/<name>/:
    manifest.json          spec, planned trials, provenance, data copies, one entry per invocation
    phase1/<trial id>/     Tune trial dirs (progress.csv, result.json, TensorBoard events, checkpoint_*)
    phase2/<trial id>/
"""

from __future__ import annotations

import json
import os
import pickle
import socket
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from . import provenance, store
from .store import Location
from .config import ConfigError, UserError, read_yaml
from .spec import PHASES, Spec, Trial, parse_spec, plan

MANIFEST = "manifest.json"
LOCK = "driver.pid"


class StudyError(UserError):
    """A study that cannot run as asked (spec changed, already running, not a study dir)."""


def warn(msg: str) -> None:
    print(f"ablation: warning: {msg}", file=sys.stderr, flush=True)


def apply_overrides(raw: dict[str, Any], overrides: dict[str, str]) -> dict[str, Any]:
    """`seeds=[0,1]` or `finetune.epochs=3`: values are YAML, dotted keys reach into a block."""
    raw = json.loads(json.dumps(raw))
    for key, text in overrides.items():
        value = yaml.safe_load(text) if text else text
        *blocks, leaf = key.split(".")
        target = raw
        for block in blocks:
            target = target.setdefault(block, {})
            if not isinstance(target, dict):
                raise ConfigError(f"override {key}: '{block}' is not a block of the spec")
        target[leaf] = value
    return raw


def load_spec(path: str, overrides: dict[str, str] | None = None) -> Spec:
    return parse_spec(apply_overrides(read_yaml(path), overrides or {}), where=path, base=Path.cwd())


def read_manifest(study_dir: Location) -> dict[str, Any]:
    try:
        return json.loads(store.read_file(store.child(study_dir, MANIFEST)) or "")
    except (OSError, ValueError):
        raise StudyError(f"{study_dir} is not a study directory (no readable {MANIFEST}); "
                         f"point at <storage>/<study name>") from None


def live_driver(study_dir: Location) -> tuple[int, str] | None:
    """(pid, host) of the study's lock if that driver may be alive (a SIGKILLed driver leaves a stale lock).
    A lock taken on another host cannot be checked from here and counts as alive."""
    try:
        fields = (store.read_file(store.child(study_dir, LOCK)) or "").split()
        pid, host = int(fields[0]), (fields[1] if len(fields) > 1 else socket.gethostname())
        if host == socket.gethostname():
            os.kill(pid, 0)
    except PermissionError:
        pass  # alive, owned by another user
    except (OSError, ValueError, IndexError):
        return None  # no lock, a torn lock, or no such process
    return pid, host


def _check_claim(study_dir: Location, spec: Spec, fresh: bool) -> bool:
    """Refuse a second live driver and a changed spec; True when --fresh must move the old study aside."""
    driver = live_driver(study_dir)
    if driver is not None and driver != (os.getpid(), socket.gethostname()):
        raise StudyError(f"{study_dir} is being run by process {driver[0]} on {driver[1]}; wait for it or stop "
                         f"it first (if that driver is gone, delete {store.child(study_dir, LOCK)})")
    if not store.exists(store.child(study_dir, MANIFEST)) or read_manifest(study_dir).get("spec_digest") == spec.digest:
        return False
    if not fresh:
        raise StudyError(f"the spec of study '{spec.name}' changed since it began ({study_dir}); rerun with "
                         f"--fresh to keep the old study aside and start over, or give the spec a new name")
    if store.is_uri(study_dir):
        raise StudyError(f"--fresh cannot move a study aside on object storage ({study_dir}); give the spec a "
                         f"new name instead")
    return True


def _move_aside(study_dir: Path) -> None:
    aside = study_dir.with_name(f"{study_dir.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}")
    study_dir.rename(aside)
    warn(f"spec changed: moved the old study to {aside} (nothing deleted) and starting over")


def _manifest(spec: Spec, spec_path: str, trials: list[Trial], data: dict[str, str], old: dict | None,
              slots: float) -> dict:
    record = provenance.record()
    runs = (old or {}).get("runs", []) + [{"started": record["time"], "code_version": record["code_version"],
                                            "host": record["host"], "pid": os.getpid()}]
    return {"study": spec.name, "description": spec.description, "spec_file": str(Path(spec_path).resolve()),
            "spec_digest": spec.digest, "spec": spec.raw, "created": (old or {}).get("created", record["time"]),
            "provenance": (old or {}).get("provenance", record), "data": data,
            "resources": {"cpu": spec.cpu, "gpu": spec.gpu}, "slots": slots,
            "trials": [{"id": t.id, "phase": t.phase, "config": t.config.to_dict()} for t in trials],
            "runs": runs}


def _save_manifest(study_dir: Location, manifest: dict) -> None:
    store.write_file(store.child(study_dir, MANIFEST), json.dumps(manifest, indent=1))


def run_study(spec_path: str, storage: str = "results/studies", address: str | None = None, fresh: bool = False,
              overrides: dict[str, str] | None = None) -> int:
    spec = load_spec(spec_path, overrides)
    study_dir = store.child(storage if store.is_uri(storage) else Path(storage).expanduser().resolve(), spec.name)
    trials = plan(spec, study_dir)
    move_aside = store.exists(study_dir) and _check_claim(study_dir, spec, fresh)
    from .data import preflight  # torch: only once the spec is known to be good

    data = preflight([t.config for t in trials])  # missing data fails before anything is written
    if move_aside:
        _move_aside(study_dir)
    gpu, slots = _start_ray(address, spec)
    old = read_manifest(study_dir) if store.exists(store.child(study_dir, MANIFEST)) else None
    store.write_file(store.child(study_dir, LOCK), f"{os.getpid()} {socket.gethostname()}\n")
    manifest = _manifest(spec, spec_path, trials, data, old, slots)
    _save_manifest(study_dir, manifest)
    print(f"study {spec.name}: {len(trials)} trials -> {study_dir}", flush=True)
    failed: list[str] = []
    try:
        for phase in PHASES:
            members = [t for t in trials if t.phase == phase]
            if members:
                failed += run_phase(study_dir, phase, members, spec, gpu)
            if failed:
                break  # phase 2 needs every pretraining of phase 1
    finally:
        manifest["runs"][-1]["ended"] = provenance.now()
        manifest["runs"][-1]["outcome"] = "failed: " + ", ".join(failed) if failed else "finished"
        _save_manifest(study_dir, manifest)
        store.remove_file(store.child(study_dir, LOCK))
    if failed:
        print(f"ablation: {len(failed)} trial(s) failed after retries: {', '.join(failed)}; see error.txt in their "
              f"trial dirs, then rerun the same command to retry them", file=sys.stderr)
        return 1
    print(f"study {spec.name} finished; next: ablation report {study_dir}", flush=True)
    return 0


def _start_ray(address: str | None, spec: Spec) -> tuple[float, float]:
    """Join or start Ray; a GPU request with no GPU in the cluster is dropped (Ray would wait forever).
    Returns the GPU fraction per trial and how many trials the cluster runs at once."""
    import ray

    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=True)
    have = ray.cluster_resources()
    gpu = spec.gpu
    if gpu and not have.get("GPU", 0):
        warn(f"resources.gpu={gpu} asked, but this Ray cluster has no GPU: running every trial on CPU")
        gpu = 0.0
    slots = have.get("CPU", 1) // spec.cpu
    if gpu:
        slots = min(slots, have["GPU"] // gpu)
    if spec.max_concurrent:
        slots = min(slots, spec.max_concurrent)
    return gpu, max(1.0, slots)


def run_phase(study_dir: Location, phase: str, trials: list[Trial], spec: Spec, gpu: float) -> list[str]:
    """Run (or restore and continue) one phase's Tune experiment; returns the ids of trials that failed."""
    from ray import tune

    from .trainable import run_trial

    trainable = tune.with_resources(run_trial, {"cpu": spec.cpu, "gpu": gpu})
    # num_to_keep makes Tune snapshot the experiment whenever a trial saved that many checkpoints since the
    # last snapshot: wanted (a restore then sees the trial's progress), but with epochs of seconds Tune warns
    # about it on every snapshot. A user's own setting of the variable wins.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    path = store.child(study_dir, phase)
    configs = [{"id": t.id, "config": t.config.to_dict(), "dir": str(store.child(path, t.id)), "gpu": gpu}
               for t in trials]
    param_space = {"trial": tune.grid_search(configs)}
    tuner = _restore(tune, path, trainable, param_space)
    if tuner is None:
        tuner = tune.Tuner(
            trainable,
            param_space=param_space,
            tune_config=tune.TuneConfig(trial_name_creator=_trial_id, trial_dirname_creator=_trial_id,
                                        max_concurrent_trials=spec.max_concurrent or None),
            run_config=tune.RunConfig(name=phase, storage_path=str(study_dir), verbose=1,
                                      failure_config=tune.FailureConfig(max_failures=spec.max_failures),
                                      checkpoint_config=tune.CheckpointConfig(num_to_keep=2)),
        )
    results = tuner.fit()
    return sorted(r.config["trial"]["id"] for r in results if r.error)


def _restore(tune, path: Location, trainable, param_space: dict[str, Any]):
    """Tune's experiment at `path`, restored to continue; None when there is none to restore.

    param_space is passed again because tuner.pkl does not hold it, and a driver killed before Tune's first
    experiment snapshot makes Tune restart the experiment from param_space (None would give one empty trial).
    A tuner.pkl torn by a kill while Tune wrote it is replaced: a new Tuner then reruns the phase, and each
    trial continues from the checkpoints in its own dir, so nothing trained is lost."""
    if not tune.Tuner.can_restore(str(path)):
        return None
    print(f"{str(path).rsplit('/', 1)[-1]}: resuming {path}", flush=True)
    try:
        return tune.Tuner.restore(str(path), trainable=trainable, param_space=param_space,
                                  resume_unfinished=True, resume_errored=True)
    except (EOFError, pickle.UnpicklingError) as exc:
        warn(f"{path}/tuner.pkl is unreadable ({type(exc).__name__}: torn by a kill): starting this phase's "
             f"Tune experiment again; every trial continues from its own checkpoints")
        return None


def _trial_id(trial) -> str:
    return trial.config["trial"]["id"]

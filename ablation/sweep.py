"""`ablation sweep`: spec -> planned trials -> Ray Tune, for the trials that are not finished yet.

Why: a grid on a GPU box gets interrupted, and grows. Running the same command again, or an edited spec,
continues the study: trials already finished (same config digest) are reused, interrupted ones continue
from their own checkpoints (rundir.py), only new configs train. Each invocation is a fresh Tune run, so
Tune's experiment state never has to match an edited spec; the study directory (study.py) is the record.
Trials that need nothing go first; a pretrained fine-tune whose rotation trial was not finished when the
invocation began waits for a second Tune run, which starts once its rotation trial is done.
<storage> is a local or shared path or a URI (store.py).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml

from . import store, study
from .config import ConfigError, UserError, read_yaml, unwritable
from .spec import Spec, Trial, parse_spec, plan, trial_dir
from .store import Location


def warn(msg: str) -> None:
    print(f"ablation: warning: {msg}", file=sys.stderr, flush=True)


def apply_overrides(raw: dict[str, Any], overrides: dict[str, str]) -> dict[str, Any]:
    """`seeds=[0,1]`, `finetune.epochs=3` or `axes={finetune.weight_decay: [0.0005, 0.005]}`: values are YAML,
    dotted keys reach into a block; an `axes` mapping is merged into the spec's own axes."""
    raw = json.loads(json.dumps(raw))
    for key, text in overrides.items():
        try:
            value = yaml.safe_load(text) if text else text
        except yaml.YAMLError:
            raise ConfigError(f"override {key}={text}: not a YAML value (quote it, e.g. '{key}=[0, 1]')") from None
        if key == "axes" and isinstance(value, dict) and isinstance(raw.get("axes"), dict):
            raw["axes"] = {**raw["axes"], **value}
            continue
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


def run_study(spec_path: str, storage: str = "results/studies", address: str | None = None, fresh: bool = False,
              overrides: dict[str, str] | None = None) -> int:
    spec = load_spec(spec_path, overrides)
    if not store.is_uri(storage) and (problem := unwritable(Path(storage).expanduser() / spec.name)):
        raise UserError(f"--storage {storage}: {problem}; give a directory you can write")
    study_dir = store.child(storage if store.is_uri(storage) else Path(storage).expanduser().resolve(), spec.name)
    trials = plan(spec, study_dir)
    old = study.check_claim(study_dir, fresh)
    from .data import preflight  # torch: only once the spec is known to be good

    data = preflight([t.config for t in trials])  # missing data fails before anything is written
    study.check_data(study_dir, old, data)
    if fresh and store.exists(study_dir):
        warn(f"--fresh: moved the old study to {study.move_aside(Path(study_dir))} (nothing deleted); starting over")
    gpu, slots = _start_ray(address, spec)
    manifest = study.begin(study_dir, spec, spec_path, trials, data, old, slots)
    done = {r["key"] for r in study.trial_records(study_dir, manifest) if r["state"] == study.FINISHED}
    todo = [t for t in trials if t.key not in done]
    run = manifest["invocations"][-1]
    print(f"study {spec.name}: {len(trials)} trials in the spec: {len(done & {t.key for t in trials})} finished "
          f"(reused), {len(todo)} to train ({len(run['added'])} new) -> {study_dir}", flush=True)
    failed: dict[str, str] = {}
    skipped: dict[str, str] = {}
    try:
        now = [t for t in todo if t.depends_on is None or t.depends_on in done]
        later = [t for t in todo if t not in now]
        number = len(manifest["invocations"])
        failed.update(run_tune(study_dir, f"run{number:03d}-a", now, spec, gpu))
        ready = [t for t in later if t.depends_on not in failed]
        skipped = {t.key: f"its rotation trial {manifest['trials'][t.depends_on]['name']} failed"
                   for t in later if t.depends_on in failed}
        failed.update(run_tune(study_dir, f"run{number:03d}-b", ready, spec, gpu))
    finally:
        study.end(study_dir, manifest, failed, skipped)
    if failed or skipped:
        names = [manifest["trials"][k]["name"] for k in failed]
        print(f"ablation: {len(failed)} trial(s) failed after retries: {', '.join(names)}"
              + (f"; {len(skipped)} skipped (their rotation trial failed)" if skipped else "")
              + f"; see `ablation status {study_dir}` and Tune's error.txt under {store.child(study_dir, 'tune')}, "
              f"then rerun the same command to retry them", file=sys.stderr)
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


def run_tune(study_dir: Location, name: str, trials: list[Trial], spec: Spec, gpu: float) -> dict[str, str]:
    """One Tune run over these trials; returns {trial key: where Tune put its error} of those that failed."""
    if not trials:
        return {}
    from ray import tune

    from .trainable import run_trial

    trainable = tune.with_resources(run_trial, {"cpu": spec.cpu, "gpu": gpu})
    configs = [{"key": t.key, "name": t.name, "config": t.config.to_dict(), "dir": str(trial_dir(study_dir, t)),
                "gpu": gpu} for t in trials]
    tuner = tune.Tuner(
        trainable,
        param_space={"trial": tune.grid_search(configs)},
        tune_config=tune.TuneConfig(trial_name_creator=_trial_name, trial_dirname_creator=_trial_name,
                                    max_concurrent_trials=spec.max_concurrent or None),
        run_config=tune.RunConfig(name=name, storage_path=str(store.child(study_dir, study.TUNE_DIR)), verbose=1,
                                  failure_config=tune.FailureConfig(max_failures=spec.max_failures)),
    )
    results = tuner.fit()
    return {r.config["trial"]["key"]: f"{r.path}/error.txt" for r in results if r.error}


def _trial_name(trial) -> str:
    return trial.config["trial"]["name"]

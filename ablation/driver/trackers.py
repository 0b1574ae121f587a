"""`--callback mlflow|wandb|aim`: a study's trials in an experiment tracker, while the sweep runs.

Why: labs look at their runs in a tracker. MLflow is ours (MLflowTrials): Tune's own MLflowLoggerCallback opens
a run per Tune trial, and every invocation of a sweep is a new Tune run, so a trial resumed after a kill would
open a second MLflow run with its epochs counted from 1 again. Here a run is a study trial: it is found again by
its key (tag `ablation.key`) and continued, its params are the trial's config, and each epoch is logged at its
own epoch number, so the run's history equals the trial's epochs.csv. W&B and Aim are Tune's callbacks (a
resumed trial is a new run there), told to keep their files beside the studies: by default Tune would write them
into the driver's staging folder and copy them to the study as each trial ends, which copies a W&B run of the
last trial before W&B has finished writing it. The study name is the experiment (MLflow, Aim) or project (W&B).
"""

from __future__ import annotations

import importlib
import importlib.util
import time
from pathlib import Path

from ray.tune.logger import LoggerCallback

from ..errors import UserError
from ..storage import store
from ..storage.store import Location
from ..trial.rundir import METRIC_COLUMNS
from .launch import trial_param

# --callback name -> (package that must be installed, its Tune callback, its naming keyword, its files' keyword)
TRACKERS = {
    "mlflow": ("mlflow", None, None, None, None),  # ours: MLflowTrials
    "wandb": ("wandb", "ray.air.integrations.wandb", "WandbLoggerCallback", "project", "dir"),
    "aim": ("aim", "ray.tune.logger.aim", "AimLoggerCallback", "experiment_name", "repo"),
}
KEY_TAG = "ablation.key"


def tracker_home(storage: Location) -> Path:
    """Where the trackers keep their local files (mlflow.db, W&B's wandb/, Aim's .aim/): beside the studies for a
    local storage, else the current folder (a database or a tracker's repository does not live on object storage)."""
    return Path.cwd() if store.is_uri(storage) else Path(storage).expanduser().resolve()


def tracking_uri(given: str | None, home: Path) -> str:
    """--tracking-uri, else MLFLOW_TRACKING_URI (MLflow's own variable), else an SQLite store, mlflow.db, in the
    trackers' home. Not a folder of files: MLflow 3 keeps its file store in maintenance and refuses it by default."""
    import os

    if given:
        return given
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{home / 'mlflow.db'}"


def tracker_callbacks(names: list[str], study_name: str, uri: str, study_dir: Location, home: Path) -> list:
    """The callbacks named on the command line; a missing package fails here, before any work."""
    out = []
    for name in names:
        if name not in TRACKERS:
            raise UserError(f"--callback {name}: unknown tracker; choose from {', '.join(TRACKERS)}")
        package, module, cls, naming, files = TRACKERS[name]
        if importlib.util.find_spec(package) is None:
            raise UserError(f"--callback {name} needs the {package} package: pip install {package}")
        if name == "mlflow":
            out.append(MLflowTrials(uri, study_name, study_dir))
        else:
            # the home exists by the time they write: the studies are in it
            out.append(getattr(importlib.import_module(module), cls)(**{naming: study_name, files: str(home)}))
    return out


class MLflowTrials(LoggerCallback):
    """One MLflow run per study trial, continued across invocations (see the module docstring). The trials'
    files are the record: at the start of a sweep every trial with epochs gets its run brought up to them (an
    epoch a killed driver trained but never logged, a trial finished before the tracker was asked for), and so
    does a trial resumed now, before its new epochs arrive."""

    def __init__(self, uri: str, experiment: str, study_dir: Location):
        self.uri, self.experiment, self.study_dir = uri, experiment, study_dir
        self.runs: dict[str, str] = {}  # trial key -> MLflow run id

    def setup(self, *args, **kwargs) -> None:
        from mlflow.tracking import MlflowClient

        from ..study.records import trial_records

        self.client = MlflowClient(tracking_uri=self.uri)
        found = self.client.get_experiment_by_name(self.experiment)
        self.experiment_id = found.experiment_id if found else self.client.create_experiment(self.experiment)
        for r in trial_records(self.study_dir):
            if r["current"] and r["rows"]:
                self._open(r["key"], r["name"], r["config"], str(r["location"]), r["rows"])
        self.runs.clear()  # opened again as each trial starts

    def _open(self, key: str, name: str, config: dict, where: str, rows: list[dict]) -> str:
        """The trial's run, found by its key or created (with its config as params), holding every epoch of
        `rows` that it lacks; FINISHED once the last epoch is in."""
        from mlflow.entities import Param

        found = self.client.search_runs([self.experiment_id], filter_string=f"tags.`{KEY_TAG}` = '{key}'",
                                        max_results=1)
        if found:
            run_id = found[0].info.run_id
        else:
            run_id = self.client.create_run(self.experiment_id, run_name=name,
                                            tags={KEY_TAG: key, "ablation.dir": where}).info.run_id
            self.client.log_batch(run_id, params=[Param(k, str(v)) for k, v in sorted(config.items())])
        logged = {m.step for m in self.client.get_metric_history(run_id, "test_acc")}
        for row in rows:
            if row["epoch"] not in logged:
                self._log(run_id, row)
        finished = bool(rows) and rows[-1]["epoch"] >= config["epochs"]
        self.client.update_run(run_id, status="FINISHED" if finished else "RUNNING")
        self.runs[key] = run_id
        return run_id

    def _log(self, run_id: str, row: dict) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(run_id, metrics=[
            Metric(k, float(row[k]), now, int(row["epoch"])) for k in METRIC_COLUMNS
            if k != "epoch" and isinstance(row.get(k), (int, float)) and not isinstance(row[k], bool)])

    def log_trial_start(self, trial) -> None:
        from ..trial.rundir import read_rows

        param = trial_param(trial)
        if param["key"] not in self.runs:
            location = param["dir"] if store.is_uri(param["dir"]) else Path(param["dir"])
            self._open(param["key"], param["name"], param["config"], param["dir"], read_rows(location))

    def log_trial_result(self, iteration: int, trial, result: dict) -> None:
        if "epoch" not in result:
            return
        self.log_trial_start(trial)  # a result can reach the callbacks before the trial's start does
        run_id = self.runs[trial_param(trial)["key"]]
        self._log(run_id, result)
        if result["epoch"] >= result.get("epochs", float("inf")):  # finished now, even if the driver dies before
            self.client.set_terminated(run_id, status="FINISHED")  # Tune's end of the trial reaches us

    def log_trial_end(self, trial, failed: bool = False) -> None:
        run_id = self.runs.pop(trial_param(trial)["key"], None)
        if run_id is not None:
            self.client.set_terminated(run_id, status="FAILED" if failed else "FINISHED")

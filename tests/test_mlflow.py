"""`--callback mlflow` for real (mlflow is a test extra): a study's trials arrive in a local MLflow tracking store
as one run per trial, with the trial's config as params and every epoch's metrics at its epoch number, equal
to the trial's own rows; a driver SIGKILLed mid-study and rerun continues each trial's run (no second one)."""

from __future__ import annotations

import pytest
from conftest import write_spec
from helpers import kill_driver, rows_by_trial, start_driver, sweep, trained_so_far, wait_for

from ablation.study.records import read_manifest

mlflow = pytest.importorskip("mlflow")

pytestmark = pytest.mark.slow  # two sweeps and a kill


def test_mlflow_gets_a_run_per_trial_with_every_epoch_and_a_resumed_trial_continues_its_run(tmp_path):
    from mlflow.tracking import MlflowClient

    spec = write_spec(tmp_path / "m.yaml", name="m", seeds=[0], freeze=[4], finetune={"epochs": 3})
    study, uri = tmp_path / "m", f"sqlite:///{tmp_path / 'tracking.db'}"
    proc = start_driver(spec, tmp_path, "--callback", "mlflow", "--tracking-uri", uri)
    wait_for(lambda: trained_so_far(study) >= 3, proc, "three epochs")  # the rotation run, a fine-tune begun
    kill_driver(proc)
    done = sweep(spec, tmp_path, "--callback", "mlflow", "--tracking-uri", uri)
    assert done.returncode == 0, done.stderr[-3000:]

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("m")
    runs = client.search_runs([experiment.experiment_id])
    manifest = read_manifest(study)
    keys = {entry["name"]: key for key, entry in manifest["trials"].items()}
    assert sorted(r.data.tags["ablation.key"] for r in runs) == sorted(keys.values())  # one run each, not two
    by_name = {r.info.run_name: r for r in runs}
    for name, rows in rows_by_trial(study).items():
        run = by_name[name]
        assert run.info.status == "FINISHED", name
        config = manifest["trials"][keys[name]]["config"]
        assert run.data.params["lr"] == str(config["lr"]) and run.data.params["seed"] == str(config["seed"])
        for metric in ("train_loss", "test_acc", "test_loss"):
            history = client.get_metric_history(run.info.run_id, metric)
            last = {}
            for m in sorted(history, key=lambda m: m.timestamp):  # a retrained epoch is logged again: keep the last
                last[m.step] = m.value
            assert last == {r["epoch"]: r[metric] for r in rows}, (name, metric)

"""A study's life, generated: sweeps over random subsets of a grid, drivers killed at random moments (SIGKILL
or SIGTERM), one file of one trial torn or corrupted, status, report, in random order (hypothesis's state
machine), on a tiny real study. After every step: no traceback, exit codes as the README documents, no
finished trial trained again, every torn metrics file named in a warning until a sweep rewrites it, and the
report's cells those of the newest spec.

Each sequence starts from a copy of one study trained once (GRID), with some of its trials removed (never
started), so that a sweep has something to train and a kill something to interrupt."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import copy_study, write_spec
from helpers import kill_driver, start_driver
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from ablation.cli import main
from ablation.study.records import read_manifest, trial_records

pytestmark = pytest.mark.slow

SEEDS, INITS = (0, 1), ("pretrained", "random")
GRID = dict(train_subset=64, test_subset=32, batch_size=32, eval_batch_size=64, freeze=[0],
            pretrain={"epochs": 1}, finetune={"epochs": 2})
SEQUENCES = 20  # generated sequences per run (CI included)
STEPS = 4  # steps per sequence at most


@pytest.fixture(scope="module")
def grid_study(tmp_path_factory, ray_session):
    """The whole grid (seeds x init, freeze 0: 2 rotation runs + 4 fine-tunes), trained once."""
    root = tmp_path_factory.mktemp("grid")
    spec = write_spec(root / "life.yaml", name="life", seeds=list(SEEDS), init=list(INITS), **GRID)
    assert main(["sweep", str(spec), "--storage", str(root)]) == 0
    return root / "life"


def run(*args: str) -> tuple[int, str, str]:
    """`ablation ARGS` in this process (status, report, and sweeps on the test run's Ray): code, out, err."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


class Lifecycle(RuleBasedStateMachine):
    root: Path
    template: Path

    @initialize(forget=st.sets(st.sampled_from(["rot-s1", "ft-pretrained-f0-s1", "ft-random-f0-s0",
                                                "ft-random-f0-s1"]), min_size=1, max_size=3))
    def start(self, forget):
        """A copy of the grid study whose `forget` trials never started."""
        self.study = copy_study(self.template, self.root / "life")
        for entry in json.loads((self.study / "manifest.json").read_text())["trials"].values():
            if entry["name"] in forget:
                shutil.rmtree(self.study / "trials" / entry["dir"], ignore_errors=True)
        self.trained: dict[str, int] = {}  # finished trial -> epochs it had trained when first seen finished
        self.broken: set[str] = set()  # trials whose checkpoint was corrupted: they may train again
        self.torn: set[str] = set()  # trials whose metrics.jsonl was torn and no sweep has rewritten since
        self.spec_n = 0
        self.note_finished()

    def records(self) -> dict[str, dict]:
        return {r["name"]: r for r in trial_records(self.study)}

    def note_finished(self) -> None:
        for name, r in self.records().items():
            if r["state"] == "finished" and name not in self.trained:
                self.trained[name] = r["trained"]

    def spec(self, seeds, inits) -> Path:
        self.spec_n += 1
        return write_spec(self.root / f"life{self.spec_n}.yaml", name="life", seeds=sorted(seeds),
                          init=sorted(inits), **GRID)

    @rule(seeds=st.sets(st.sampled_from(SEEDS), min_size=1), inits=st.sets(st.sampled_from(INITS), min_size=1))
    def sweep(self, seeds, inits):
        code, out, err = run("sweep", str(self.spec(seeds, inits)), "--storage", str(self.root))
        assert code == 0 and "Traceback" not in out + err, err[-3000:]
        self.torn.clear()  # rewritten from their checkpoints, or finished anew
        planned = set(read_manifest(self.study)["invocations"][-1]["planned"])
        assert {r["key"] for r in self.records().values() if r["state"] == "finished"} >= planned

    @rule(seeds=st.sets(st.sampled_from(SEEDS), min_size=1), inits=st.sets(st.sampled_from(INITS), min_size=1),
          sig=st.sampled_from([signal.SIGKILL, signal.SIGTERM]), after=st.floats(0.5, 12.0))
    def kill(self, seeds, inits, sig, after):
        """A driver of its own, signalled `after` seconds into its run (Ray's start included)."""
        proc = start_driver(self.spec(seeds, inits), self.root)
        deadline = time.monotonic() + after
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        ended = proc.poll() is not None
        if not ended:
            kill_driver(proc, sig)
        err = proc.stderr.read()
        assert "Traceback" not in err, err[-3000:]
        # (-SIGTERM: the signal came while the interpreter was still starting, before main() took over SIGTERM;
        # nothing was written then, and it says nothing)
        expected = {0} if ended else {0, -signal.SIGKILL} if sig == signal.SIGKILL else {0, 128 + signal.SIGTERM}
        early = sig == signal.SIGTERM and proc.returncode == -signal.SIGTERM and not err.strip()
        assert proc.returncode in expected or early, (proc.returncode, err[-3000:])
        if proc.returncode == 0:
            self.torn.clear()
        elif sig == signal.SIGTERM and not early:
            assert err.rstrip().endswith("rerun the same command to resume"), err[-3000:]

    @rule(which=st.integers(0, 5), kind=st.sampled_from(["tear metrics", "corrupt checkpoint"]),
          at=st.floats(0.05, 0.95))
    def damage(self, which, kind, at):
        started = sorted(name for name, r in self.records().items() if r["rows"])
        if not started:
            return
        name = started[which % len(started)]
        folder = self.records()[name]["location"]
        if kind == "tear metrics":
            target = Path(folder) / "metrics.jsonl"
            text = target.read_text()
            cut = max(1, int(len(text) * at))
            if text[cut - 1] == "\n":  # mid-line, always
                cut -= 1
            target.write_text(text[:cut])
            self.torn.add(name)
        else:
            newest = sorted((Path(folder) / "checkpoints").iterdir())[-1]
            target = max(newest.iterdir(), key=lambda p: p.stat().st_size)
            data = target.read_bytes()
            target.unlink()  # hard-linked to the template: replaced, not written in place
            target.write_bytes(data[:int(len(data) * at)])
            self.broken.add(name)

    def read(self, command: str) -> None:
        """`ablation status|report STUDY`: exit 0, no traceback, every torn metrics file named in a warning."""
        code, out, err = run(command, str(self.study))
        assert code == 0 and "Traceback" not in out + err
        for name in self.torn:
            assert f"ablation: warning: trial {name}: metrics.jsonl line " in err, err

    @rule()
    def status(self):
        self.read("status")

    @rule()
    def report(self):
        self.read("report")
        trials = pd.read_csv(self.study / "report" / "tables" / "trials.csv")
        manifest = read_manifest(self.study)
        spec = manifest["invocations"][-1]["spec"] if manifest["invocations"] else None
        if spec:  # the report's cells are those of the newest spec: its seeds x init, nothing else
            current = trials[trials["current"]]
            finetunes = current[current["stage"] == "finetune"]
            assert set(finetunes["init"]) <= set(spec["init"]) and set(current["seed"]) <= set(spec["seeds"])
            assert set(current["key"]) == set(manifest["invocations"][-1]["planned"])

    @invariant()
    def nothing_finished_is_trained_again(self):
        if not hasattr(self, "study"):
            return
        records = self.records()
        for name, count in self.trained.items():
            if name not in self.broken:
                assert records[name]["trained"] == count, f"{name} trained again: {count} -> {records[name]['trained']}"
        self.note_finished()

    def teardown(self):
        if hasattr(self, "study"):
            shutil.rmtree(self.root, ignore_errors=True)
            self.root.mkdir()


def test_a_study_survives_any_sequence_of_sweeps_kills_damage_status_and_report(tmp_path, grid_study):
    Lifecycle.root, Lifecycle.template = tmp_path / "work", grid_study
    Lifecycle.root.mkdir()
    run_machine = Lifecycle.TestCase
    run_machine.settings = settings(max_examples=SEQUENCES, stateful_step_count=STEPS, deadline=None,
                                    derandomize=os.environ.get("CI") == "true", database=None,
                                    suppress_health_check=list(HealthCheck),
                                    phases=[Phase.explicit, Phase.generate])  # no shrinking: minutes of sweeps
    run_machine().runTest()

"""The study's record of each invocation's end: what the manifest says happened, and the lock released."""

from __future__ import annotations

import json

import pytest

from ablation import study


@pytest.mark.parametrize("failed, skipped, unfinished, interrupted, outcome", [
    ({}, {}, 0, False, "finished"),
    ({}, {}, 3, True, "stopped with 3 unfinished"),  # Ctrl-C: Tune returns as if it were done
    ({}, {}, 3, False, "ended with 3 unfinished"),  # no stop signal: not to be called a Ctrl-C
    ({"k": "error.txt"}, {"j": "its rotation run failed"}, 0, False, "1 failed, 1 skipped"),
    ({"k": "error.txt"}, {}, 2, True, "1 failed, stopped with 2 unfinished"),
    ({}, {}, None, True, "ended by an exception or a second interrupt")])
def test_an_invocations_end_says_what_happened(tmp_path, failed, skipped, unfinished, interrupted, outcome):
    manifest = {"format": study.FORMAT, "trials": {}, "invocations": [{"started": "t"}]}
    (tmp_path / study.LOCK).write_text("1 host\n")
    study.end(tmp_path, manifest, failed, skipped, unfinished, interrupted)
    run = json.loads((tmp_path / study.MANIFEST).read_text())["invocations"][-1]
    assert run["outcome"] == outcome and run["failed"] == failed and run["ended"]
    assert not (tmp_path / study.LOCK).exists()

"""A trial's states: one vocabulary for the study (which derives them), tuning (whose choice waits on them),
status and the report. Why a module of its own: tuning.py cannot import records.py (records -> spec -> tuning).
"outside the current spec" is said beside the state, not instead of it."""

FINISHED, RUNNING, WAITING, INTERRUPTED, FAILED, SKIPPED, NOT_STARTED, STOPPED = (
    "finished", "running", "waiting", "interrupted", "failed", "skipped", "not started", "stopped early")
DONE = (FINISHED, STOPPED)  # nothing left to train: a rerun starts neither

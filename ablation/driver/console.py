"""The console of a long command (`ablation sweep`): its stdout lines, which a reader may stop reading.

Why: `ablation sweep ... | head` closes the pipe after ten lines. The write that fails then must not end the
sweep, nor (inside Tune's callback) mark a finished trial as crashed: console output never decides a trial's
fate. The first write that finds the reader gone points stdout at /dev/null; the log file keeps every line.
"""

from __future__ import annotations

import os
import sys


def say(text: str, end: str = "\n") -> None:
    """Write and flush one piece of console output; a reader that left turns the console off for good."""
    try:
        sys.stdout.write(text + end)
        sys.stdout.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # also what is still in the buffer

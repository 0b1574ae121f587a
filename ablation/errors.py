"""How bad input is said: every error a user can fix is one line that names the problem and the fix.

Why a module of its own: every layer raises these (a trial's config, a study's files, the storage), and the
CLI turns each into `ablation: error: <line>` and exit code 2.
"""

from __future__ import annotations

import difflib
from typing import Any, Iterable


class UserError(Exception):
    """Bad input the user can fix (config, data, checkpoint, study); the CLI prints its one-line message."""


class ConfigError(UserError, ValueError):
    """A bad key or value in a config, spec or override."""


def unknown_key_message(key: Any, known: Iterable[str], where: str) -> str:
    close = difflib.get_close_matches(key, list(known), n=1) if isinstance(key, str) else []
    hint = f"did you mean '{close[0]}'?" if close else "valid keys: " + ", ".join(sorted(known))
    return f"{where}: unknown key {shown(key)} ({hint})"


def shown(value: Any, limit: int = 60) -> str:
    """repr of a value for a one-line message: quotes and escapes (a newline stays on the line), cut short."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


class Stopped(KeyboardInterrupt):
    """A stop signal (SIGTERM, SIGHUP) ended the command as Ctrl-C would: `ablation` exits 128 + its number."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def check_block(raw: object, keys: set[str], where: str, example: str) -> None:
    """A spec block (tune:, until:) is a mapping of known keys: else one line naming the problem."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: must be a mapping ({example})")
    for key in raw:
        if key not in keys:
            raise ConfigError(unknown_key_message(key, keys, where))

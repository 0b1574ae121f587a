"""The README's config table is the code's: a default changed in config.py without the README fails here."""

from __future__ import annotations

from pathlib import Path

from ablation.config import defaults_table


def test_readme_config_table_is_defaults_table():
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    assert defaults_table().strip() in readme

"""Before a study runs on a Ray cluster: can every node see the study's storage and read its data?

Why: a worker node that mounts the storage elsewhere (or not at all) would write its trials into a second,
private copy of the study that the driver never reads; a node without the data fails each trial it gets,
after minutes of retries. Both are one line here, before any trial starts. The driver leaves a probe file
in the storage; a zero-CPU task pinned to each alive node looks for it and opens each data source there.
"""

from __future__ import annotations

import contextlib
import os
import platform
import uuid
from pathlib import Path

from ..errors import UserError
from ..trial.config import TrialConfig


def _look(probe: str, configs: list[dict]) -> list[str]:
    """On one node: what it cannot see (the probe file, each distinct data source)."""
    problems = []
    if not Path(probe).exists():
        problems.append(f"cannot see the study storage {Path(probe).parent} (mount it at the same path on "
                        f"every node)")
    from ..trial.sources import check_present

    for values in configs:
        cfg = TrialConfig.from_dict(values)
        try:
            check_present(cfg)
        except UserError as exc:
            problems.append(str(exc))
    return problems


def check_nodes(storage: Path, configs: list[TrialConfig]) -> None:
    """Raise a one-line UserError naming the first node that cannot see the storage or the data."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    sources = {(c.dataset, c.data_dir, c.cache_dir): c.to_dict() for c in configs}
    created = not storage.exists()
    storage.mkdir(parents=True, exist_ok=True)
    probe = storage / f".ablation-probe-{uuid.uuid4().hex}"
    probe.write_text(platform.node())
    try:
        look = ray.remote(num_cpus=0)(_look)
        nodes = [n for n in ray.nodes() if n["Alive"]]
        answers = ray.get([look.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                           .remote(str(probe), list(sources.values())) for n in nodes], timeout=300)
    finally:
        probe.unlink(missing_ok=True)
        if created:
            with contextlib.suppress(OSError):
                os.rmdir(storage)
    for node, problems in zip(nodes, answers):
        if problems:
            raise UserError(f"Ray node {node['NodeManagerAddress']} ({node['NodeID'][:8]}): {problems[0]}")

"""The Dagster executor of a deployment, chosen by configuration, not by code.

Why: one code location serves a laptop (Dagster's default in-process/multiprocess executor)
and a cluster (image steps on dask.distributed through ``dagster-dask``). ``PAD_ASSETS_DASK``
names the dask cluster as YAML (inline, or the path of a YAML file), exactly the
``cluster`` selector of ``dagster_dask.dask_executor``:

- ``existing: {address: tcp://scheduler:8786}``: a running scheduler (any machines);
- ``local: {n_workers: 2, threads_per_worker: 1}``: a cluster on this machine;
- ``slurm: {cores: 1, memory: 4GB, queue: normal}`` (or ``pbs``, ``sge``, ``lsf``...):
  workers submitted as batch jobs by dask-jobqueue, what university clusters run.

Unset: Dagster's default executor, as before.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from ..errors import InvalidInputError

ENV = "PAD_ASSETS_DASK"
CLUSTER_KINDS = ("existing", "local", "yarn", "ssh", "pbs", "moab", "sge", "lsf", "slurm",
                 "oar", "kube")


def dask_cluster_config(value: str | None = None) -> dict[str, Any] | None:
    """The ``cluster`` config from ``value`` (default: ``$PAD_ASSETS_DASK``), validated."""
    text = os.environ.get(ENV) if value is None else value
    if not text or not text.strip():
        return None
    path = Path(text).expanduser()
    if "\n" not in text and path.suffix in (".yaml", ".yml") and path.is_file():
        text = path.read_text(encoding="utf-8")
    try:
        cfg = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InvalidInputError(f"{ENV}: not YAML ({exc}); expected e.g. "
                                "'existing: {address: tcp://host:8786}'") from exc
    if not isinstance(cfg, dict) or len(cfg) != 1 or next(iter(cfg)) not in CLUSTER_KINDS:
        raise InvalidInputError(f"{ENV}: {str(cfg)[:80]!r}; expected one of {CLUSTER_KINDS} "
                                "with its options, e.g. 'existing: {address: tcp://host:8786}'")
    kind, opts = next(iter(cfg.items()))
    if opts is None:
        opts = {}
    if not isinstance(opts, dict) or (kind == "existing" and "address" not in opts):
        raise InvalidInputError(f"{ENV}: {kind} options {opts!r}; expected a mapping"
                                + (" with an 'address'" if kind == "existing" else ""))
    return {kind: opts}


def executor_from_env() -> Any:
    """``dagster_dask.dask_executor`` configured from ``$PAD_ASSETS_DASK``, or None."""
    cfg = dask_cluster_config()
    if cfg is None:
        return None
    try:
        from dagster_dask import dask_executor
    except ImportError as exc:
        raise InvalidInputError(f"{ENV} is set but dagster-dask is not installed; expected "
                                "`pip install pad_assets[scaleout]`") from exc
    return dask_executor.configured({"cluster": cfg}, name="pad_dask")


__all__ = ["CLUSTER_KINDS", "ENV", "dask_cluster_config", "executor_from_env"]

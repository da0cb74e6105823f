"""Running pad_assets on many machines: the deployment profile (README "Scale-out").

Why a package of its own: nothing here is needed on one machine. It holds the example
``dagster.yaml`` (PostgreSQL storage, queued run coordinator for the daemon), the executor
chosen by configuration (``PAD_ASSETS_DASK``: image steps on a dask.distributed cluster
through dagster-dask, including SLURM/SGE/PBS through dask-jobqueue), the read-through /
write-back between each worker's local cache and the shared tier (``PAD_TIER_URL``), the
guard that keeps SQLite and HDF5 off network file systems, and the real parts started on
127.0.0.1 for tests and benchmarks. The backfill driver that splits a dataset into batch runs
the workers share is ``orchestration.backfill`` (``--parallel``), the same as on one machine.
"""

from pathlib import Path

#: The example instance configuration (copy it to ``$DAGSTER_HOME/dagster.yaml``).
DAGSTER_YAML = Path(__file__).with_name("dagster.yaml")

__all__ = ["DAGSTER_YAML"]

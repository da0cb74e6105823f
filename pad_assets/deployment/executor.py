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


class _Sealed:
    """Arguments dask must not look inside. dask >= 2024.12 walks every tuple argument of
    ``Client.submit`` for futures, and Dagster's ``@record`` values (the partition subsets
    in a run's known state) refuse iteration; dagster-dask 0.29 passes them bare, so every
    partition-range run failed with "Iteration is not allowed on `@record`"."""

    def __init__(self, *args: Any) -> None:
        self.args = args


def _step_on_worker(dependencies: Any, sealed: _Sealed) -> Any:
    from dagster_dask.executor import query_on_dask_worker

    return query_on_dask_worker(dependencies, *sealed.args)


def _dask_executor_class() -> type:
    import dask.distributed
    from dagster._core.errors import raise_execution_interrupts
    from dagster._utils import iterate_with_context
    from dagster_dask.executor import DaskExecutor, get_dask_resource_requirements

    class SealedDaskExecutor(DaskExecutor):
        """dagster-dask's executor (same config, same worker function), submitting each step
        with its arguments sealed (see ``_Sealed``)."""

        def _cluster(self, job_name: str) -> Any:
            if self.cluster_type == "existing":
                return self.cluster_configuration["address"]
            if self.cluster_type in ("local", "ssh"):
                module, cls = "dask.distributed", {"local": "LocalCluster",
                                                   "ssh": "SSHCluster"}[self.cluster_type]
            elif self.cluster_type in ("pbs", "moab", "sge", "lsf", "slurm", "oar"):
                module, cls = "dask_jobqueue", f"{self.cluster_type.upper()}Cluster"
            elif self.cluster_type == "yarn":
                module, cls = "dask_yarn", "YarnCluster"
            else:
                module, cls = "dask_kubernetes", "KubeCluster"
            import importlib

            return getattr(importlib.import_module(module), cls)(**self.build_dict(job_name))

        def execute(self, plan_context: Any, execution_plan: Any) -> Any:
            if not plan_context.instance.is_persistent:
                raise InvalidInputError("the dask executor needs a persistent Dagster "
                                        "instance (DAGSTER_HOME with Postgres storage)")
            job_name = plan_context.job_name
            instance_ref = plan_context.instance.get_ref()
            with dask.distributed.Client(self._cluster(job_name)) as client:
                futures: dict[str, Any] = {}
                for level in execution_plan.get_steps_to_execute_by_level():
                    for step in level:
                        deps = [futures[k] for inp in step.step_inputs
                                for k in inp.dependency_keys]
                        futures[step.key] = client.submit(
                            _step_on_worker, deps,
                            _Sealed(plan_context.reconstructable_job, plan_context.dagster_run,
                                    plan_context.run_config, [step.key], instance_ref,
                                    execution_plan.known_state),
                            key=f"{job_name}.{step.key}.{plan_context.run_id[:8]}",
                            resources=get_dask_resource_requirements(step.tags))
                done = dask.distributed.as_completed(list(futures.values()), with_results=True)
                for _, events in iterate_with_context(raise_execution_interrupts, done):
                    yield from events

    return SealedDaskExecutor


def executor_from_env() -> Any:
    """dagster-dask's executor configured from ``$PAD_ASSETS_DASK``, or None."""
    cfg = dask_cluster_config()
    if cfg is None:
        return None
    try:
        from dagster_dask import dask_executor
    except ImportError as exc:
        raise InvalidInputError(f"{ENV} is set but dagster-dask is not installed; expected "
                                "`pip install pad_assets[scaleout]`") from exc
    import dagster as dg

    sealed = _dask_executor_class()

    @dg.executor(name="pad_dask", config_schema=dask_executor.config_schema,
                 requirements=dg.multiple_process_executor_requirements())
    def pad_dask_executor(init_context: Any) -> Any:
        ((kind, options),) = init_context.executor_config["cluster"].items()
        return sealed(kind, options)

    return pad_dask_executor.configured({"cluster": cfg}, name="pad_dask")


__all__ = ["CLUSTER_KINDS", "ENV", "dask_cluster_config", "executor_from_env"]

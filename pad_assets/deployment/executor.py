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

**One batch step per worker at a time, spread over the workers** (dask worker resources,
the mechanism dask provides for "at most N tasks of this kind on a worker at once"). Every
step this executor submits requests one ``pad_batch`` (``BATCH_RESOURCE``) unless its op
declares dagster-dask's own ``dagster-dask/resource_requirements`` tag; each worker declares
how many it offers (``--resources pad_batch=1``). A worker then never runs two image steps
at once whatever its thread count (Dagster steps are not meant to share a process's threads,
and an image step already keeps a core busy), and a step waits on the scheduler for a free
slot instead of queueing behind a busy worker while another is idle. Why not ``workers=``
pins chosen by the driver: they tie a batch to one named worker (a lost worker strands its
batches, and the driver would have to know the cluster), while a resource needs only the
workers' declaration and keeps dask's placement, work stealing and ``adapt()`` scaling.
Clusters this executor starts (``local``, ``ssh``, the dask-jobqueue kinds) get the
declaration added; workers of an ``existing`` scheduler must be started with it, and a run
fails at once, naming the flag, when the scheduler has workers and none declares it.

After each step, the run's event log gets an engine event naming the dask worker that ran
it and when (``step_placements`` reads them back): the UI shows where a batch ran.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..errors import InvalidInputError

ENV = "PAD_ASSETS_DASK"
CLUSTER_KINDS = ("existing", "local", "yarn", "ssh", "pbs", "moab", "sge", "lsf", "slurm",
                 "oar", "kube")
JOBQUEUE_KINDS = ("pbs", "moab", "sge", "lsf", "slurm", "oar")
#: the dask worker resource one pad_assets step holds while it runs (see module docstring)
BATCH_RESOURCE = "pad_batch"
#: engine-event metadata keys of a step's placement
PLACEMENT_KEYS = ("pad/dask_worker", "pad/dask_address", "pad/step", "pad/start", "pad/end")


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


def _step_on_worker(dependencies: Any, sealed: _Sealed) -> tuple[dict[str, Any], Any]:
    """dagster-dask's worker function, plus where and when it ran (for the run's log)."""
    from dagster_dask.executor import query_on_dask_worker
    from distributed import get_worker

    worker = get_worker()
    start = time.time()
    events = query_on_dask_worker(dependencies, *sealed.args)
    return {"worker": str(worker.name), "address": worker.address, "start": start,
            "end": time.time()}, events


def with_batch_resource(kind: str, options: dict[str, Any]) -> dict[str, Any]:
    """The cluster options with each worker declaring one ``pad_batch``, for the clusters
    this executor starts; a declaration already in ``options`` is kept."""
    opts = dict(options)
    if kind == "local":
        opts["resources"] = {BATCH_RESOURCE: 1, **(opts.get("resources") or {})}
    elif kind == "ssh":
        wopts = dict(opts.get("worker_options") or {})
        wopts["resources"] = {BATCH_RESOURCE: 1, **(wopts.get("resources") or {})}
        opts["worker_options"] = wopts
    elif kind in JOBQUEUE_KINDS:
        args = list(opts.get("worker_extra_args") or [])
        if not any(BATCH_RESOURCE in str(a) for a in args):
            args += ["--resources", f"{BATCH_RESOURCE}=1"]
        opts["worker_extra_args"] = args
    return opts


def step_resources(step_tags: Any) -> dict[str, float]:
    """What a step holds on its worker: the op's dagster-dask tag, else one ``pad_batch``."""
    from dagster_dask.executor import get_dask_resource_requirements

    return get_dask_resource_requirements(step_tags) or {BATCH_RESOURCE: 1}


def require_batch_workers(client: Any, address: str) -> None:
    """Fail at once when the scheduler's workers cannot run a step (none declares
    ``pad_batch``): the steps would wait forever. No workers yet (a cluster still scaling
    up) is not an error: the steps wait for them, as dask does."""
    workers = client.scheduler_info(n_workers=-1).get("workers", {})
    if workers and not any((w.get("resources") or {}).get(BATCH_RESOURCE, 0) >= 1
                           for w in workers.values()):
        names = sorted(str(w.get("name", a)) for a, w in workers.items())
        raise InvalidInputError(
            f"dask scheduler {address}: its workers {names} declare no '{BATCH_RESOURCE}' "
            f"resource, so no pad_assets step can run there; expected each worker started "
            f"with `--resources {BATCH_RESOURCE}=1` (README Scale-out)")


@dataclass(frozen=True)
class Placement:
    """Where and when one step of a run executed (from the run's engine events)."""

    step: str
    worker: str
    address: str
    start: float
    end: float


def step_placements(instance: Any, run_id: str) -> list[Placement]:
    """The dask placements recorded in ``run_id``'s event log, in start order."""
    import dagster as dg

    out = []
    for rec in instance.all_logs(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT):
        data = rec.dagster_event.engine_event_data if rec.dagster_event else None
        meta = data.metadata if data else {}
        if all(k in meta for k in PLACEMENT_KEYS):
            w, a, st, t0, t1 = (meta[k].value for k in PLACEMENT_KEYS)
            out.append(Placement(str(st), str(w), str(a), float(t0), float(t1)))
    return sorted(out, key=lambda p: p.start)


def _dask_executor_class() -> type:
    import dask.distributed
    from dagster._core.errors import raise_execution_interrupts
    from dagster._core.events import DagsterEvent, EngineEventData
    from dagster._utils import iterate_with_context
    from dagster_dask.executor import DaskExecutor

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

            kwargs = with_batch_resource(self.cluster_type, self.build_dict(job_name))
            return getattr(importlib.import_module(module), cls)(**kwargs)

        def execute(self, plan_context: Any, execution_plan: Any) -> Any:
            if not plan_context.instance.is_persistent:
                raise InvalidInputError("the dask executor needs a persistent Dagster "
                                        "instance (DAGSTER_HOME with Postgres storage)")
            job_name = plan_context.job_name
            instance_ref = plan_context.instance.get_ref()
            cluster = self._cluster(job_name)
            with dask.distributed.Client(cluster) as client:
                require_batch_workers(client, str(getattr(cluster, "scheduler_address",
                                                          cluster)))
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
                            resources=step_resources(step.tags))
                keys = {f.key: k for k, f in futures.items()}
                done = dask.distributed.as_completed(list(futures.values()), with_results=True)
                for fut, (where, events) in iterate_with_context(raise_execution_interrupts,
                                                                 done):
                    yield from events
                    yield DagsterEvent.engine_event(
                        plan_context,
                        f"step {keys[fut.key]} ran on dask worker {where['worker']} "
                        f"({where['address']}) in {where['end'] - where['start']:.1f} s",
                        EngineEventData(dict(zip(PLACEMENT_KEYS, (
                            where["worker"], where["address"], keys[fut.key],
                            where["start"], where["end"]), strict=True))))

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


__all__ = ["BATCH_RESOURCE", "CLUSTER_KINDS", "ENV", "Placement", "dask_cluster_config",
           "executor_from_env", "require_batch_workers", "step_placements", "step_resources",
           "with_batch_resource"]

"""Start the real parts of a scale-out deployment on 127.0.0.1, in a scratch folder.

Why: the tests, the B11 benchmark and a lab trying the profile on one machine need the
same parts the cluster runs (PostgreSQL from the system packages, an S3-protocol server,
a dask scheduler and worker processes), started the same way and stopped cleanly, also when
the process that started them is killed (``reaper``: a watchdog undoes what is left). Each
starter raises ``PartUnavailable`` with the reason when its part cannot start here (no
``initdb``, no ``moto``...), so a caller can report that instead of guessing.
"""

from __future__ import annotations

import contextlib
import glob
import importlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class PartUnavailable(RuntimeError):
    """A part of the deployment cannot start on this machine (the message says why)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(pred, what: str, timeout: float, proc: subprocess.Popen | None = None,
          log: Path | None = None) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
            raise PartUnavailable(f"{what} exited with status {proc.returncode}: {tail}")
        with contextlib.suppress(Exception):
            if pred():
                return
        time.sleep(0.2)
    raise PartUnavailable(f"{what} did not start within {timeout:.0f} s")


# Every part runs in a session of its own, registered with this process's watchdog
# (``reaper``): if this process dies without its teardown (SIGTERM, SIGKILL), the watchdog
# kills the part's process group; a part stopped here is dropped from its list.
_TOKENS: dict[int, int] = {}


def _spawn(cmd: Sequence[str], **kwargs: Any) -> subprocess.Popen:
    from .reaper import reaper

    proc = subprocess.Popen(list(cmd), start_new_session=True, **kwargs)
    _TOKENS[proc.pid] = reaper().kill_group_on_death(proc.pid)
    return proc


def _stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 15) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    # what the part left in its group (e.g. a log tailer of a dask worker's Dagster step)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    token = _TOKENS.pop(proc.pid, None)
    if token is not None:
        from .reaper import reaper

        reaper().forget(token)


# ------------------------------------------------------------------------- PostgreSQL
def pg_bindir() -> Path:
    """Where Debian's (or any) PostgreSQL server programs are."""
    found = shutil.which("initdb")
    if found and (Path(found).resolve().parent / "createdb").exists():
        return Path(found).resolve().parent
    cands = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0)
    if not cands:
        raise PartUnavailable("PostgreSQL server programs (initdb, pg_ctl) are not installed "
                              "(apt-get install postgresql)")
    return Path(cands[-1]).parent


@contextlib.contextmanager
def postgres(folder: Path) -> Iterator[str]:
    """A throw-away PostgreSQL server (initdb + pg_ctl) on 127.0.0.1; yields its URL.

    As root (CI, containers), the server runs as the ``postgres`` system user (PostgreSQL
    refuses root). fsync is off: the data is thrown away afterwards."""
    bindir = pg_bindir()
    folder.mkdir(parents=True, exist_ok=True)
    data, sock, log = folder / "pgdata", folder / "pgsock", folder / "postgres.log"
    sock.mkdir(exist_ok=True)
    prefix: list[str] = []
    if os.geteuid() == 0:
        import pwd

        try:
            pw = pwd.getpwnam("postgres")
        except KeyError as exc:
            raise PartUnavailable("running as root and there is no 'postgres' user to run "
                                  "the server as") from exc
        for p in (folder, sock):
            os.chown(p, pw.pw_uid, pw.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    port = free_port()
    run = dict(stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=folder)
    r = subprocess.run([*prefix, str(bindir / "initdb"), "-D", str(data), "-A", "trust",
                        "-U", "pad", "--no-sync", "-E", "UTF8"], **run)
    if r.returncode != 0:
        raise PartUnavailable(f"initdb failed: {r.stdout[-1500:]}")
    opts = (f"-c listen_addresses=127.0.0.1 -p {port} -k {sock} -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
    r = subprocess.run([*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log),
                        "-o", opts, "-w", "-t", "60", "start"], **run)
    stop = [*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"]
    if r.returncode != 0:
        subprocess.run(stop, **run)  # pg_ctl may time out on a server that did start
        tail = log.read_text(errors="replace")[-1500:] if log.exists() else ""
        raise PartUnavailable(f"pg_ctl start failed: {r.stdout[-800:]} {tail}")
    from .reaper import reaper

    token = reaper().run_on_death(stop)  # the postmaster is a daemon: pg_ctl stops it
    try:
        r = subprocess.run([*prefix, str(bindir / "createdb"), "-h", "127.0.0.1", "-p",
                            str(port), "-U", "pad", "dagster"], **run)
        if r.returncode != 0:
            raise PartUnavailable(f"createdb failed: {r.stdout[-800:]}")
        yield f"postgresql+psycopg2://pad@127.0.0.1:{port}/dagster"
    finally:
        subprocess.run(stop, **run)
        reaper().forget(token)


# --------------------------------------------------------------------- S3 (moto server)
@dataclass
class S3Server:
    endpoint: str
    bucket: str
    proc: subprocess.Popen

    @property
    def env(self) -> dict[str, str]:
        """What a process needs to reach the bucket through s3fs/botocore."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}

    def url(self, prefix: str) -> str:
        return f"s3://{self.bucket}/{prefix}"


def _require(module: str, what: str, extra: str) -> None:
    """``PartUnavailable`` (a listed skip off CI) when an optional part is not installed."""
    try:
        importlib.import_module(module)
    except ImportError as exc:
        raise PartUnavailable(f"{what} is not installed (pip install "
                              f"'pad_assets[{extra}]')") from exc


@contextlib.contextmanager
def s3_server(folder: Path, bucket: str = "pad-tier") -> Iterator[S3Server]:
    """moto's S3 server mode (a real HTTP S3 endpoint) on 127.0.0.1, with one bucket."""
    _require("moto.server", "moto[server]", "scaleout-test")
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = folder / "moto.log"
    with open(log, "wb") as out:
        proc = _spawn([sys.executable, "-m", "moto.server", "-H", "127.0.0.1",
                       "-p", str(port)], stdout=out, stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}"
    _forget_s3_clients()  # fsspec reuses an S3 client per process: it would keep an old endpoint
    try:
        _wait(lambda: urllib.request.urlopen(endpoint + "/moto-api/", timeout=2).status < 500,
              "moto S3 server", 60, proc, log)
        server = S3Server(endpoint, bucket, proc)
        import boto3

        boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing",
                     aws_secret_access_key="testing",
                     region_name="us-east-1").create_bucket(Bucket=bucket)
        yield server
    finally:
        _stop(proc)
        _forget_s3_clients()


def _forget_s3_clients() -> None:
    """s3fs caches one file-system instance per set of arguments; the endpoint comes from
    the environment (``AWS_ENDPOINT_URL``), which the cache key does not include."""
    with contextlib.suppress(ImportError):
        import s3fs

        s3fs.S3FileSystem.clear_instance_cache()


# ------------------------------------------------------------------------------ dask
@dataclass
class DaskCluster:
    address: str
    folder: Path
    scheduler: subprocess.Popen
    workers: dict[str, subprocess.Popen] = field(default_factory=dict)
    _args: dict[str, dict[str, Any]] = field(default_factory=dict)

    def add_worker(self, name: str, env: Mapping[str, str], cpus: Sequence[int] | None = None,
                   timeout: float = 120, nthreads: int = 1,
                   resources: Mapping[str, float] | None = None) -> subprocess.Popen:
        """One worker process (no nanny: a killed worker stays dead, as a lost machine
        does), optionally pinned to ``cpus`` with taskset. It declares ``resources``
        (default: one ``pad_batch``, what README "Scale-out" asks of a lab's workers)."""
        from .executor import BATCH_RESOURCE

        self._args[name] = {"env": dict(env), "cpus": cpus, "timeout": timeout,
                            "nthreads": nthreads, "resources": resources}
        declared = {BATCH_RESOURCE: 1} if resources is None else dict(resources)
        cmd = [sys.executable, "-m", "distributed.cli.dask_worker", self.address,
               "--name", name, "--nthreads", str(nthreads), "--no-nanny", "--no-dashboard",
               "--local-directory", str(self.folder / f"dask-{name}")]
        if declared:
            cmd += ["--resources", ",".join(f"{k}={v}" for k, v in declared.items())]
        if cpus is not None:
            if not shutil.which("taskset"):
                raise PartUnavailable("taskset (util-linux) is needed to pin workers")
            cmd = ["taskset", "-c", ",".join(str(c) for c in cpus), *cmd]
        log = self.folder / f"worker-{name}.log"
        with open(log, "wb") as out:
            proc = _spawn(cmd, stdout=out, stderr=subprocess.STDOUT,
                          env={**os.environ, **WORKER_ENV, **env})
        self.workers[name] = proc
        _wait(lambda: name in self.worker_names(), f"dask worker {name}", timeout, proc, log)
        return proc

    def revive(self) -> list[str]:
        """Start again, with the same arguments, every worker whose process has exited (a
        test that SIGKILLs one leaves the cluster as the next test expects it)."""
        dead = [n for n, p in self.workers.items() if p.poll() is not None]
        for name in dead:
            _wait(lambda n=name: n not in self.worker_names(), f"dask worker {name} gone",
                  60)
            self.add_worker(name, **self._args[name])
        return dead

    def worker_names(self) -> set[str]:
        from distributed import Client

        with Client(self.address, timeout=5) as c:
            return {str(w.get("name")) for w in c.scheduler_info(n_workers=-1)["workers"]
                    .values()}

    def n_workers(self) -> int:
        return len(self.worker_names())

    def worker_pids(self) -> dict[str, int]:
        return {n: p.pid for n, p in self.workers.items() if p.poll() is None}

    def stop(self) -> None:
        for p in self.workers.values():
            _stop(p)
        _stop(self.scheduler)


# dask's statistical profiler samples every thread's stack each 10 ms from the worker's
# event loop (sys._current_frames, with the interpreter's thread lock held): CPU the image
# steps need, and a part of the hang seen with h5py's global lock (h5py#2019). Off in the
# workers started here; the README's scale-out profile says to do the same on a cluster.
WORKER_ENV = {"DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED": "False"}


@contextlib.contextmanager
def dask_cluster(folder: Path, env: Mapping[str, str] | None = None,
                 allowed_failures: int = 0) -> Iterator[DaskCluster]:
    """A dask scheduler on 127.0.0.1 (workers are added with ``add_worker``).

    ``allowed_failures=0``: a task whose worker dies fails at once (Dagster sees a failed
    step and the batch run is rerun) instead of being retried silently elsewhere."""
    _require("distributed", "dask.distributed", "scaleout")
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = folder / "scheduler.log"
    senv = {**os.environ, **(env or {}),
            "DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": str(allowed_failures)}
    with open(log, "wb") as out:
        proc = _spawn([sys.executable, "-m", "distributed.cli.dask_scheduler",
                       "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
                      stdout=out, stderr=subprocess.STDOUT, env=senv)
    cluster = DaskCluster(f"tcp://127.0.0.1:{port}", folder, proc)
    try:
        _wait(lambda: cluster.n_workers() >= 0, "dask scheduler", 60, proc, log)
        yield cluster
    finally:
        cluster.stop()


# ---------------------------------------------------------------------- dagster-daemon
@contextlib.contextmanager
def dagster_daemon(folder: Path, workspace: Path, env: Mapping[str, str]
                   ) -> Iterator[subprocess.Popen]:
    """``dagster-daemon run`` for the instance in ``env['DAGSTER_HOME']``: it dequeues the
    QueuedRunCoordinator's runs and runs sensors, schedules and UI backfills."""
    exe = shutil.which("dagster-daemon") or str(Path(sys.executable).with_name("dagster-daemon"))
    if not Path(exe).exists():
        raise PartUnavailable("dagster-daemon is not installed (pip install dagster)")
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / "daemon.log"
    with open(log, "wb") as out:
        proc = _spawn([exe, "run", "-w", str(workspace)], stdout=out,
                      stderr=subprocess.STDOUT, env={**os.environ, **env}, cwd=folder)
    try:
        _wait(lambda: b"daemon" in log.read_bytes().lower() and proc.poll() is None,
              "dagster-daemon", 120, proc, log)
        yield proc
    finally:
        _stop(proc)


__all__ = ["DaskCluster", "PartUnavailable", "S3Server", "dagster_daemon", "dask_cluster",
           "free_port", "pg_bindir", "postgres", "s3_server"]

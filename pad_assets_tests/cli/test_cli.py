"""The ``pad-assets`` command as a user meets it: one click tree, run in-process through
its real entry point (``CliRunner`` on the group, ``main``) and as a real subprocess.

Real emulator over HTTP, real HDF5 caches, real tiny models (TF Lite, ONNX, Keras files).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

from pad_assets import maintenance as mt
from pad_assets.cli import cli, main
from pad_assets.dataset import CachedDataset
from pad_assets.devtools.emulator import DatasetSpec, Emulator
from pad_assets.models.custom import CustomModelAdapter
from pad_assets.store import ContentStore
from pad_assets_tests.conftest import make_config, point_env_at
from pad_assets_tests.model_fixtures import (
    TINY_DRUG_LABELS,
    write_tiny_keras,
    write_tiny_onnx,
    write_tiny_tflite,
)

A, B = "cliA", "cliB"
SHARED = list(range(54000, 54004))
A_IDS = SHARED + [54010, 54011]
B_IDS = SHARED + [54020, 54021, 54022]
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def emu() -> Iterator[Emulator]:
    with Emulator(make_config([DatasetSpec(A, A_IDS), DatasetSpec(B, B_IDS)],
                              models=[])) as e:
        yield e


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Three models that are all called ``tiny``, in three formats."""
    pytest.importorskip("onnxruntime", reason="the onnx extra runs the ONNX model")
    d = tmp_path_factory.mktemp("three_tinies")
    return {"tflite": write_tiny_tflite(d / "tiny.tflite"),
            "keras": write_tiny_keras(d / "tiny.keras"),
            "onnx": write_tiny_onnx(d / "tiny.onnx")}


@pytest.fixture
def env(emu: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "cache"
    point_env_at(emu, cache, monkeypatch)
    return cache


def run(*args: str) -> Any:
    """``pad-assets ARGS`` through click's test runner (stdout and stderr kept apart)."""
    return CliRunner().invoke(cli, list(args), prog_name="pad-assets")


def _fill(tiny: Path, datasets: tuple[str, ...] = (A, B)) -> CustomModelAdapter:
    model = CustomModelAdapter(tiny, labels=TINY_DRUG_LABELS)
    for name in datasets:
        ds = CachedDataset(name, progress=False)
        ds.apply_model(model)
        ds.close()
    return model


def _walk(group: click.Group, prefix: list[str]) -> Iterator[list[str]]:
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        cmd = group.get_command(ctx, name)
        yield [*prefix, name]
        if isinstance(cmd, click.Group):
            yield from _walk(cmd, [*prefix, name])


# ---------------------------------------------------------------------------------------
def test_version_help_of_every_command_and_typo_suggestions() -> None:
    res = run("--version")
    assert res.exit_code == 0 and res.stdout.startswith("pad-assets, version ")
    commands = list(_walk(cli, []))
    assert ["cache", "rm"] in commands and ["remote", "add"] in commands
    for path in commands:
        if path[0] in ("demo", "emulator"):
            continue  # their --help is their own argparse parser, tested below
        res = run(*path, "--help")
        assert res.exit_code == 0, (path, res.stderr)
        assert f"Usage: pad-assets {' '.join(path)}" in res.stdout
    res = run("cache", "stat")
    assert res.exit_code == 2 and "Did you mean 'stats'" in res.stderr
    res = run("lineages", "x", "1")
    assert res.exit_code == 2 and "Did you mean 'lineage'" in res.stderr
    res = run("remote", "ad", "lab", "/tmp/x")
    assert res.exit_code == 2 and "Did you mean 'add'" in res.stderr
    res = run("cache", "gc", "--dry-rn")
    assert res.exit_code == 2 and "--dry-run" in res.stderr
    # pass-through commands: their own parsers answer --help
    assert main(["emulator", "--help"]) == 0


def test_unknown_dataset_or_card_exit_non_zero(emu: Emulator, env: Path,
                                               tiny_models: dict[str, Path]) -> None:
    _fill(tiny_models["tflite"], (A,))
    res = run("audit", "cliAA", "-o", str(env.parent / "out"))
    assert res.exit_code == 1 and "'cliAA'" in res.stderr and A in res.stderr
    assert not (env.parent / "out").exists()
    res = run("lineage", A, "99999")
    assert res.exit_code == 1 and "card 99999" in res.stderr and "Traceback" not in res.stderr
    res = run("lineage", "cliAA", str(A_IDS[0]))
    assert res.exit_code == 1 and "'cliAA'" in res.stderr
    res = run("lineage", A, str(A_IDS[0]))
    assert res.exit_code == 0, res.stderr
    assert res.stdout.startswith(f"card {A_IDS[0]} of {A}")
    assert "tiny_tflite" in res.stdout and len(res.stdout.splitlines()) <= 10
    assert main(["audit", "cliAA", "-o", str(env.parent / "out")]) == 1


def test_closed_pipe_exits_quietly(emu: Emulator, env: Path, tiny_models: dict[str, Path],
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    _fill(tiny_models["tflite"], (A,))
    child_env = {**os.environ, "PYTHONPATH": str(ROOT)}
    # the reader goes away before the command writes: every write meets EPIPE (rich
    # tables, click's own --help, plain echo)
    for args in (["cache", "stats"], ["--help"], ["remote", "list"]):
        proc = subprocess.Popen([sys.executable, "-m", "pad_assets.cli", *args],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=child_env)
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()
        err = proc.stderr.read().decode()
        assert proc.wait(timeout=120) == 141, (args, err)
        assert "Traceback" not in err and "BrokenPipe" not in err, (args, err)
        assert "Exception ignored" not in err, (args, err)
    # as typed in a shell
    sh = subprocess.run(["bash", "-c", f"'{sys.executable}' -m pad_assets.cli cache stats "
                         "| head -n 1"], capture_output=True, text=True, env=child_env,
                        timeout=120)
    assert sh.returncode == 0 and sh.stdout.startswith("cache ") and sh.stderr == "", sh.stderr

    # in-process: a stdout whose reader is gone
    class Closed(io.StringIO):
        def write(self, s: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(sys, "stdout", Closed())
    assert main(["cache", "stats"]) == 141


def test_shell_completion_is_clicks_own(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "_PAD_ASSETS_COMPLETE": "bash_complete",
           "COMP_WORDS": "pad-assets cache st", "COMP_CWORD": "2"}
    proc = subprocess.run([sys.executable, "-m", "pad_assets.cli"], capture_output=True,
                          text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "plain,stats" in proc.stdout and "plain,status" in proc.stdout
    env.update(_PAD_ASSETS_COMPLETE="bash_source")
    proc = subprocess.run([sys.executable, "-m", "pad_assets.cli"], capture_output=True,
                          text=True, env=env, timeout=120)
    assert "complete -o nosort -F _pad_assets_completion pad-assets" in proc.stdout


def test_cache_rm_dataset_model_pipeline(emu: Emulator, env: Path,
                                         tiny_models: dict[str, Path]) -> None:
    model = _fill(tiny_models["tflite"])
    store = ContentStore(env)
    before = mt.stats(store)
    store.close()
    res = run("cache", "rm", "--dataset", B, "--dry-run")
    assert res.exit_code == 0 and "would remove" in res.stdout, res.stderr
    store = ContentStore(env)
    assert mt.stats(store).layers == before.layers
    store.close()

    res = run("cache", "rm", "--dataset", B)
    assert res.exit_code == 0, res.stderr
    assert f"kept {len(SHARED)} images another dataset also lists" in res.stdout
    store = ContentStore(env)
    st = mt.stats(store)
    only_b = len(B_IDS) - len(SHARED)
    assert B not in st.datasets
    assert st.layers["raw"]["items"] == before.layers["raw"]["items"] - only_b
    assert st.layers["prediction"]["items"] == before.layers["prediction"]["items"] - only_b
    assert st.shard_bytes < before.shard_bytes
    assert mt.verify(store).ok
    store.close()
    # A is whole: served from the cache with no request
    emu.reset_stats()
    ds = CachedDataset(A, progress=False)
    assert ds.apply_model(model)["cached"].all() and emu.stats()["total"] == 0
    ds.close()

    res = run("cache", "rm", "--model", "nope")
    assert res.exit_code == 1 and "tiny_tflite" in res.stderr
    res = run("cache", "rm", "--model", "tiny_tflite")
    assert res.exit_code == 0 and "'prediction': 6" in res.stdout, res.stdout
    res = run("cache", "rm", "--pipeline", "pad_nn", "--json")
    assert res.exit_code == 0
    removed = json.loads(res.stdout)["items"]
    assert removed == {"preprocessed": len(A_IDS), "tensor": len(A_IDS)}
    store = ContentStore(env)
    layers = mt.stats(store).layers
    assert set(layers) >= {"raw", "manifest"} and "prediction" not in layers
    assert "preprocessed" not in layers and "tensor" not in layers
    store.close()
    assert run("cache", "rm").exit_code == 2
    assert run("cache", "rm", "--dataset", A, "--model", "x").exit_code == 2
    assert run("cache", "rm", "--dataset", "nope").exit_code == 1


def test_named_remote_push_pull_and_status(emu: Emulator, env: Path, tmp_path: Path,
                                           tiny_models: dict[str, Path]) -> None:
    _fill(tiny_models["tflite"], (A,))
    lab = tmp_path / "lab_remote"
    res = run("remote", "add", "lab", str(lab), "--default")
    assert res.exit_code == 0 and "(default)" in res.stdout
    assert run("remote", "add", "other", "nosuchproto://x").exit_code == 1
    assert run("remote", "add", "lab", str(tmp_path / "x")).exit_code == 1  # exists
    assert json.loads((env / "remotes.json").read_text())["default"] == "lab"
    res = run("remote", "list")
    assert res.stdout.strip() == f"* lab\t{lab}"

    res = run("cache", "status", "--remote")
    assert res.exit_code == 0 and "remote lacks" in res.stdout
    n_local = len(ContentStore(env).index.shard_paths())
    assert f"remote lacks {n_local} shards" in res.stdout
    assert run("cache", "push").exit_code == 0  # the default remote
    res = run("cache", "status", "--remote", "lab", "--json")
    assert json.loads(res.stdout)[0]["in_sync"] is True
    assert run("cache", "status", "--remote", "nolab").exit_code == 1

    # a colleague's empty cache: the remote has what it lacks, per dataset
    other = tmp_path / "other"
    res = run("--cache-dir", str(other), "cache", "status", "--remote", str(lab))
    assert res.exit_code == 0 and f"we lack {n_local} shards" in res.stdout
    assert f"{A}: remote lacks 0, we lack" in res.stdout
    assert run("--cache-dir", str(other), "remote", "add", "lab", str(lab)).exit_code == 0
    assert run("--cache-dir", str(other), "cache", "pull", "--dataset", A).exit_code == 0
    res = run("cache", "status", "--cache-dir", str(other))  # every remote, one line each
    assert res.exit_code == 0 and "remote lab" in res.stdout

    # new local work: the remote lacks it until pushed
    ds = CachedDataset(B, progress=False)
    ds.download_and_cache()
    ds.close()
    status = json.loads(run("cache", "status", "-r", "lab", "--json").stdout)[0]
    assert status["remote_lacks"] and not status["we_lack"]
    assert status["datasets"][B]["remote_lacks"] >= 1
    assert run("remote", "remove", "lab").exit_code == 0
    res = run("cache", "push")
    assert res.exit_code == 1 and "no default remote" in res.stderr


def test_stats_tables_and_gc_dry_run_reasons(emu: Emulator, env: Path,
                                             tiny_models: dict[str, Path]) -> None:
    _fill(tiny_models["tflite"])
    (env / "reports" / A / "run1").mkdir(parents=True)
    (env / "reports" / A / "run1" / "report.md").write_text("# old\n")
    (env / "artifacts").mkdir(exist_ok=True)
    (env / "artifacts" / ("0" * 64 + ".tflite")).write_bytes(b"stale")
    res = run("cache", "stats")
    assert res.exit_code == 0, res.stderr
    for title in ("per layer", "per dataset", "per model", "beside the shards"):
        assert title in res.stdout
    assert "tiny_tflite" in res.stdout and "reports/" in res.stdout
    assert "1 stale: gc removes them" in res.stdout
    st = json.loads(run("cache", "stats", "--json").stdout)
    layer_sum = sum(v["bytes"] for v in st["layers"].values())
    # the layers add up to more than the live payload by exactly what they share
    assert layer_sum - st["live_bytes"] == sum(st["layer_shared"].values()) - st["shared_bytes"]
    if st["shared_bytes"]:
        assert "stored once" in res.stdout

    res = run("cache", "gc", "--max-size", "5MB", "--dry-run")
    assert res.exit_code == 0 and "would rewrite" in res.stdout, res.stdout
    assert "shard(s): holds dead bytes and the cache is still above --max-size" in res.stdout
    assert "1 stale artifact files" in res.stdout
    assert (env / "artifacts" / ("0" * 64 + ".tflite")).exists()
    res = run("cache", "gc", "--older-than", "0s")
    assert res.exit_code == 0 and "removed 1 stale artifact files and 1 old report runs" \
        in res.stdout, res.stdout
    assert not (env / "artifacts" / ("0" * 64 + ".tflite")).exists()
    assert not (env / "reports" / A / "run1").exists()


def test_three_models_named_tiny_and_a_rename(emu: Emulator, env: Path,
                                              tiny_models: dict[str, Path]) -> None:
    models = [CustomModelAdapter(p, labels=TINY_DRUG_LABELS) for p in tiny_models.values()]
    assert len({m.name for m in models}) == len(models)
    assert {m.name for m in models} == {f"tiny_{k}" for k in tiny_models}
    ds = CachedDataset(A, progress=False)
    report = ds.compare_models(models)
    assert set(report.summary["model"]) == {m.name for m in models}
    renamed = CustomModelAdapter(tiny_models["keras"], labels=TINY_DRUG_LABELS,
                                 name="tiny_best")
    assert ds.apply_model(renamed)["cached"].all()  # a name is not part of the signature
    ds.close()
    out = env.parent / "audit"
    res = run("audit", A, "-o", str(out), "-m", "tiny_best")
    assert res.exit_code == 0, res.stderr
    assert f"{len(A_IDS)} prediction(s) exported" in res.stdout
    res = run("audit", A, "-o", str(out), "-m", "tiny_keras")
    assert res.exit_code == 1 and "tiny_best" in res.stderr
    res = run("cache", "stats")
    assert "tiny_best" in res.stdout and "tiny_keras" not in res.stdout


def test_cache_dir_option_reaches_the_emulator_and_its_demo_models(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`pad-assets --cache-dir D emulator` builds its demo models under D, not ~/.pad_cache."""
    from pad_assets.devtools.demo_models import default_cache_dir

    monkeypatch.setenv("PAD_CACHE_DIR", str(tmp_path / "from_env"))
    assert default_cache_dir() == tmp_path / "from_env" / "demo_models"
    assert main(["--cache-dir", str(tmp_path / "flag"), "emulator", "--help"]) == 0
    assert default_cache_dir() == (tmp_path / "flag").resolve() / "demo_models"


def test_progress_on_a_terminal_and_silence_in_a_pipe(emu: Emulator, env: Path,
                                                      tiny_models: dict[str, Path]) -> None:
    """verify draws its bar on stderr when stderr is a terminal (a real pty here); in a
    pipe it prints nothing there, and stdout carries the report alone either way."""
    import pty

    _fill(tiny_models["tflite"], (A,))
    child_env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "100"}
    argv = [sys.executable, "-m", "pad_assets.cli", "cache", "verify"]
    master, slave = pty.openpty()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=slave, env=child_env)
    os.close(slave)
    assert proc.stdout is not None
    out = proc.stdout.read().decode()
    assert proc.wait(timeout=120) == 0
    seen = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # the child closed its end
            break
        if not chunk:
            break
        seen += chunk
    os.close(master)
    assert b"verifying every payload" in seen and b"shards" in seen
    assert "no problems found" in out and "\x1b[" not in out
    piped = subprocess.run(argv, capture_output=True, text=True, env=child_env, timeout=120)
    assert piped.returncode == 0 and piped.stderr == ""
    assert "no problems found" in piped.stdout and "\x1b[" not in piped.stdout

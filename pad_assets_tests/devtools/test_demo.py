"""Issue 13 (demo part): ``pad-assets demo`` as a user runs it, then its closing hint pasted
in another folder."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from pad_assets.devtools.demo_models import demo_model_artifacts
from pad_assets.devtools.emulator import DatasetSpec, Emulator, EmulatorConfig

DS = "Demo_CLI_DS"
NOISE = re.compile(r"tensorflow|absl|oneDNN|XNNPACK|cuda|telemetry|InitializeLog|^[IWE]0000 ",
                   re.IGNORECASE | re.MULTILINE)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_demo_is_quiet_shows_progress_and_its_dagster_dev_hint_works_elsewhere(
        demo_cache_dir: Path, tmp_path: Path) -> None:
    config = EmulatorConfig(datasets=[DatasetSpec(DS, range(60000, 60008))],
                            models_provider=lambda: demo_model_artifacts(demo_cache_dir))
    (tmp_path / "lab.yaml").write_text(
        f"datasets:\n  - name: {DS}\nmodels:\n"
        "  - {name: nn_drug, adapter: pad_tflite, model_id: 16}\n"
        "  - {name: pls_conc, adapter: pls, model_id: 18}\n")
    with Emulator(config) as emu:
        env = {**os.environ, "PAD_API_URL": emu.base_url, "PAD_REGISTRY_URL": emu.registry_url,
               "PAD_CACHE_DIR": str(tmp_path / "cache"),
               "PAD_ASSETS_CONFIG": str(tmp_path / "lab.yaml")}
        for var in ("PAD_OFFLINE", "DAGSTER_HOME", "DAGSTER_DISABLE_TELEMETRY",
                    "TF_CPP_MIN_LOG_LEVEL"):
            env.pop(var, None)
        work = tmp_path / "clone"
        work.mkdir()
        proc = subprocess.run([sys.executable, "-m", "pad_assets.cli", "demo", "--external",
                               "--dataset", DS], cwd=work, env=env, capture_output=True,
                              text=True, timeout=900)
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0, out
        assert not NOISE.search(out), NOISE.search(out)
        for n in range(1, 5):
            assert f"[{n}/4]" in proc.stdout
        assert "telemetry:\n  enabled: false" in (work / ".dagster_home" / "dagster.yaml"
                                                   ).read_text()
        hint = next(ln.strip() for ln in proc.stdout.splitlines()
                    if "dagster dev -m pad_assets.definitions" in ln)

        # paste the hint in another folder (only the port changed: 3000 may be taken)
        port = _free_port()
        cmd = hint.replace("-p 3000", f"-p {port}")
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        clean = {k: v for k, v in env.items() if not k.startswith("PAD_")}
        server = subprocess.Popen(shlex.split(f"env {cmd}"), cwd=elsewhere, env=clean,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  start_new_session=True)
        try:
            query = json.dumps({"query": "{ runsOrError { ... on Runs { results { pipelineName "
                                         "status repositoryOrigin { repositoryLocationName } "
                                         "} } } }"}).encode()
            runs = None
            deadline = time.time() + 240
            while time.time() < deadline and server.poll() is None:
                try:
                    req = urllib.request.Request(f"http://127.0.0.1:{port}/graphql", data=query,
                                                 headers={"Content-Type": "application/json"})
                    with urllib.request.urlopen(req, timeout=10) as resp:
                        runs = json.loads(resp.read())["data"]["runsOrError"]["results"]
                    if runs:
                        break
                except (OSError, KeyError, TypeError):
                    pass
                time.sleep(1)
            assert runs, "the pasted dagster dev command served no runs"
            jobs = {r["pipelineName"]: r for r in runs}
            images = jobs[f"{DS}_images_job"]
            assert images["status"] == "SUCCESS"
            assert images["repositoryOrigin"]["repositoryLocationName"] == "pad_assets.definitions"
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()

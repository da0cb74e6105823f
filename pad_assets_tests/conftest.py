"""Shared fixtures: local PAD emulators and an environment that points pad_assets at them.

Tests never reach the real PAD services (nor ``../shared``): every network answer comes
from ``pad_assets.devtools.emulator`` on 127.0.0.1. Starting an emulator costs milliseconds; the
first manifest of a dataset costs ~50 ms per card once per process (md5s are memoised
process-wide), so prefer ``session_emulator`` when a test does not change the world.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pad_assets.devtools.emulator import DatasetSpec, Emulator, EmulatorConfig, ModelArtifact

# Tests never send Dagster usage telemetry (instances they create read this variable).
os.environ.setdefault("DAGSTER_DISABLE_TELEMETRY", "1")



@pytest.fixture(autouse=True)
def _no_stale_dagster_defs_state() -> Iterator[None]:
    """Each test starts with no Dagster defs-state storage in context.

    ``DagsterInstance.__enter__`` sets a context variable to the instance's defs-state
    storage and its ``__exit__`` (``dispose``) never resets it (dagster 1.13). After a test
    that used ``with DagsterInstance...``, the variable points at a storage whose instance
    is gone, and in random order a later test's ``Definitions.resolve_job_def`` failed with
    "Attempted to resolve undefined DagsterInstance weakref" (4 tests of
    ``orchestration/test_lab_scale.py``, 2026-11-30)."""
    from dagster._core.storage.defs_state.base import set_defs_state_storage

    with set_defs_state_storage(None):
        yield


SHARED_A = "shared_A"
SHARED_B = "shared_B"


@pytest.fixture(scope="session")
def demo_cache_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
                   ) -> Path:
    """One demo-model build per machine (pytest's cache folder), else one per session.

    Builds live in sub-folders named by ``demo_models.build_key()``, which hashes the
    training code itself: after an edit to it the next run trains afresh, never reusing
    stale models."""
    cache = getattr(request.config, "cache", None)
    if cache is not None:
        return Path(cache.mkdir("pad_demo_models"))
    return tmp_path_factory.mktemp("pad_demo_models")


def make_config(
    datasets: list[DatasetSpec] | None = None,
    *,
    models: list[ModelArtifact] | None = None,
    **kwargs: Any,
) -> EmulatorConfig:
    """An ``EmulatorConfig`` with custom datasets; ``models`` fixes the served models.

    Without ``models`` the default provider applies (trained demo models, built lazily on
    the first models request).
    """
    if datasets is not None:
        kwargs["datasets"] = datasets
    if models is not None:
        fixed = list(models)
        kwargs["models_provider"] = lambda: list(fixed)
    return EmulatorConfig(**kwargs)


def shared_cards_config(
    shared: int = 50,
    only_a: int = 10,
    only_b: int = 10,
    first_id: int = 20000,
    **kwargs: Any,
) -> EmulatorConfig:
    """Two datasets (``shared_A``, ``shared_B``) that have ``shared`` cards in common.

    Ids: A = [first, first + only_a + shared), B = the last ``shared`` ids of A followed by
    ``only_b`` ids starting at ``first + 10000``.
    """
    a_ids = list(range(first_id, first_id + only_a + shared))
    b_ids = a_ids[only_a:] + list(range(first_id + 10000, first_id + 10000 + only_b))
    return make_config(
        [DatasetSpec(SHARED_A, a_ids), DatasetSpec(SHARED_B, b_ids)],
        **kwargs,
    )


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    """A fresh default emulator (48-card FHI2020_Stratified_Sampling + edge_cases)."""
    with Emulator(EmulatorConfig()) as emu:
        yield emu


@pytest.fixture(scope="session")
def session_emulator() -> Iterator[Emulator]:
    """One default emulator for the whole session; do not change its world in a test."""
    with Emulator(EmulatorConfig()) as emu:
        yield emu


@pytest.fixture
def emulator_factory() -> Iterator[Callable[..., Emulator]]:
    """Start emulators from configs (or config kwargs); all are stopped after the test.

    ``emulator_factory(shared_cards_config())`` or ``emulator_factory(error_rate=1.0)``.
    """
    started: list[Emulator] = []

    def start(config: EmulatorConfig | None = None, **kwargs: Any) -> Emulator:
        if config is None:
            config = make_config(**kwargs)
        elif kwargs:
            raise TypeError("pass either a config or config keyword arguments, not both")
        emu = Emulator(config)
        emu.start()
        started.append(emu)
        return emu

    yield start
    for emu in started:
        emu.stop()


def point_env_at(emulator: Emulator, cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``Settings.from_env()`` (what a researcher's code reads) use this emulator and
    cache, online; undone by ``monkeypatch`` after the test."""
    monkeypatch.setenv("PAD_API_URL", emulator.base_url)
    monkeypatch.setenv("PAD_REGISTRY_URL", emulator.registry_url)
    monkeypatch.setenv("PAD_CACHE_DIR", str(cache_dir))
    monkeypatch.delenv("PAD_OFFLINE", raising=False)


@pytest.fixture
def pad_env(
    emulator: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Emulator:
    """Point ``Settings.from_env()`` at the ``emulator`` fixture with a private cache dir."""
    point_env_at(emulator, tmp_path / "pad_cache", monkeypatch)
    return emulator

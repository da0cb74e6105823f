"""Where preprocessing runs: the policy of ``DerivedLayers`` (``executor="auto"``).

The built-in pipelines spend their time in C code that releases the GIL, so threads are
as fast as processes without the spawn cost; a researcher's own pipeline in pure Python
needs processes, but only for batches big enough (4 chunks) to pay for spawning them, and
only if it can be pickled. The choice changes no result (``dataset/test_user_paths.py``
runs both paths), only speed, so it is pinned here and not by a timing.
"""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pad_assets.layers.derived import CHUNK, DerivedLayers
from pad_assets.preprocessing import PADNeuralNetworkPipeline
from pad_assets.preprocessing.base import PreprocessingPipeline
from pad_assets.store import ContentStore


class _GreyMean(PreprocessingPipeline):
    """A researcher's pipeline, defined outside ``pad_assets.preprocessing``."""

    name = "grey_mean"

    def get_parameters(self) -> dict:
        return {}

    def process_image(self, raw_image: Image.Image) -> np.ndarray:
        return np.asarray(raw_image.convert("L"), dtype=np.float32).mean(keepdims=True)


class _WithALambda(_GreyMean):
    name = "grey_mean_lambda"

    def __init__(self) -> None:
        self.scale = lambda x: x  # a closure: cannot be pickled for a worker process


@pytest.fixture
def layers(tmp_path: Path):
    out = DerivedLayers(ContentStore(tmp_path / "c"), workers=3)
    yield out
    out.close()


def test_auto_keeps_builtin_pipelines_on_threads_however_many_cards(
        layers: DerivedLayers) -> None:
    pool = layers._executor_for(PADNeuralNetworkPipeline(), 100 * CHUNK)
    assert isinstance(pool, ThreadPoolExecutor) and pool._max_workers == 3
    # after close() (CachedDataset.close) the next call gets a working pool again
    layers.close()
    again = layers._executor_for(PADNeuralNetworkPipeline(), 1)
    assert again is not pool and again.submit(sum, [1, 2]).result() == 3


def test_auto_sends_a_custom_pipeline_to_processes_from_four_chunks_on(
        layers: DerivedLayers) -> None:
    small = layers._executor_for(_GreyMean(), 4 * CHUNK - 1)
    assert isinstance(small, ThreadPoolExecutor)
    assert layers._executor_for(_GreyMean(), 3) is small  # same kind: the pool is reused
    big = layers._executor_for(_GreyMean(), 4 * CHUNK)
    assert isinstance(big, ProcessPoolExecutor) and big._max_workers == 3
    # spawned, never forked: a fork of a process that loaded TensorFlow can hang
    assert big._mp_context.get_start_method() == "spawn"
    assert small._shutdown  # the thread pool was closed when the kind changed
    # a pipeline that cannot be pickled stays in this process, whatever the batch size
    assert isinstance(layers._executor_for(_WithALambda(), 100 * CHUNK), ThreadPoolExecutor)


@pytest.mark.parametrize("kind, pool", [("thread", ThreadPoolExecutor),
                                        ("process", ProcessPoolExecutor)])
def test_an_explicit_executor_is_used_for_every_pipeline(tmp_path: Path, kind: str,
                                                         pool: type) -> None:
    layers = DerivedLayers(ContentStore(tmp_path / "c"), workers=1, executor=kind)
    try:
        assert isinstance(layers._executor_for(PADNeuralNetworkPipeline(), 1), pool)
        assert isinstance(layers._executor_for(_GreyMean(), 100 * CHUNK), pool)
    finally:
        layers.close()


def test_an_unknown_executor_is_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="executor 'processes': expected 'auto', 'thread' "
                                         "or 'process'"):
        DerivedLayers(ContentStore(tmp_path / "c"), executor="processes")

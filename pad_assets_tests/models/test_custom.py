"""CustomModelAdapter: every file type against NumPy, batching, signatures, refusals."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pad_assets.errors import ModelError
from pad_assets.models import custom as custom_mod
from pad_assets.models.base import TensorSpec
from pad_assets.models.custom import CustomModelAdapter, torch_file_format
from pad_assets.preprocessing.base import FunctionPipeline
from pad_assets_tests.model_fixtures import (
    TINY_DRUG_LABELS,
    make_tiny_torch_module,
    nn_batch,
    tiny_reference_logits,
    write_tiny_onnx,
)

pytest_plugins = ["pad_assets_tests.model_fixtures"]
# torch 2.13 deprecates TorchScript in favour of torch.export, whose loader unpickles
# (see custom.py); TorchScript stays supported, so its deprecation notices are expected.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")

FORMATS = ["tiny_tflite_path", "tiny_onnx_path", "tiny_keras_path", "tiny_torchscript_path",
           "tiny_state_dict_path"]


def _adapter(fixture: str, request: pytest.FixtureRequest, **kwargs: Any) -> CustomModelAdapter:
    path: Path = request.getfixturevalue(fixture)
    if fixture == "tiny_state_dict_path":
        kwargs.setdefault("module", make_tiny_torch_module(weights=False))
    kwargs.setdefault("labels", TINY_DRUG_LABELS)
    return CustomModelAdapter(path, **kwargs)


@pytest.mark.parametrize("fixture", FORMATS)
def test_outputs_match_numpy(
    fixture: str, request: pytest.FixtureRequest, tiny_nn_batch: np.ndarray
) -> None:
    adapter = _adapter(fixture, request)
    ref = tiny_reference_logits(tiny_nn_batch)
    records = adapter.predict_batch(tiny_nn_batch)
    np.testing.assert_allclose([r.outputs for r in records], ref, rtol=1e-5, atol=1e-4)
    labels = adapter.labels
    assert [r.prediction for r in records] == [labels[int(k)] for k in ref.argmax(1)]
    e = np.exp(ref - ref.max(1, keepdims=True))
    for rec, row, p in zip(records, ref, e / e.sum(1, keepdims=True), strict=True):
        assert rec.probability == pytest.approx(p.max(), abs=1e-5)
        assert rec.energy == pytest.approx(np.log(np.exp(row).sum()), abs=1e-4)


@pytest.mark.parametrize("fixture", FORMATS)
def test_batch_equals_one_by_one(fixture: str, request: pytest.FixtureRequest) -> None:
    adapter = _adapter(fixture, request)
    batch = nn_batch(3, seed=11)
    together = adapter.predict_outputs(batch)
    alone = np.concatenate([adapter.predict_outputs(batch[i]) for i in range(len(batch))])
    np.testing.assert_allclose(together, alone, rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("fixture", FORMATS)
def test_signature_needs_no_model(fixture: str, request: pytest.FixtureRequest) -> None:
    adapter = _adapter(fixture, request)
    sig = adapter.get_cache_signature()
    assert len(sig) == 64 and not adapter.model_loaded
    relabelled = _adapter(fixture, request, labels=list(reversed(TINY_DRUG_LABELS)))
    as_probs = _adapter(fixture, request, output="probabilities")
    assert len({sig, relabelled.get_cache_signature(), as_probs.get_cache_signature()}) == 3


def test_signature_tracks_bytes_spec_and_module(
    tiny_onnx_path: Path, tiny_state_dict_path: Path, tmp_path: Path
) -> None:
    base = CustomModelAdapter(tiny_onnx_path, labels=TINY_DRUG_LABELS)
    copy = tmp_path / "moved.onnx"
    shutil.copyfile(tiny_onnx_path, copy)
    assert CustomModelAdapter(copy, labels=TINY_DRUG_LABELS).get_cache_signature() == (
        base.get_cache_signature()
    )
    other = CustomModelAdapter(
        write_tiny_onnx(tmp_path / "seed2.onnx", seed=2), labels=TINY_DRUG_LABELS
    )
    assert other.get_cache_signature() != base.get_cache_signature()
    spec = TensorSpec((454, 454, 3), "float32", "float32")
    other_spec = CustomModelAdapter(
        tiny_onnx_path, labels=TINY_DRUG_LABELS, input_spec=spec,
        preprocessing=FunctionPipeline(lambda im: np.asarray(im), name="identity"),
    )
    assert other_spec.get_cache_signature() != base.get_cache_signature()

    import torch

    small = CustomModelAdapter(
        tiny_state_dict_path, labels=TINY_DRUG_LABELS, module=make_tiny_torch_module()
    )

    class Wider(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(192, 5)
            self.extra = torch.nn.Identity()

    wider = CustomModelAdapter(tiny_state_dict_path, labels=TINY_DRUG_LABELS, module=Wider())
    assert small.get_cache_signature() != wider.get_cache_signature()


def test_state_dict_without_module_is_refused(tiny_state_dict_path: Path) -> None:
    assert torch_file_format(tiny_state_dict_path) == "state_dict"
    with pytest.raises(ModelError, match=r"state dict .* pass module="):
        CustomModelAdapter(tiny_state_dict_path, labels=TINY_DRUG_LABELS)


class _TouchOnUnpickle:
    """A pickle payload that creates a file if anything ever unpickles it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[Path]]:
        return (Path.touch, (self.marker,))


def test_arbitrary_pickles_are_never_unpickled(tmp_path: Path) -> None:
    import torch

    marker = tmp_path / "code_ran"
    hostile = tmp_path / "hostile.pt"
    torch.save({"fc.weight": _TouchOnUnpickle(marker)}, str(hostile))
    whole = tmp_path / "whole_module.pt"
    torch.save(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 5)), str(whole))
    for path in (hostile, whole):
        adapter = CustomModelAdapter(path, labels=TINY_DRUG_LABELS, module=make_tiny_torch_module())
        with pytest.raises(ModelError, match="refused: not a plain state dict"):
            adapter.predict_batch(nn_batch(1))
    assert not marker.exists()


def test_state_dict_that_does_not_fit(tiny_state_dict_path: Path) -> None:
    import torch

    wrong = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(10, 2))
    adapter = CustomModelAdapter(tiny_state_dict_path, labels=["a", "b"], module=wrong)
    with pytest.raises(ModelError, match="does not fit"):
        adapter.predict_batch(nn_batch(1))


def test_torchscript_identified_and_module_ignored(tiny_torchscript_path: Path) -> None:
    assert torch_file_format(tiny_torchscript_path) == "torchscript"
    with pytest.warns(UserWarning, match="module= is ignored"):
        adapter = CustomModelAdapter(
            tiny_torchscript_path, labels=TINY_DRUG_LABELS, module=make_tiny_torch_module()
        )
    assert adapter.describe()["format"] == "torchscript"


@pytest.mark.parametrize("name", ["model.h5", "model.pkl", "model.pb", "model.pt2", "weights"])
def test_unknown_extension(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(b"x")
    with pytest.raises(ModelError) as info:
        CustomModelAdapter(path, labels=["a"])
    message = str(info.value)
    assert str(path) in message
    for ext in (".keras", ".onnx", ".pt", ".pth", ".tflite"):
        assert ext in message


def test_refusals(tiny_onnx_path: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="input_spec"):
        CustomModelAdapter(
            tiny_onnx_path, labels=["a"], preprocessing=FunctionPipeline(np.asarray, name="id")
        )
    with pytest.raises(ModelError, match="output must be"):
        CustomModelAdapter(tiny_onnx_path, labels=["a"], output="scores")  # type: ignore[arg-type]
    with pytest.raises(ModelError, match="not found"):
        CustomModelAdapter(tmp_path / "absent.onnx", labels=["a"])
    with pytest.raises(ModelError, match="only applies to PyTorch"):
        CustomModelAdapter(tiny_onnx_path, labels=["a"], module=object())  # type: ignore[arg-type]
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"\x00\x01 not protobuf")
    with pytest.raises(ModelError, match="not a loadable ONNX model"):
        CustomModelAdapter(broken, labels=["a"]).predict_batch(nn_batch(1))


def test_missing_optional_runtime_names_the_extra(
    tiny_onnx_path: Path, tiny_torchscript_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = importlib.util.find_spec

    def without(*names: str) -> Any:
        return lambda name, *a: None if name in names else real(name, *a)

    monkeypatch.setattr(custom_mod.importlib.util, "find_spec", without("onnxruntime", "torch"))
    with pytest.raises(ModelError, match=r"pip install pad_assets\[onnx\]"):
        CustomModelAdapter(tiny_onnx_path, labels=TINY_DRUG_LABELS)
    with pytest.raises(ModelError, match=r"pip install pad_assets\[torch\]"):
        CustomModelAdapter(tiny_torchscript_path, labels=TINY_DRUG_LABELS)


def test_regression_and_probabilities(tmp_path: Path, tiny_nn_batch: np.ndarray) -> None:
    one = write_tiny_onnx(tmp_path / "regressor.onnx", n_classes=1, seed=4)
    reg = CustomModelAdapter(one, output="regression")
    assert reg.label_type() == "concentration"
    ref = tiny_reference_logits(tiny_nn_batch, n_classes=1, seed=4)[:, 0]
    records = reg.predict_batch(tiny_nn_batch)
    np.testing.assert_allclose([r.prediction for r in records], ref, rtol=1e-5, atol=1e-4)
    assert all(r.probability is None and r.status == "ok" for r in records)

    five = write_tiny_onnx(tmp_path / "five.onnx")
    with pytest.raises(ModelError, match="one value per item"):
        CustomModelAdapter(five, output="regression").predict_batch(tiny_nn_batch)
    probs = CustomModelAdapter(five, labels=["0", "100", "20", "50", "80"], output="probabilities")
    recs = probs.predict_batch(tiny_nn_batch)
    logits = tiny_reference_logits(tiny_nn_batch)
    for rec, row in zip(recs, logits, strict=True):
        assert rec.probability == pytest.approx(row.max(), abs=1e-4)  # read as-is
        assert rec.energy is None and rec.label_type == "concentration"
        assert rec.prediction == float(["0", "100", "20", "50", "80"][int(row.argmax())])


def test_fixed_batch_onnx_loops(tmp_path: Path, tiny_nn_batch: np.ndarray) -> None:
    fixed = write_tiny_onnx(tmp_path / "fixed.onnx", dynamic_batch=False)
    adapter = CustomModelAdapter(fixed, labels=TINY_DRUG_LABELS)
    out = adapter.predict_outputs(tiny_nn_batch)
    np.testing.assert_allclose(out, tiny_reference_logits(tiny_nn_batch), rtol=1e-5, atol=1e-4)


def test_defaults(tiny_keras_path: Path) -> None:
    adapter = CustomModelAdapter(tiny_keras_path, labels=TINY_DRUG_LABELS, name="mine")
    assert adapter.name == "mine"
    assert adapter.get_tensor_spec() == TensorSpec((454, 454, 3), "float32", "uint8")
    assert type(adapter.get_required_preprocessing()).__name__ == "PADNeuralNetworkPipeline"
    d = adapter.describe()
    assert d["runtime"][0] == "keras" and d["output"] == "logits"

"""PADTensorFlowAdapter and the TF Lite runtime: PAD output semantics, batching, signatures."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from pad_assets.errors import ModelError
from pad_assets.models import runtime as runtime_mod
from pad_assets.models import tflite as tflite_mod
from pad_assets.models.base import STATUS_FAILED, TensorSpec, standardize_label
from pad_assets.models.tflite import PADTensorFlowAdapter, records_from_outputs
from pad_assets_tests.model_fixtures import (
    TINY_CONCENTRATION_LABELS,
    TINY_DRUG_LABELS,
    nn_batch,
    tiny_reference_logits,
)

pytest_plugins = ["pad_assets_tests.model_fixtures"]


def _softmax_energy(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    p = e / e.sum(axis=1, keepdims=True)
    return p, np.log(np.exp(z).sum(axis=1))


def test_batch_matches_numpy_reference(tiny_tflite_path: Path, tiny_nn_batch: np.ndarray) -> None:
    adapter = PADTensorFlowAdapter(model_path=tiny_tflite_path, labels=TINY_DRUG_LABELS)
    records = adapter.predict_batch(tiny_nn_batch)
    ref = tiny_reference_logits(tiny_nn_batch)
    probs, energy = _softmax_energy(ref)
    labels = [standardize_label(x) for x in TINY_DRUG_LABELS]
    assert len(records) == len(tiny_nn_batch)
    assert len({r.prediction for r in records}) > 1  # the batch exercises several classes
    for i, rec in enumerate(records):
        k = int(ref[i].argmax())
        assert rec.status == "ok" and rec.label_type == "drug"
        assert rec.prediction == labels[k]
        np.testing.assert_allclose(rec.outputs, ref[i], rtol=1e-5, atol=1e-4)
        assert rec.probability == pytest.approx(probs[i, k], abs=1e-5)
        assert rec.energy == pytest.approx(energy[i], abs=1e-4)  # logsumexp, not negated


def test_batch_equals_one_by_one(tiny_tflite_path: Path) -> None:
    batch = nn_batch(5, seed=3)
    adapter = PADTensorFlowAdapter(model_path=tiny_tflite_path, labels=TINY_DRUG_LABELS)
    together = adapter.predict_batch(batch)
    alone = [adapter.predict_batch(batch[i : i + 1])[0] for i in range(len(batch))]
    for a, b in zip(together, alone, strict=True):
        assert a.prediction == b.prediction
        np.testing.assert_allclose(a.outputs, b.outputs, rtol=1e-6, atol=1e-5)


def test_dynamic_batch_invokes_by_the_measured_batch(tiny_tflite_path: Path,
                                                     tiny_nn_batch: np.ndarray) -> None:
    adapter = PADTensorFlowAdapter(model_path=tiny_tflite_path, labels=TINY_DRUG_LABELS)
    runner = adapter.runner
    assert runner.dynamic_batch
    before = runner.invocations
    adapter.predict_batch(tiny_nn_batch)
    step = runtime_mod.TFLITE_INVOKE_BATCH
    assert runner.invocations - before == -(-len(tiny_nn_batch) // step)


def test_fixed_batch_model_loops_on_one_interpreter(
    tiny_tflite_fixed_path: Path, tiny_nn_batch: np.ndarray
) -> None:
    adapter = PADTensorFlowAdapter(model_path=tiny_tflite_fixed_path, labels=TINY_DRUG_LABELS)
    records = adapter.predict_batch(tiny_nn_batch)
    runner = adapter.runner
    assert not runner.dynamic_batch
    before = runner.invocations
    records = adapter.predict_batch(tiny_nn_batch)
    assert runner.invocations - before == len(tiny_nn_batch)
    np.testing.assert_allclose(
        [r.outputs for r in records], tiny_reference_logits(tiny_nn_batch), rtol=1e-5, atol=1e-4
    )


def test_one_interpreter_per_weights_not_per_image(
    tiny_tflite_path: Path, tiny_model_dir: Path, tiny_nn_batch: np.ndarray
) -> None:
    copy = tiny_model_dir / "same_bytes_elsewhere.tflite"
    shutil.copyfile(tiny_tflite_path, copy)
    a = PADTensorFlowAdapter(model_path=tiny_tflite_path, labels=TINY_DRUG_LABELS)
    b = PADTensorFlowAdapter(model_path=copy, labels=TINY_DRUG_LABELS)
    a.predict_batch(tiny_nn_batch)
    count = runtime_mod.cached_runner_count()
    for i in range(3):
        b.predict_batch(tiny_nn_batch[i : i + 1])
    assert a.runner is b.runner  # same sha256 -> same interpreter
    assert runtime_mod.cached_runner_count() == count


def test_signature_needs_no_interpreter(
    tiny_tflite_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the interpreter must not be built to compute a signature")

    monkeypatch.setattr(tflite_mod, "load_tflite", refuse)
    monkeypatch.setattr(runtime_mod, "interpreter_class", refuse)
    adapter = PADTensorFlowAdapter(model_path=tiny_tflite_path, labels=TINY_DRUG_LABELS)
    sig = adapter.get_cache_signature()
    assert len(sig) == 64 and not adapter.interpreter_loaded
    assert adapter.describe()["weights_sha256"] == adapter.weights_sha256


def test_signature_tracks_weights_and_labels_not_paths(
    tiny_tflite_path: Path, tiny_tflite_other_weights_path: Path, tiny_model_dir: Path
) -> None:
    base = PADTensorFlowAdapter(model_path=tiny_tflite_path, labels=TINY_DRUG_LABELS)
    other_weights = PADTensorFlowAdapter(
        model_path=tiny_tflite_other_weights_path, labels=TINY_DRUG_LABELS
    )
    other_labels = PADTensorFlowAdapter(
        model_path=tiny_tflite_path, labels=[*TINY_DRUG_LABELS[:-1], "Tetracycline"]
    )
    reordered = PADTensorFlowAdapter(
        model_path=tiny_tflite_path, labels=list(reversed(TINY_DRUG_LABELS))
    )
    copy = tiny_model_dir / "renamed_copy.tflite"
    shutil.copyfile(tiny_tflite_path, copy)
    moved = PADTensorFlowAdapter(model_path=copy, labels=TINY_DRUG_LABELS)
    respelled = PADTensorFlowAdapter(
        model_path=tiny_tflite_path, labels=[x.lower().replace(" ", "-") for x in TINY_DRUG_LABELS]
    )
    sigs = {a.get_cache_signature() for a in (base, other_weights, other_labels, reordered)}
    assert len(sigs) == 4
    assert moved.get_cache_signature() == base.get_cache_signature()
    # Labels are standardised before hashing: PAD's spelling and ours are one model.
    assert respelled.get_cache_signature() == base.get_cache_signature()


def test_falls_back_to_tf_lite_without_litert(
    tiny_tflite_path: Path, tiny_nn_batch: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = runtime_mod.importlib.util.find_spec
    monkeypatch.setattr(
        runtime_mod.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "ai_edge_litert" else real(name, *a),
    )
    info = runtime_mod.tflite_runtime_info()
    assert info.name == "tensorflow-lite" and info.version
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tf.lite.Interpreter announces its deprecation
        # the runner loads only weights that hash to the sha256 it is given
        runner = runtime_mod.TFLiteRunner(tiny_tflite_path, tflite_mod.file_sha256(tiny_tflite_path))
        out = runner.run(tiny_nn_batch.astype(np.float32))
    assert runner.runtime == info
    np.testing.assert_allclose(out, tiny_reference_logits(tiny_nn_batch), rtol=1e-5, atol=1e-4)


def test_signature_tracks_runtime(tiny_tflite_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = PADTensorFlowAdapter(model_path=tiny_tflite_path, labels=TINY_DRUG_LABELS)
    monkeypatch.setattr(
        tflite_mod, "tflite_runtime_info", lambda: runtime_mod.RuntimeInfo("ai-edge-litert", "0.0")
    )
    after = PADTensorFlowAdapter(model_path=tiny_tflite_path, labels=TINY_DRUG_LABELS)
    assert before.get_cache_signature() != after.get_cache_signature()


def test_concentration_labels(tiny_tflite_path: Path, tiny_nn_batch: np.ndarray) -> None:
    adapter = PADTensorFlowAdapter(model_path=tiny_tflite_path, labels=TINY_CONCENTRATION_LABELS)
    assert adapter.label_type() == "concentration"
    ref = tiny_reference_logits(tiny_nn_batch)
    for rec, row in zip(adapter.predict_batch(tiny_nn_batch), ref, strict=True):
        assert rec.label_type == "concentration"
        assert rec.prediction == float(TINY_CONCENTRATION_LABELS[int(row.argmax())])
        assert isinstance(rec.prediction, float)
    card = {"drug": "Amoxicillin", "quantity": 50}
    assert adapter.actual_label(card) == 50.0


def test_spec_and_preprocessing(tiny_tflite_path: Path) -> None:
    adapter = PADTensorFlowAdapter(model_path=tiny_tflite_path, labels=TINY_DRUG_LABELS)
    spec = adapter.get_tensor_spec()
    assert spec == TensorSpec((454, 454, 3), "float32", "uint8", "NHWC", "raw")
    pipeline = adapter.get_required_preprocessing()
    assert type(pipeline).__name__ == "PADNeuralNetworkPipeline"
    assert adapter.name == "tiny_dynamic"
    assert adapter.prediction_context({"drug": "x"}) == {}


def test_accepts_float_and_uint8_storage(tiny_tflite_path: Path, tiny_nn_batch: np.ndarray) -> None:
    adapter = PADTensorFlowAdapter(model_path=tiny_tflite_path, labels=TINY_DRUG_LABELS)
    a = adapter.predict_batch(tiny_nn_batch)
    b = adapter.predict_batch(tiny_nn_batch.astype(np.float32))
    assert [r.outputs for r in a] == [r.outputs for r in b]
    assert adapter.predict_batch(tiny_nn_batch[:0]) == []


def test_refusals(tiny_tflite_path: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="exactly one"):
        PADTensorFlowAdapter()
    with pytest.raises(ModelError, match="exactly one"):
        PADTensorFlowAdapter(model_id=16, model_path=tiny_tflite_path)
    with pytest.raises(ModelError, match="no labels"):
        PADTensorFlowAdapter(model_path=tiny_tflite_path)
    with pytest.raises(ModelError, match="not found"):
        PADTensorFlowAdapter(model_path=tmp_path / "missing.tflite", labels=["a"])
    wrong_count = PADTensorFlowAdapter(model_path=tiny_tflite_path, labels=["A", "B", "C"])
    with pytest.raises(ModelError, match="outputs 5 values per item but has 3 labels"):
        wrong_count.predict_batch(nn_batch(1))
    garbage = tmp_path / "garbage.tflite"
    garbage.write_bytes(b"not a flatbuffer at all")
    with pytest.raises(ModelError, match="not a loadable TF Lite model"):
        PADTensorFlowAdapter(model_path=garbage, labels=["a"]).predict_batch(nn_batch(1))


def test_wrong_item_shape_is_refused(tiny_tflite_path: Path) -> None:
    adapter = PADTensorFlowAdapter(model_path=tiny_tflite_path, labels=TINY_DRUG_LABELS)
    with pytest.raises((ModelError, ValueError)):
        adapter.runner.run(np.zeros((1, 200, 200, 3), dtype=np.float32))


def test_non_finite_outputs_become_failed_records() -> None:
    logits = np.array([[1.0, 2.0], [np.nan, 0.0]])
    ok, bad = records_from_outputs(logits, ["a", "b"], "drug")
    assert ok.prediction == "b" and ok.status == "ok"
    assert bad.prediction is None and bad.status == STATUS_FAILED


def test_model_id_uses_resolved_record(
    tiny_tflite_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_nn_batch: np.ndarray
) -> None:
    from pad_assets.sources import model_artifacts

    record = {
        "id": 16, "name": "24fhiNN1classifyAPI", "type": "tf_lite", "version": "1.0",
        "labels": TINY_DRUG_LABELS, "weights_url": "http://x/neuralnetworks/tf_lite/a.tflite",
    }
    sha = tflite_mod.file_sha256(tiny_tflite_path)
    calls = []

    def fake_resolve(model_id: int, settings: object = None, refresh: bool = False) -> object:
        calls.append((model_id, refresh))
        return model_artifacts.ResolvedModel(record, tiny_tflite_path, sha)

    monkeypatch.setattr(model_artifacts, "resolve_model", fake_resolve)
    adapter = PADTensorFlowAdapter(model_id=16, refresh=True)
    assert calls == [(16, True)]
    assert adapter.name == "pad_nn_16"
    assert adapter.labels == ["albendazole", "amoxicillin", "benzyl-penicillin", "blank", "lactose"]
    assert adapter.weights_sha256 == sha
    from_file = PADTensorFlowAdapter(model_path=tiny_tflite_path, labels=TINY_DRUG_LABELS)
    assert adapter.get_cache_signature() == from_file.get_cache_signature()
    assert adapter.describe()["weights_url"] == record["weights_url"]

    monkeypatch.setattr(
        model_artifacts,
        "resolve_model",
        lambda *a, **k: model_artifacts.ResolvedModel({**record, "type": "pls"}, tiny_tflite_path, sha),
    )
    with pytest.raises(ModelError, match="PLSModelAdapter"):
        PADTensorFlowAdapter(model_id=18)


def test_package_import_and_signature_stay_light(tiny_tflite_path: Path) -> None:
    """`import pad_assets.models` and a warm-cache signature import no ML framework."""
    code = (
        "import sys, json\n"
        "import pad_assets, pad_assets.models as m\n"
        "a = m.PADTensorFlowAdapter(model_path=sys.argv[1], labels=['a','b','c','d','e'])\n"
        "sig = a.get_cache_signature()\n"
        "heavy = [k for k in ('tensorflow', 'ai_edge_litert', 'keras', 'torch', 'onnxruntime')"
        " if k in sys.modules]\n"
        "print(json.dumps({'sig': sig, 'heavy': heavy}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tiny_tflite_path)],
        capture_output=True, text=True, check=True, cwd=Path(__file__).resolve().parents[2],
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["heavy"] == []
    here = PADTensorFlowAdapter(model_path=tiny_tflite_path, labels=["a", "b", "c", "d", "e"])
    assert result["sig"] == here.get_cache_signature()


def test_large_batches_are_chunked(tiny_tflite_path: Path) -> None:
    step = runtime_mod.TFLITE_INVOKE_BATCH
    batch = nn_batch(step + 4, seed=7)
    adapter = PADTensorFlowAdapter(model_path=tiny_tflite_path, labels=TINY_DRUG_LABELS)
    before = adapter.runner.invocations
    records = adapter.predict_batch(batch)
    assert adapter.runner.invocations - before == 1 + -(-4 // step)
    np.testing.assert_allclose(
        [r.outputs for r in records], tiny_reference_logits(batch), rtol=1e-5, atol=1e-4
    )

"""SYNTHETIC stand-ins for PAD models 16, 17 and 18, trained offline on emulator cards.

The real PAD weights cannot be downloaded here (and tests must not depend on them), yet the
emulator, the demo and the benchmarks need models that behave like PAD's: TF Lite files
that take the (454, 454, 3) raw-pixel crop and output logits over PAD's labels, and a PLS
coefficient CSV in the real file's format. Models that *work* (a classifier far above
chance) make the end-to-end story honest: cached predictions can be scored, and a broken
preprocessing or label order shows up as lost accuracy rather than passing silently.

What is built (``demo_model_artifacts``):

* id 16 ``24fhiNN1classifyAPI``: drug classifier over the 23 FHI2020 classes, labels in
  PAD's capitalised form ("Amoxicillin", "Benzyl Penicillin") that standardise to
  ``synthetic.DRUGS``;
* id 17 ``24fhiNN1concAPI``: concentration classifier, labels ``["0","100","20","50","80"]``;
* id 18 ``24fhiPLS1conc``: PLS1 coefficients per drug, fitted (NumPy NIPALS, no sklearn) on
  ``PADPLSPipeline`` features, written quoted with hyphenated names like the real file.
  Like the real file it has no row for the controls (blank, lactose, swiped-but-not-run).

How it stays fast (well under a minute on 2 cores) without cheating the interface: both
networks start with a fixed ``AveragePooling2D(16)`` (454 -> 28) that has no weights, so
training runs on pooled arrays computed once in NumPy, and the exported TF Lite model is
that same pooling followed by the trained layers, fed with the full 454x454 input.

Determinism and caching: seeds fix the card ids, quantities and training; the result is
stored under ``<cache_dir>/<key>/`` where the key hashes the training code (this module,
the card renderer, decoding and both pipelines; docstrings and comments excluded), the
parameters, the card renderer's version, both pipelines' cache keys and the TensorFlow and
Keras versions. A warm call reads the files back (sha256-checked) in milliseconds; within
one process the artifacts are also memoised, so an emulator started with a fresh cache
directory does not retrain.

Training cards use ids from ``TRAIN_CARD_BASE`` and the build-time evaluation cards ids from
``EVAL_CARD_BASE``; tests measure accuracy on other ids (the emulator's own cards).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import random
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import IntegrityError, ModelError
from ..hashing import code_digest, sha256_bytes
from ..keys import chain_key
from ..models.base import standardize_label
from ..models.runtime import available_cores, installed_version
from ..store.fs import flocked

if TYPE_CHECKING:
    from .emulator.catalog import ModelArtifact

log = logging.getLogger(__name__)

#: Modules whose code decides the demo models' bytes: this build, the renderer that draws
#: the training cards, and the preprocessing that turns them into inputs. Their code (not a
#: hand-kept version string) is part of the cache key: ``training_code_digest``.
TRAINING_CODE = (
    "pad_assets.devtools.demo_models",
    "pad_assets.devtools.emulator.synthetic",
    "pad_assets.preprocessing.decode",
    "pad_assets.preprocessing.nn",
    "pad_assets.preprocessing.pls",
)

CLASSIFIER_ID = 16
CONCENTRATION_ID = 17
PLS_ID = 18
CLASSIFIER_NAME = "24fhiNN1classifyAPI"
CONCENTRATION_NAME = "24fhiNN1concAPI"
PLS_NAME = "24fhiPLS1conc"
CONCENTRATION_LABELS = ["0", "100", "20", "50", "80"]
TRAINING_SET = "FHI2020_Stratified_Sampling"

TRAIN_CARD_BASE = 900_000
EVAL_CARD_BASE = 950_000

#: Side of the fixed average-pooling window of the stem: 454 -> 28 pixels.
POOL = 16
POOLED = 448 // POOL

#: PAD's spelling of a few labels (the rest are capitalised words).
_PAD_LABEL_SPELLING = {"ripe": "RIPE", "swiped-but-not-run": "Swiped-but-not-run"}
#: Classes without a row in the real PLS file (controls); the demo file omits them too.
PLS_EXCLUDED = ("blank", "lactose", "swiped-but-not-run")


@dataclass(frozen=True)
class DemoParams:
    """Everything that determines the demo models' bytes (besides code and library versions)."""

    seed: int = 0
    cards_per_drug: int = 20
    eval_cards: int = 150
    classifier_epochs: int = 25
    concentration_epochs: int = 30
    batch_size: int = 32
    learning_rate: float = 3e-3
    pls_components: int = 4


def pad_label(drug: str) -> str:
    """PAD's capitalised label of a standardised drug name ('benzyl-penicillin' ->
    'Benzyl Penicillin'); ``standardize_label`` maps it back."""
    if drug in _PAD_LABEL_SPELLING:
        return _PAD_LABEL_SPELLING[drug]
    return " ".join(w.capitalize() for w in drug.split("-"))


def default_cache_dir() -> Path:
    """``$PAD_CACHE_DIR/demo_models`` (``~/.pad_cache/demo_models`` by default)."""
    from ..settings import Settings

    return Settings.from_env().cache_dir / "demo_models"


def _library_versions() -> dict[str, str | None]:
    return {
        "tensorflow": installed_version("tensorflow", "tensorflow-cpu"),
        "keras": installed_version("keras"),
        "numpy": installed_version("numpy"),
        "pillow": installed_version("pillow", "Pillow"),
    }


@functools.lru_cache(maxsize=8)
def training_code_digest(modules: tuple[str, ...] = TRAINING_CODE) -> str:
    """One digest of the code of ``modules`` (docstrings and comments excluded); read once
    per process."""
    import importlib.util

    digests = {}
    for name in modules:
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.origin:
            raise ModelError(f"demo models: cannot find the source of {name} to key the build")
        digests[name] = code_digest(Path(spec.origin).read_text(encoding="utf-8"))
    return chain_key("training_code", digests)


def build_key(params: DemoParams | None = None) -> str:
    """Cache key of a build: training code, parameters, renderer, pipelines, libraries."""
    from ..preprocessing.nn import PADNeuralNetworkPipeline
    from ..preprocessing.pls import PADPLSPipeline
    from .emulator import synthetic

    params = params or DemoParams()
    return chain_key(
        "demo_models",
        training_code_digest(),
        asdict(params),
        synthetic.RENDERER_VERSION,
        PADNeuralNetworkPipeline().get_cache_key(),
        PADPLSPipeline().get_cache_key(),
        _library_versions(),
    )


# ---------------------------------------------------------------------------- data
def _training_cards(params: DemoParams) -> list[tuple[int, str, int]]:
    """(card id, drug, quantity): balanced over drugs, quantities drawn from the seed."""
    from .emulator import synthetic

    rng = np.random.default_rng(params.seed)
    cards = []
    card_id = TRAIN_CARD_BASE
    for drug in synthetic.DRUGS:
        for _ in range(params.cards_per_drug):
            if drug in synthetic.ZERO_QUANTITY_CLASSES:
                quantity = 0
            elif drug in synthetic.FULL_QUANTITY_CLASSES:
                quantity = 100
            else:
                quantity = int(rng.choice(np.array([20, 50, 80, 100])))
            cards.append((card_id, drug, quantity))
            card_id += 1
    return cards


def pool_nn_input(x: np.ndarray) -> np.ndarray:
    """What the models' fixed ``AveragePooling2D(16)`` stem computes, in NumPy (float32).

    Summed in two passes (rows, then columns): the same block sums as one 6-D reduction,
    ten times faster on a card.
    """
    a = np.asarray(x)[..., : POOLED * POOL, : POOLED * POOL, :]
    lead = a.shape[:-3]
    acc = np.float64 if a.dtype.kind == "f" else np.uint32
    rows = a.reshape(*lead, POOLED, POOL, POOLED * POOL * 3).sum(axis=-2, dtype=acc)
    blocks = rows.reshape(*lead, POOLED, POOLED, POOL, 3).sum(axis=-2, dtype=acc)
    return (blocks / float(POOL * POOL)).astype(np.float32)


def _card_inputs(
    cards: list[tuple[int, str | None, int | None]], workers: int
) -> tuple[np.ndarray, np.ndarray]:
    """Pooled NN inputs and PLS features of rendered cards (rendered in parallel threads)."""
    from PIL import Image

    from ..preprocessing.nn import PADNeuralNetworkPipeline
    from ..preprocessing.pls import PADPLSPipeline
    from .emulator import synthetic

    nn, pls = PADNeuralNetworkPipeline(), PADPLSPipeline()

    def one(card: tuple[int, str | None, int | None]) -> tuple[np.ndarray, np.ndarray]:
        card_id, drug, quantity = card
        image = Image.fromarray(synthetic.render_card(card_id, drug=drug, quantity=quantity))
        return pool_nn_input(nn.process_image(image)), np.asarray(pls.process_image(image))

    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(one, cards))
    return np.stack([r[0] for r in results]), np.stack([r[1] for r in results])


def _full_nn_inputs(card_ids: list[int]) -> np.ndarray:
    """Unpooled (n, 454, 454, 3) uint8 NN inputs of a few cards (export checks)."""
    from PIL import Image

    from ..preprocessing.nn import PADNeuralNetworkPipeline
    from .emulator import synthetic

    nn = PADNeuralNetworkPipeline()
    return np.stack(
        [nn.process_image(Image.fromarray(synthetic.render_card(c))) for c in card_ids]
    )


# ---------------------------------------------------------------------------- PLS
def fit_pls1(x: np.ndarray, y: np.ndarray, components: int) -> tuple[float, np.ndarray]:
    """PLS1 regression by NIPALS: intercept and coefficients on the raw features.

    Few components because each drug has only a few dozen cards for 360 correlated
    features (ordinary least squares would interpolate the noise).
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    x_mean, y_mean = x.mean(axis=0), float(y.mean())
    xr, yr = x - x_mean, y - y_mean
    ws, ps, cs = [], [], []
    for _ in range(max(1, min(components, len(y) - 1))):
        w = xr.T @ yr
        norm = float(np.linalg.norm(w))
        if norm < 1e-12:
            break
        w /= norm
        t = xr @ w
        tt = float(t @ t)
        if tt < 1e-12:
            break
        p = xr.T @ t / tt
        c = float(yr @ t) / tt
        xr = xr - np.outer(t, p)
        yr = yr - c * t
        ws.append(w)
        ps.append(p)
        cs.append(c)
    if not ws:
        return y_mean, np.zeros(x.shape[1])
    w_m, p_m, c_v = np.array(ws).T, np.array(ps).T, np.array(cs)
    coef = w_m @ np.linalg.solve(p_m.T @ w_m, c_v)
    return y_mean - float(x_mean @ coef), coef


def pls_csv_bytes(rows: list[tuple[str, float, np.ndarray]]) -> bytes:
    """Coefficient CSV in the real 24fhiPLS1quantity.csv format: every field quoted, LF.

    Values are written with ``repr`` (shortest exact round trip), so parsing the file gives
    back exactly the fitted float64 values.
    """
    lines = []
    for drug, intercept, coef in rows:
        fields = [drug, repr(float(intercept)), *(repr(float(v)) for v in coef)]
        lines.append(",".join(f'"{f}"' for f in fields))
    return ("\n".join(lines) + "\n").encode("utf-8")


# ---------------------------------------------------------------------------- networks
def _architecture(n_classes: int) -> str:
    return (
        f"SYNTHETIC demo CNN: AveragePooling2D({POOL}) stem 454->{POOLED}, Rescaling(1/255), "
        f"Conv3x3(16)+ReLU+MaxPool2, Conv3x3(32)+ReLU+MaxPool2, Flatten, Dense({n_classes}) logits"
    )


def _train_tflite(
    x_pooled: np.ndarray, y: np.ndarray, n_classes: int, epochs: int, params: DemoParams
) -> tuple[bytes, Any]:
    """Train the layers after the pooling stem; export stem + layers as TF Lite bytes."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(params.seed)
    inp = keras.Input((POOLED, POOLED, 3))
    h = keras.layers.Rescaling(1.0 / 255.0)(inp)
    h = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(h)
    h = keras.layers.MaxPooling2D(2)(h)
    h = keras.layers.Conv2D(32, 3, padding="same", activation="relu")(h)
    h = keras.layers.MaxPooling2D(2)(h)
    h = keras.layers.Flatten()(h)
    out = keras.layers.Dense(n_classes)(h)
    head = keras.Model(inp, out)
    head.compile(
        optimizer=keras.optimizers.Adam(params.learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    head.fit(x_pooled, y, epochs=epochs, batch_size=params.batch_size, shuffle=True, verbose=0)

    full_in = keras.Input((454, 454, 3), dtype="float32")
    pooled = keras.layers.AveragePooling2D(pool_size=POOL, strides=POOL, padding="valid")(full_in)
    full = keras.Model(full_in, head(pooled))
    # Through a SavedModel: the supported path that freezes the weights into the file
    # (a concrete function with a trackable object keeps resource variables instead).
    with tempfile.TemporaryDirectory(prefix="pad-demo-savedmodel-") as tmp:
        full.export(tmp, format="tf_saved_model", verbose=False)
        data = tf.lite.TFLiteConverter.from_saved_model(tmp).convert()
    return bytes(data), head


def _head_logits(head: Any, x_pooled: np.ndarray) -> np.ndarray:
    return np.asarray(head(x_pooled, training=False))


def _check_conversion(data: bytes, head: Any, full_inputs: np.ndarray, name: str) -> float:
    """Run the exported TF Lite bytes on full 454x454 inputs and compare with Keras.

    Guards the export itself: a converter path that drops the weights or mis-orders the
    pooling would still produce a loadable file, so the build checks the logits.
    """
    from ..models.runtime import interpreter_class, tflite_runtime_info

    interpreter = interpreter_class(tflite_runtime_info())(model_content=data, num_threads=1)
    index = interpreter.get_input_details()[0]["index"]
    interpreter.resize_tensor_input(index, list(full_inputs.shape))
    interpreter.allocate_tensors()
    interpreter.set_tensor(index, full_inputs.astype(np.float32))
    interpreter.invoke()
    got = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    want = _head_logits(head, pool_nn_input(full_inputs))
    diff = float(np.max(np.abs(got - want)))
    if not np.allclose(got, want, rtol=1e-3, atol=1e-2):
        raise ModelError(
            f"demo model {name}: TF Lite export disagrees with the trained Keras model "
            f"(max |logit difference| {diff:.4g}); the build is refused"
        )
    return diff


@contextlib.contextmanager
def _preserved_global_rngs() -> Iterator[None]:
    """Seeding Keras seeds Python's and NumPy's global RNGs: give callers theirs back."""
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


def build_demo_models(out_dir: Path, params: DemoParams | None = None) -> dict[str, Any]:
    """Train and write the three demo models into ``out_dir``; returns the manifest."""
    from .emulator import synthetic
    from .emulator.catalog import TEST_NAME

    params = params or DemoParams()
    started = time.perf_counter()
    workers = available_cores()
    out_dir.mkdir(parents=True, exist_ok=True)

    # ~30 s once per machine: a five-step bar on a terminal's stderr, silent elsewhere
    from tqdm.auto import tqdm

    bar = tqdm(total=5, desc="building demo models: rendering cards", unit="step",
               disable=not sys.stderr.isatty(), leave=False, file=sys.stderr)
    train = _training_cards(params)
    x_train, f_train = _card_inputs([(c, d, q) for c, d, q in train], workers)
    eval_ids = list(range(EVAL_CARD_BASE, EVAL_CARD_BASE + params.eval_cards))
    x_eval, f_eval = _card_inputs([(c, None, None) for c in eval_ids], workers)
    eval_attrs = [synthetic.card_attributes(c) for c in eval_ids]
    rendered = time.perf_counter()
    bar.update()
    bar.set_description("building demo models: drug classifier")

    drugs = list(synthetic.DRUGS)
    y_drug = np.array([drugs.index(d) for _, d, _ in train])
    y_conc = np.array([CONCENTRATION_LABELS.index(str(q)) for _, _, q in train])
    with _preserved_global_rngs():
        clf_bytes, clf_head = _train_tflite(
            x_train, y_drug, len(drugs), params.classifier_epochs, params
        )
        bar.update()
        bar.set_description("building demo models: concentration classifier")
        conc_bytes, conc_head = _train_tflite(
            x_train, y_conc, len(CONCENTRATION_LABELS), params.concentration_epochs, params
        )
    bar.update()
    bar.set_description("building demo models: checking the TF Lite conversion")
    check_inputs = _full_nn_inputs(eval_ids[:4])
    conversion_diff = max(
        _check_conversion(clf_bytes, clf_head, check_inputs, CLASSIFIER_NAME),
        _check_conversion(conc_bytes, conc_head, check_inputs, CONCENTRATION_NAME),
    )
    trained = time.perf_counter()
    bar.update()
    bar.set_description("building demo models: PLS")

    # PLS: one PLS1 fit per drug on its own cards (the real model is per drug too).
    quantities = np.array([q for _, _, q in train], dtype=np.float64)
    train_drugs = np.array([d for _, d, _ in train])
    pls_drugs = [d for d in drugs if d not in PLS_EXCLUDED]
    pls_rows = []
    for drug in pls_drugs:
        sel = train_drugs == drug
        intercept, coef = fit_pls1(f_train[sel], quantities[sel], params.pls_components)
        pls_rows.append((drug, intercept, coef))
    pls_bytes = pls_csv_bytes(pls_rows)
    bar.update()
    bar.close()

    # Build-time metrics on held-out cards (natural attributes, ids disjoint from training).
    true_drug = np.array([drugs.index(a.drug) for a in eval_attrs])
    true_conc = np.array([CONCENTRATION_LABELS.index(str(a.quantity)) for a in eval_attrs])
    drug_acc = float((_head_logits(clf_head, x_eval).argmax(1) == true_drug).mean())
    conc_acc = float((_head_logits(conc_head, x_eval).argmax(1) == true_conc).mean())
    by_drug = {d: (i, c) for d, i, c in pls_rows}
    errors = [
        by_drug[a.drug][0] + float(f_eval[k].astype(np.float64) @ by_drug[a.drug][1]) - a.quantity
        for k, a in enumerate(eval_attrs)
        if a.drug in by_drug
    ]
    pls_rmse = float(np.sqrt(np.mean(np.square(errors)))) if errors else float("nan")
    majority = float(np.bincount(true_conc).max() / len(true_conc))

    n_train = len(train)
    common = {
        "version": "1.0",
        "image_size": "454x454",
        "lanes_excluded": "",
        "test": TEST_NAME,
        "training_set": TRAINING_SET,
        "brightness": 0,
        "image_mean": "",
    }
    pad_drugs = [pad_label(d) for d in drugs]
    synthetic_note = (
        "SYNTHETIC demo model built offline by pad_assets.devtools.demo_models from "
        f"{n_train} synthetic emulator cards (renderer {synthetic.RENDERER_VERSION}); "
        "not a real PAD model"
    )
    artifacts = [
        {
            "record": {
                **common,
                "id": CLASSIFIER_ID,
                "name": CLASSIFIER_NAME,
                "type": "tf_lite",
                "labels": pad_drugs,
                "architecture": _architecture(len(drugs)),
                "description": f"{synthetic_note}; drug classifier, held-out accuracy "
                f"{drug_acc:.3f} on {len(eval_ids)} synthetic cards",
                "drugs": pad_drugs,
                "drugs_size": len(pad_drugs),
                "weights": f"{CLASSIFIER_NAME}.tflite",
            },
            "filename": f"{CLASSIFIER_NAME}.tflite",
            "data": clf_bytes,
        },
        {
            "record": {
                **common,
                "id": CONCENTRATION_ID,
                "name": CONCENTRATION_NAME,
                "type": "tf_lite",
                "labels": list(CONCENTRATION_LABELS),
                "architecture": _architecture(len(CONCENTRATION_LABELS)),
                "description": f"{synthetic_note}; concentration classifier, held-out "
                f"accuracy {conc_acc:.3f} (majority class {majority:.3f}) on "
                f"{len(eval_ids)} synthetic cards",
                "drugs": pad_drugs,
                "drugs_size": len(pad_drugs),
                "weights": f"{CONCENTRATION_NAME}.tflite",
            },
            "filename": f"{CONCENTRATION_NAME}.tflite",
            "data": conc_bytes,
        },
        {
            "record": {
                **common,
                "id": PLS_ID,
                "name": PLS_NAME,
                "type": "pls",
                "labels": [],
                "architecture": f"SYNTHETIC demo PLS1 (NIPALS, {params.pls_components} "
                "components) per drug on the 360 PADPLSPipeline features",
                "image_size": "730x1220",
                "description": f"{synthetic_note}; PLS concentration model, held-out RMSE "
                f"{pls_rmse:.2f} (percentage points) on {len(errors)} synthetic cards",
                "drugs": pls_drugs,
                "drugs_size": len(pls_drugs),
                "weights": f"{PLS_NAME}.csv",
            },
            "filename": f"{PLS_NAME}.csv",
            "data": pls_bytes,
        },
    ]
    for art in artifacts:
        (out_dir / art["filename"]).write_bytes(art["data"])
    finished = time.perf_counter()
    manifest = {
        "key": build_key(params),
        "training_code": training_code_digest(),
        "params": asdict(params),
        "libraries": _library_versions(),
        "metrics": {
            "classifier_accuracy": drug_acc,
            "concentration_accuracy": conc_acc,
            "concentration_majority_baseline": majority,
            "pls_rmse": pls_rmse,
            "tflite_vs_keras_max_abs_logit_diff": conversion_diff,
            "eval_cards": len(eval_ids),
            "eval_card_ids": [eval_ids[0], eval_ids[-1]],
            "train_cards": n_train,
            "train_card_ids": [train[0][0], train[-1][0]],
        },
        "timings": {
            "render_seconds": round(rendered - started, 3),
            "train_seconds": round(trained - rendered, 3),
            "total_seconds": round(finished - started, 3),
        },
        "artifacts": [
            {"record": a["record"], "filename": a["filename"], "sha256": sha256_bytes(a["data"])}
            for a in artifacts
        ],
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return manifest


# ---------------------------------------------------------------------------- cache
_MEMO: dict[str, tuple[dict[str, Any], dict[str, bytes]]] = {}
_LOCK = threading.Lock()


def _read_build(folder: Path) -> tuple[dict[str, Any], dict[str, bytes]]:
    """Manifest and files of a finished build; raises if anything is missing or altered."""
    manifest = json.loads((folder / "manifest.json").read_text())
    files = {}
    for art in manifest["artifacts"]:
        data = (folder / art["filename"]).read_bytes()
        if sha256_bytes(data) != art["sha256"]:
            raise IntegrityError(
                f"{folder / art['filename']}: sha256 {sha256_bytes(data)} does not match the "
                f"demo build manifest ({art['sha256']})"
            )
        files[art["filename"]] = data
    return manifest, files


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Exclusive lock across processes (pytest-xdist workers) so one of them trains."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with flocked(path):
        yield


def _write_build(folder: Path, manifest: dict[str, Any], files: dict[str, bytes]) -> None:
    """Copy a memoised build into another cache directory (atomic rename of a temp folder)."""
    tmp = Path(tempfile.mkdtemp(prefix=".demo-", dir=folder.parent))
    try:
        for name, data in files.items():
            (tmp / name).write_bytes(data)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
        os.replace(tmp, folder)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (folder / "manifest.json").is_file():
            raise


def _ensure_build(cache_dir: Path | None, params: DemoParams) -> tuple[dict[str, Any], dict[str, bytes], Path]:
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    key = build_key(params)
    folder = root / key
    with _LOCK:
        if (folder / "manifest.json").is_file():
            try:
                manifest, files = _read_build(folder)
                _MEMO[key] = (manifest, files)
                return manifest, files, folder
            except (OSError, ValueError, KeyError, IntegrityError) as exc:
                log.warning("demo model build at %s is unusable (%s); rebuilding", folder, exc)
                shutil.rmtree(folder, ignore_errors=True)
        if key in _MEMO:
            manifest, files = _MEMO[key]
            root.mkdir(parents=True, exist_ok=True)
            _write_build(folder, manifest, files)
            return manifest, files, folder
        with _file_lock(root / f".{key}.lock"):
            if not (folder / "manifest.json").is_file():  # another process may have built it
                log.info("training SYNTHETIC demo models into %s (once per build key)", folder)
                tmp = Path(tempfile.mkdtemp(prefix=".demo-build-", dir=root))
                try:
                    build_demo_models(tmp, params)
                    os.replace(tmp, folder)
                finally:
                    shutil.rmtree(tmp, ignore_errors=True)
            manifest, files = _read_build(folder)
        _MEMO[key] = (manifest, files)
        return manifest, files, folder


def demo_model_artifacts(cache_dir: Path | None = None) -> list[ModelArtifact]:
    """The three SYNTHETIC demo models (ids 16, 17, 18) as emulator model artifacts.

    Trained on first use (~30 s on 2 cores) and cached under ``cache_dir`` (default
    ``$PAD_CACHE_DIR/demo_models``); later calls read the cached files.
    """
    from .emulator.catalog import ModelArtifact

    manifest, files, _ = _ensure_build(cache_dir, DemoParams())
    return [
        ModelArtifact(record=dict(a["record"]), filename=a["filename"], data=files[a["filename"]])
        for a in manifest["artifacts"]
    ]


def demo_model_report(cache_dir: Path | None = None) -> dict[str, Any]:
    """Build metrics, timings, key and folder of the demo models (building them if needed)."""
    manifest, _, folder = _ensure_build(cache_dir, DemoParams())
    return {
        "key": manifest["key"],
        "folder": str(folder),
        "metrics": dict(manifest["metrics"]),
        "timings": dict(manifest["timings"]),
        "libraries": dict(manifest["libraries"]),
        "labels": {a["record"]["name"]: a["record"]["labels"] for a in manifest["artifacts"]},
    }


def demo_labels_standardised() -> list[str]:
    """Standardised labels of the demo classifier (equal to ``synthetic.DRUGS``)."""
    from .emulator import synthetic

    return [standardize_label(pad_label(d)) for d in synthetic.DRUGS]

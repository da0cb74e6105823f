"""PAD's PLS concentration model (model 18, ``24fhiPLS1conc``) as a ``ModelAdapter``.

The model is a coefficient CSV: one row per drug, ``drug, intercept, 360 coefficients``
(lanes A..L x regions 1..10 x R,G,B), no header. Two real variants exist and both parse:
quoted values with hyphenated names and LF line ends, and unquoted values with spaced names
and CRLF line ends. Anything else (a short row, a non-numeric value, a duplicate drug) is
refused with the line at fault rather than patched, because the original tool's habit of
turning bad values into 0.0 silently changes predictions.

Parity: the prediction is ``intercept + sum(feature * coef)`` accumulated in float64 strictly
left to right, exactly as the original Python loop does. ``np.add.accumulate`` is a
sequential scan (not a pairwise sum like ``np.sum``/``np.dot``), so the vectorised result is
bit-identical to that loop.

Unlike the original (exact lower-case lookup, ``-1`` for an unknown drug), a drug missing
from the file yields an explicit ``unknown_drug`` record naming the names it tried.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ModelError
from ..hashing import sha256_bytes
from .base import (
    STATUS_OK,
    STATUS_UNKNOWN_DRUG,
    ModelAdapter,
    PredictionRecord,
    TensorSpec,
    resolve_pad_model,
    standardize_label,
)
from .tflite import safe_name

if TYPE_CHECKING:
    from ..preprocessing.base import PreprocessingPipeline
    from ..settings import Settings

N_FEATURES = 360
N_FIELDS = N_FEATURES + 2  # drug, intercept, coefficients

#: Bump when prediction arithmetic or drug matching changes (part of the signature).
PLS_CODE_VERSION = "1"

#: PLS features are integer channel means (0..255): stored as int64, which the tensor layer
#: verifies is lossless; cast to float64 per batch, the precision of the original arithmetic.
PLS_TENSOR_SPEC = TensorSpec(
    shape=(N_FEATURES,), dtype="float64", storage_dtype="int64", layout="NC", scale="raw"
)


def drug_name_candidates(drug: str) -> list[str]:
    """Names tried for a card's drug, in order: standardised, with spaces, raw lower-case."""
    std = standardize_label(drug)
    out: list[str] = []
    for name in (std, std.replace("-", " "), str(drug).strip().lower()):
        if name not in out:
            out.append(name)
    return out


@dataclass(frozen=True, eq=False)
class PLSCoefficients:
    """Parsed coefficient file: one intercept and 360 coefficients per drug."""

    drugs: list[str]  # standardised names, file order
    raw_names: list[str]
    intercepts: np.ndarray  # (n_drugs,) float64
    coefficients: np.ndarray  # (n_drugs, 360) float64
    sha256: str
    _index: dict[str, int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        for i, (std, raw) in enumerate(zip(self.drugs, self.raw_names, strict=True)):
            self._index.setdefault(std, i)
            self._index.setdefault(raw.strip().lower(), i)

    def lookup(self, drug: str | None) -> tuple[int | None, list[str]]:
        """Row of ``drug`` (or None) and the names tried to find it."""
        if drug is None or not str(drug).strip():
            return None, []
        tried = drug_name_candidates(str(drug))
        for name in tried:
            if name in self._index:
                return self._index[name], tried
        return None, tried

    def as_dict(self) -> dict[str, tuple[float, np.ndarray]]:
        """``{standardised drug: (intercept, coefficients[360])}``."""
        return {
            d: (float(self.intercepts[i]), self.coefficients[i].copy())
            for i, d in enumerate(self.drugs)
        }


def parse_pls_coefficients(data: bytes, source: str = "coefficients") -> PLSCoefficients:
    """Parse a PAD PLS coefficient CSV (either real variant); refuse malformed files.

    ``source`` names the file in error messages.
    """
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ModelError(f"{source}: not UTF-8 text ({exc}); expected a PLS coefficient CSV") from exc
    reader = csv.reader(io.StringIO(text, newline=""), skipinitialspace=True)
    drugs: list[str] = []
    raw_names: list[str] = []
    intercepts: list[float] = []
    rows: list[list[float]] = []
    seen: dict[str, int] = {}
    for row in reader:
        line = reader.line_num
        fields = [f.strip() for f in row]
        if not any(fields):
            continue  # blank line (e.g. a trailing newline)
        if len(fields) != N_FIELDS:
            raise ModelError(
                f"{source}: line {line}: expected {N_FIELDS} fields (drug, intercept, "
                f"{N_FEATURES} coefficients), got {len(fields)}"
            )
        name = fields[0]
        if not name:
            raise ModelError(f"{source}: line {line}: empty drug name")
        values: list[float] = []
        for j, text_value in enumerate(fields[1:], start=2):
            try:
                v = float(text_value)
            except ValueError:
                what = "intercept" if j == 2 else f"coefficient {j - 2}"
                raise ModelError(
                    f"{source}: line {line}, field {j} ({what}) of drug {name!r}: "
                    f"{text_value!r} is not a number"
                ) from None
            if not math.isfinite(v):
                raise ModelError(
                    f"{source}: line {line}, field {j} of drug {name!r}: {text_value!r} is not finite"
                )
            values.append(v)
        std = standardize_label(name)
        if std in seen:
            raise ModelError(
                f"{source}: line {line}: drug {name!r} (standardised {std!r}) already defined "
                f"on line {seen[std]}"
            )
        seen[std] = line
        drugs.append(std)
        raw_names.append(name)
        intercepts.append(values[0])
        rows.append(values[1:])
    if not drugs:
        raise ModelError(f"{source}: no coefficient rows; expected one row per drug")
    return PLSCoefficients(
        drugs=drugs,
        raw_names=raw_names,
        intercepts=np.array(intercepts, dtype=np.float64),
        coefficients=np.array(rows, dtype=np.float64),
        sha256=sha256_bytes(data),
    )


def pls_predict(
    features: np.ndarray, intercepts: np.ndarray, coefficients: np.ndarray
) -> np.ndarray:
    """``intercept + f1*c1 + f2*c2 + ...`` per row, summed left to right in float64.

    ``features`` and ``coefficients`` are (n, 360), ``intercepts`` (n,), one row per card
    (each card's own drug row). Bit-identical to the original sequential Python loop.
    """
    x = np.asarray(features, dtype=np.float64)
    terms = np.empty((x.shape[0], x.shape[1] + 1), dtype=np.float64)
    terms[:, 0] = intercepts
    np.multiply(x, coefficients, out=terms[:, 1:])
    return np.add.accumulate(terms, axis=1)[:, -1]


class PLSModelAdapter(ModelAdapter):
    """PAD PLS concentration model from the PAD API (``model_id``) or a local CSV.

    Predictions depend on the card's drug (each drug has its own coefficient row), so the
    drug is the per-card context and is part of each prediction's cache key.
    """

    name = "pls"

    def __init__(
        self,
        model_id: int | None = None,
        coefficients_path: str | Path | None = None,
        settings: Settings | None = None,
        refresh: bool = False,
        name: str | None = None,
    ) -> None:
        if (model_id is None) == (coefficients_path is None):
            raise ModelError("PLSModelAdapter needs exactly one of model_id or coefficients_path")
        self.model_id = model_id
        self.record: dict[str, Any] = {}
        if model_id is not None:
            resolved = resolve_pad_model(model_id, "pls", "PLSModelAdapter", settings, refresh)
            self.record = dict(resolved.record)
            self.coefficients_path = Path(resolved.weights_path)
            self.name = name or f"pad_pls_{int(model_id)}"
        else:
            self.coefficients_path = Path(coefficients_path)  # type: ignore[arg-type]
            self.name = name or safe_name(self.coefficients_path.stem)
        try:
            data = self.coefficients_path.read_bytes()
        except FileNotFoundError as exc:
            raise ModelError(f"PLS coefficient file not found: {self.coefficients_path}") from exc
        self.coefficients = parse_pls_coefficients(data, source=str(self.coefficients_path))

    @property
    def drugs(self) -> list[str]:
        return list(self.coefficients.drugs)

    # -- ModelAdapter interface -----------------------------------------------------------
    def get_required_preprocessing(self) -> PreprocessingPipeline:
        from ..preprocessing.pls import PADPLSPipeline

        return PADPLSPipeline()

    def get_tensor_spec(self) -> TensorSpec:
        return PLS_TENSOR_SPEC

    def label_type(self) -> str:
        return "concentration"

    def prediction_context(self, card: dict[str, Any]) -> dict[str, Any]:
        """The card's standardised drug (``drug``, else PAD's ``sample_name``), or None.

        Part of each prediction's cache key: the same features give a different
        concentration under another drug's coefficients.
        """
        drug = card.get("drug")
        if not isinstance(drug, str) or not drug.strip():
            drug = card.get("sample_name")
        if not isinstance(drug, str) or not drug.strip():  # None, NaN from pandas, ""
            return {"drug": None}
        return {"drug": standardize_label(drug)}

    def get_cache_signature(self) -> str:
        """Coefficient file bytes + the "pls" runtime (code version) + the drug list."""
        return self.signature_of(
            self.coefficients.sha256, ["pls", PLS_CODE_VERSION], self.coefficients.drugs
        )

    def predict_batch(
        self, preprocessed_images: np.ndarray, contexts: Sequence[dict[str, Any]] | None = None
    ) -> list[PredictionRecord]:
        x = self.get_tensor_spec().to_model(np.asarray(preprocessed_images))
        if x.ndim == 1:
            x = x[None]
        n = x.shape[0]
        if n == 0:
            return []
        if x.shape[1:] != (N_FEATURES,):
            raise ModelError(
                f"{self.name}: features have shape {x.shape[1:]}, expected ({N_FEATURES},)"
            )
        if contexts is None or len(contexts) != n:
            got = "none" if contexts is None else str(len(contexts))
            raise ModelError(
                f"{self.name}: PLS needs each card's drug: pass {n} contexts from "
                f"prediction_context(card), got {got}"
            )
        rows: list[int] = []
        where: list[int] = []
        records: list[PredictionRecord | None] = [None] * n
        for i, ctx in enumerate(contexts):
            drug = (ctx or {}).get("drug")
            row, tried = self.coefficients.lookup(drug)
            if row is None:
                detail = (
                    f"drug {drug!r} not in coefficients; tried names: {tried}; "
                    f"known: {self.coefficients.drugs}"
                    if drug else
                    f"card has no drug; known: {self.coefficients.drugs}"
                )
                records[i] = PredictionRecord(
                    prediction=None, label_type="concentration",
                    status=STATUS_UNKNOWN_DRUG, detail=detail,
                )
            else:
                rows.append(row)
                where.append(i)
        if rows:
            idx = np.array(rows)
            values = pls_predict(
                x[where], self.coefficients.intercepts[idx], self.coefficients.coefficients[idx]
            )
            for i, v in zip(where, values, strict=True):
                records[i] = PredictionRecord(
                    prediction=float(v), label_type="concentration", status=STATUS_OK
                )
        return [r for r in records if r is not None]

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update(
            model_id=self.model_id,
            record_name=self.record.get("name"),
            version=self.record.get("version"),
            coefficients_path=str(self.coefficients_path),
            coefficients_sha256=self.coefficients.sha256,
            weights_url=self.record.get("weights_url"),
            runtime=["pls", PLS_CODE_VERSION],
            drugs=self.drugs,
            label_type="concentration",
        )
        return d

    def __repr__(self) -> str:
        src = (
            f"model_id={self.model_id}" if self.model_id is not None
            else str(self.coefficients_path)
        )
        return f"PLSModelAdapter({src}, {len(self.coefficients.drugs)} drugs)"

"""What the Dagster layer derives from the config alone: every asset key of a dataset's
group, its partitions, the manifest's data version and the model facts kept on each
prediction partition. Read by the asset factories, the image step, sync and the demo.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import dagster as dg

from ..hashing import sha256_bytes
from ..project_config import DatasetConfig, ModelConfig


@dataclass(frozen=True)
class DatasetAssetKeys:
    """Every asset key of one dataset's group, derived from the config alone."""

    ds: DatasetConfig
    models: tuple[ModelConfig, ...]

    @property
    def manifest(self) -> dg.AssetKey:
        return dg.AssetKey([self.ds.key, "manifest"])

    @property
    def raw(self) -> dg.AssetKey:
        return dg.AssetKey([self.ds.key, "raw_image"])

    def preprocessed(self, pipeline: str) -> dg.AssetKey:
        return dg.AssetKey([self.ds.key, f"preprocessed_{pipeline.rsplit('.', 1)[-1]}"])

    def tensor(self, m: ModelConfig) -> dg.AssetKey:
        return dg.AssetKey([self.ds.key, f"tensor_{m.tensor_group.rsplit('.', 1)[-1]}"])

    def prediction(self, m: ModelConfig) -> dg.AssetKey:
        return dg.AssetKey([self.ds.key, f"prediction_{m.name}"])

    @property
    def comparison(self) -> dg.AssetKey:
        return dg.AssetKey([self.ds.key, "model_comparison"])

    @property
    def pipelines(self) -> list[str]:
        return list(dict.fromkeys(m.pipeline for m in self.models))

    @property
    def tensor_models(self) -> dict[dg.AssetKey, ModelConfig]:
        """Each tensor asset and the first model that reads it (models sharing a pipeline
        and tensor spec share one tensor asset)."""
        out: dict[dg.AssetKey, ModelConfig] = {}
        for m in self.models:
            out.setdefault(self.tensor(m), m)
        return out

    @property
    def image_keys(self) -> list[dg.AssetKey]:
        keys = [self.raw] + [self.preprocessed(p) for p in self.pipelines]
        keys += list(self.tensor_models)
        return keys + [self.prediction(m) for m in self.models]


def partitions_for(ds: DatasetConfig) -> dg.DynamicPartitionsDefinition:
    return dg.DynamicPartitionsDefinition(name=f"{ds.key}_cards")


def manifest_version(m: Any) -> str:
    """The manifest asset's data version: a change marks what depends on it unsynced."""
    return sha256_bytes(m.to_json_bytes())[:16]


def small_record(desc: dict[str, Any]) -> dict[str, Any]:
    """The model facts an auditor needs on every prediction partition (labels omitted)."""
    keep = ("name", "class", "signature", "model_id", "record_name", "version",
            "weights_sha256", "weights_url", "coefficients_sha256", "path", "file_sha256",
            "runtime", "label_type")
    return {k: desc[k] for k in keep if k in desc and desc[k] is not None}

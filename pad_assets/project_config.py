"""The project's configuration (the Dagster graph's, and the named models of the CLI's
model specs): datasets and models, from YAML, validated before any asset
is defined (a typo should fail ``dagster definitions validate``, not a run at 3 a.m.).

The asset graph must be derivable without network access, so each adapter kind declares
its pipeline and tensor spec statically; the adapter itself (which may fetch a model
record) is only built inside a run.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import InvalidInputError
from .models import kinds
from .settings import config_file_from_env
from .sources.urls import validate_name

#: the packaged config files stay beside the Dagster graph that they describe
_CONFIG_DIR = Path(__file__).parent / "orchestration"
DEFAULT_CONFIG = _CONFIG_DIR / "default_config.yaml"
#: every dataset of the PAD registry (12) with the lab's models: ``PAD_ASSETS_CONFIG=<this>``
LAB_CONFIG = _CONFIG_DIR / "lab_config.yaml"
_ASSET_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")
ADAPTER_KINDS = tuple(kinds.KINDS)


@dataclass(frozen=True)
class ModelConfig:
    name: str
    adapter: str
    model_id: int | None = None
    path: str | None = None
    labels: tuple[str, ...] | None = None
    pipeline: str = ""  # "pad_nn" | "pad_pls" | a custom pipeline's import path

    def build(self, settings: Any) -> Any:
        """The adapter (may fetch the model record and weights once; cached afterwards)."""
        return kinds.kind(self.adapter).build(model_id=self.model_id, path=self.path,
                                              labels=self.labels, settings=settings,
                                              name=self.name)

    @property
    def tensor_group(self) -> str:
        """Models that share a pipeline and tensor spec share one tensor asset."""
        if kinds.kind(self.adapter).tensor_spec is not None:
            return self.pipeline
        return f"{self.pipeline}_{self.name}"  # the model file declares its own input


@dataclass(frozen=True)
class DatasetConfig:
    name: str

    @property
    def key(self) -> str:
        """Dagster asset-key prefix: dataset names may hold '-' and '.', keys may not."""
        return re.sub(r"[^A-Za-z0-9_]", "_", self.name)


#: cards per run of a backfill (``BackfillPolicy.multi_run``) unless the config says:
#: large enough that Dagster's per-run cost (~1-2 s: run and step start, the run's planned
#: events) is small beside the batch, small enough that a killed backfill loses little.
DEFAULT_BATCH_CARDS = 500


@dataclass(frozen=True)
class ProjectConfig:
    datasets: tuple[DatasetConfig, ...]
    models: tuple[ModelConfig, ...] = field(default_factory=tuple)
    #: cards per run when a backfill (UI or ``orchestration.backfill``) covers many cards
    batch_cards: int = DEFAULT_BATCH_CARDS

    @property
    def pipelines(self) -> list[str]:
        return list(dict.fromkeys(m.pipeline for m in self.models))


def _model(entry: Any, where: str) -> ModelConfig:
    if not isinstance(entry, dict):
        raise InvalidInputError(f"{where}: expected a mapping with name and adapter, got {entry!r}")
    name = str(entry.get("name", ""))
    if not _ASSET_NAME.match(name):
        raise InvalidInputError(f"{where}: model name {name!r} must be letters, digits and "
                                "underscores, starting with a letter (it names Dagster assets)")
    kind = entry.get("adapter")
    found = kinds.KINDS.get(kind) if isinstance(kind, str) else None
    if found is None:
        raise InvalidInputError(f"{where}: adapter {kind!r} of model {name!r}: expected one of "
                                f"{ADAPTER_KINDS}")
    model_id = entry.get("model_id")
    path = entry.get("path")
    if found.takes_model_id and model_id is None and path is None:
        raise InvalidInputError(f"{where}: model {name!r} needs model_id or path")
    if not found.takes_model_id and not path:
        raise InvalidInputError(f"{where}: {kind} model {name!r} needs a path")
    pipeline = found.pipeline or entry.get("pipeline", "pad_nn")
    labels = entry.get("labels")
    return ModelConfig(name, kind, int(model_id) if model_id is not None else None,
                       str(path) if path else None, tuple(labels) if labels else None,
                       str(pipeline))


def load_config(path: str | os.PathLike[str] | None = None) -> ProjectConfig:
    """Config from ``path``, else ``$PAD_ASSETS_CONFIG``, else the packaged default."""
    source = Path(path or config_file_from_env() or DEFAULT_CONFIG)
    try:
        doc = yaml.safe_load(source.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise InvalidInputError(f"cannot read the pad_assets config {source}: {exc}") from exc
    if not isinstance(doc, dict) or not doc.get("datasets"):
        raise InvalidInputError(f"{source}: expected a mapping with a non-empty 'datasets' list")
    datasets = []
    for d in doc["datasets"]:
        name = d.get("name") if isinstance(d, dict) else d
        datasets.append(DatasetConfig(validate_name(str(name), f"dataset name in {source}")))
    models = tuple(_model(m, f"{source} models[{i}]") for i, m in enumerate(doc.get("models") or []))
    if len({m.name for m in models}) != len(models):
        raise InvalidInputError(f"{source}: model names must be unique")
    keys = [d.key for d in datasets]
    if len(set(keys)) != len(keys):
        raise InvalidInputError(f"{source}: two datasets map to the same asset prefix: {keys}")
    batch = (doc.get("backfill") or {}).get("batch_cards", DEFAULT_BATCH_CARDS)
    if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
        raise InvalidInputError(f"{source}: backfill.batch_cards must be a positive integer, "
                                f"got {batch!r}")
    return ProjectConfig(tuple(datasets), models, batch)

"""The Dagster code location loaded by ``workspace.yaml`` (``dagster dev``)."""

from pad_assets.orchestration.definitions import build_definitions

defs = build_definitions()

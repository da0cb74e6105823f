"""Local PAD API emulator: the PAD API, image host and dataset registry on 127.0.0.1.

No machine here reaches the real PAD services, and tests must not depend on them anyway;
the emulator serves the same routes and shapes with SYNTHETIC, deterministic cards (and
on-purpose edge cases) so every part of pad_assets runs its real network path.

    from pad_assets.devtools.emulator import Emulator
    with Emulator() as emu:
        ...  # PAD_API_URL=emu.base_url, PAD_REGISTRY_URL=emu.registry_url
"""

from __future__ import annotations

from .catalog import (
    CARD_ISSUES,
    CURRENT_COLUMNS,
    DEFAULT_DATASET,
    LEGACY_COLUMNS,
    Catalog,
    DatasetSpec,
    EdgeCases,
    EmulatorConfig,
    ModelArtifact,
    folder_of,
    image_url,
    processed_file_location,
    split_unit,
)
from .server import Emulator, cli_main
from .synthetic import (
    CAMERAS,
    DRUGS,
    QUANTITIES,
    SYNTHETIC_COMMENT,
    CardAttributes,
    card_attributes,
    card_png,
    render_card,
)

__all__ = [
    "CAMERAS",
    "CARD_ISSUES",
    "CURRENT_COLUMNS",
    "DEFAULT_DATASET",
    "DRUGS",
    "LEGACY_COLUMNS",
    "QUANTITIES",
    "SYNTHETIC_COMMENT",
    "CardAttributes",
    "Catalog",
    "DatasetSpec",
    "EdgeCases",
    "Emulator",
    "EmulatorConfig",
    "ModelArtifact",
    "card_attributes",
    "card_png",
    "cli_main",
    "folder_of",
    "image_url",
    "processed_file_location",
    "render_card",
    "split_unit",
]

"""Tests of pad_assets.provenance."""

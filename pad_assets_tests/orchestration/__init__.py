"""Tests of pad_assets.orchestration."""

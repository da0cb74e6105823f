"""Tests of pad_assets.sources."""

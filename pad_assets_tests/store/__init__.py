"""Tests of pad_assets.store."""

"""Tests of pad_assets.maintenance."""

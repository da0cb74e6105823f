"""Tests of pad_assets.cli."""

"""Tests of pad_assets.comparison."""

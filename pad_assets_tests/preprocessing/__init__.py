"""Tests of pad_assets.preprocessing."""

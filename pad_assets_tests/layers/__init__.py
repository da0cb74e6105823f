"""Tests of pad_assets.layers."""

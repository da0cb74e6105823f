"""Tests of pad_assets.models."""

"""Tests of pad_assets.sharing."""

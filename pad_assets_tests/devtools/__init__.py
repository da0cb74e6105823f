"""Tests of pad_assets.devtools."""

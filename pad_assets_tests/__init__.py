"""pad_assets tests (a package so helpers like ``pls_reference`` import by name)."""

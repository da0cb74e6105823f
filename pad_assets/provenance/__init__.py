"""Where a cached item came from, read back from the cache (never written to it).

``chain`` is the one collector: it reads a card's Merkle chain from the index. The
renderers format it: ``lineage`` (one card as a tree of text), ``audit`` (a CSV row per
card x model) and ``prov_json`` (W3C PROV-JSON; ``card_prov`` draws it). ``model_spec``
turns the CLI's model specs into adapters. ``layers/stamp.py`` writes the facts every item
carries.
"""

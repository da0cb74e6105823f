"""Where a cached item came from: a card's lineage, the audit export and its PROV document.

Reads what the layers recorded (``layers/stamp.py`` writes the facts every item carries);
never writes to the cache.
"""

"""Development-only parts: the local PAD API emulator, the demo models' training and the demo.

They exist so that tests, benchmarks and ``pad-assets demo`` run on a machine with no access
to the lab's server. Nothing in the core (sources, store, preprocessing, models, layers,
dataset, comparison) imports this package; it imports the core like any other user.
"""

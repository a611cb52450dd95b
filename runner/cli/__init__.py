"""The command line: `python -m runner` (entry.py), the preflight that composes every job before any runs,
Hydra's glue and private internals, the sweep callbacks and progress lines. Imports every room below it."""

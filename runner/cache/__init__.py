"""`python -m runner.cache` (a command path kept); the code: runner/results/cache_replay.py."""

"""`python -m runner.compare` (a command path kept); the code: runner/baseline/sweep_compare.py."""

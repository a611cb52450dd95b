"""`python -m runner.compare A B`: the sweep comparison gate is runner/baseline/sweep_compare.py."""
import sys

from runner.baseline.sweep_compare import main

if __name__ == "__main__":
    sys.exit(main())

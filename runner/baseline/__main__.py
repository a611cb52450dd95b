"""`python -m runner.baseline check|update ...` (cli.py)."""
import sys

from .cli import main

sys.exit(main())

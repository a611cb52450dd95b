"""`python -m runner.baseline check|update ...` (cli.py)."""
import sys

from .commands import main

sys.exit(main())

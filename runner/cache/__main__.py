"""`python -m runner.cache <results dir | sweep dir | sweep id | run id>`: the expert-cache replay is
runner/results/cache_replay.py."""
import sys

from runner.results.cache_replay import main

if __name__ == "__main__":
    sys.exit(main())

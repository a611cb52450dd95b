"""`python -m runner`: the command line is runner/cli/entry.py."""
from runner.cli.entry import cli, main  # noqa: F401 - `runner.__main__:cli` stays an entry point

if __name__ == "__main__":
    cli()

"""A --config-dir full of bad files, for the preflight tests in-process (tests/integration/test_config_refusals.py)
and through the CLI (tests/e2e/test_cli_refusals.py)."""
from __future__ import annotations

from pathlib import Path

EVIL = """# @package _global_
hydra:
  callbacks:
    x:
      _target_: builtins.open
      _args_: [{victim}, "w"]
"""


def config_dir(tmp: Path) -> Path:
    """A --config-dir with a malformed, a binary, an evil and two typo'd files."""
    root = tmp / "confdir"
    (root / "experiment").mkdir(parents=True)
    (root / "model").mkdir()
    (root / "experiment" / "broken.yaml").write_text("# @package _global_\nmodel:\n  name: [unclosed\n")
    (root / "experiment" / "binary.yaml").write_bytes(b"\xff\xfe\x00\x81" * 16)
    (root / "experiment" / "typo.yaml").write_text("# @package _global_\nmodel:\n  weigths: random\n")
    (root / "experiment" / "evil.yaml").write_text(EVIL.format(victim=tmp / "victim.txt"))
    (root / "experiment" / "logger.yaml").write_text("# @package _global_\nhydra:\n  job_logging:\n    formatters:\n"
                                                     "      simple:\n        (): os.system\n")
    (root / "model" / "mine.yaml").write_text("defaults:\n  - olmoe_tiny\n  - _self_\nname: mine\nhiden_size: 8\n")
    return root

"""Where a result came from: package versions, git state, host. Cached per process."""
from __future__ import annotations

import os
import platform
import socket
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


@lru_cache(maxsize=1)
def runner_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("moe-profiler")
    except PackageNotFoundError:
        pass
    pyproject = REPO / "pyproject.toml"
    if pyproject.is_file():
        import tomllib

        try:
            return tomllib.loads(pyproject.read_text())["project"]["version"]
        except (KeyError, ValueError):
            pass
    return "unknown"


SYSTEM_PATH = "/usr/local/bin:/usr/bin:/bin"


def git_environment() -> dict[str, str]:
    """The fixed environment of the provenance's `git` calls: none of the job's variables (a config's
    hydra.job.env_set, GIT_CONFIG_*, PATH) can change what git runs; HOME from the password database, for the user's
    own ~/.gitconfig (safe.directory)."""
    import pwd

    env = {"PATH": SYSTEM_PATH, "LC_ALL": "C", "GIT_CONFIG_NOSYSTEM": "1", "GIT_TERMINAL_PROMPT": "0"}
    try:
        env["HOME"] = pwd.getpwuid(os.getuid()).pw_dir
    except KeyError:  # a uid without an entry (some containers): no global git config
        env["GIT_CONFIG_GLOBAL"] = os.devnull
    return env


@lru_cache(maxsize=1)
def git_state() -> tuple[str | None, bool | None]:
    """(HEAD sha, dirty?) of the checkout the runner is imported from; (None, None) outside git."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(REPO), "-c", "core.fsmonitor=false", *args], capture_output=True,
                              text=True, timeout=10, check=True, env=git_environment()).stdout.strip()

    try:
        sha = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
        return sha, dirty
    except (OSError, subprocess.SubprocessError):
        return None, None


@lru_cache(maxsize=1)
def versions() -> dict[str, str]:
    """Installed versions, read from package metadata (no import: also safe at interpreter exit)."""
    from importlib.metadata import PackageNotFoundError, version

    def installed(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    torch = sys.modules.get("torch")  # the imported build string (e.g. 2.13.0+cpu) when available
    return dict(runner_version=runner_version(),
                torch_version=getattr(torch, "__version__", None) or installed("torch"),
                transformers_version=installed("transformers"), python_version=platform.python_version())


def provenance() -> dict:
    sha, dirty = git_state()
    return dict(**versions(), git_sha=sha, git_dirty=dirty, host=socket.gethostname(), pid=os.getpid())

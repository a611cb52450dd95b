"""Files the app writes, and directories a user names: atomic writes with temp names unique per writer, directories
created or refused in one line, and the temp files of writers that died (kill -9) removed.

Every temp file is `.<name>.<host>-<pid>-<random>.tmp` beside its target: dot-prefixed (readers skip it), unique per
writer (two reports into one directory never share one), and naming its writer, so that a later writer on the same
host can tell a dead writer's leftover (`remove_stale_temps`) from a live one's.
"""
from __future__ import annotations

import contextlib
import os
import re
import socket
import uuid
from pathlib import Path
from typing import Callable

from .errors import OutputError

_HOST = re.sub(r"[^A-Za-z0-9_\-]", "_", socket.gethostname())[:40] or "host"
_TEMP = re.compile(r"^\..+\.(?P<host>[A-Za-z0-9_\-]+)-(?P<pid>\d+)-[0-9a-f]{8}\.tmp$")  # temp_path's names


def temp_path(path: Path) -> Path:
    """A temp name beside `path`, unique to this writer and naming it."""
    return path.with_name(f".{path.name}.{_HOST}-{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")


def write_atomic(path: str | os.PathLike, content: str | bytes | Callable[[Path], object], what: str = "") -> Path:
    """Write `content` (text, bytes, or a function writing the given temp path) to `path` atomically: a unique temp
    file beside it, then os.replace. OutputError (one line, the temp file removed) when it cannot be written: a full
    disk, a directory that is a file, no permission."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        if isinstance(content, str):
            tmp.write_text(content, encoding="utf-8", newline="")
        elif isinstance(content, bytes):
            tmp.write_bytes(content)
        else:
            content(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise OutputError(f"cannot write {what + ' ' if what else ''}{path} ({exc.strerror or exc})") from None
    return path


def user_directory(path: str | os.PathLike, key: str) -> Path:
    """Create the directory a user named (`key`: the option or config key) with its parents; OutputError in one line
    when it cannot be: a part of it is a file, no permission, a full disk."""
    directory = Path(path).expanduser()
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        blocker = next((p for p in (directory, *directory.parents) if p.exists() and not p.is_dir()), None)
        why = f"{blocker} is a file, not a directory" if blocker is not None else (exc.strerror or str(exc))
        raise OutputError(f"{key}: cannot create the directory {directory} ({why}); use a directory path") from None
    return directory


def creatable(path: str | os.PathLike) -> str | None:
    """Why the directory `path` could not be created, without creating anything (None: it can be, or exists)."""
    directory = Path(path).expanduser().absolute()
    for part in (directory, *directory.parents):
        if part.exists():
            if not part.is_dir():
                return f"{part} is a file, not a directory"
            if part != directory and not os.access(part, os.W_OK | os.X_OK):
                return f"{part} is not writable"
            return None
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_temps(root: str | os.PathLike, pattern: str = "**/.*.tmp") -> int:
    """Remove the temp files under `root` whose writer was a process of this host that no longer runs (a kill -9
    mid-write leaves them; a trace's can be GBs). Returns how many were removed; never fails."""
    removed = 0
    with contextlib.suppress(OSError):
        for path in Path(root).glob(pattern):
            match = _TEMP.match(path.name)
            if match is None or match["host"] != _HOST or _alive(int(match["pid"])):
                continue
            with contextlib.suppress(OSError):
                path.unlink()
                removed += 1
    return removed

"""Writing files atomically: a crash mid-write leaves the previous file whole."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w") -> Iterator[IO]:
    """Open a temporary file beside ``path``; on success it is synced and renamed to ``path``.

    The file gets the permissions of any other new file (0666 less the umask; ``mkstemp``
    alone would make it 0600, unreadable to the user's group)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _umask() -> int:
    current = os.umask(0)  # reading the umask means setting it; put it back at once
    os.umask(current)
    return current


def write_json_atomic(obj: Any, path: str | Path, indent: int | None = None) -> None:
    """``obj`` as JSON at ``path``, written atomically."""
    with atomic_open(path, "w") as f:
        json.dump(obj, f, indent=indent)

"""Files an agent writes: atomically, and private ones 0600 from the first byte."""

from __future__ import annotations

import os
import stat
from pathlib import Path

__all__ = ["write_file"]


def write_file(path: Path, data: bytes, *, private: bool = False) -> None:
    """Write atomically; ``private`` files are created 0600 from the first byte.

    A path that exists and is not a regular file (a pipe, ``/dev/stdout``, a
    terminal) is written into as it is: renaming over it would put a regular file
    where the pipe or device was (run as root, ``-o /dev/null`` replaced the device).
    """
    try:
        special = not stat.S_ISREG(os.stat(path).st_mode)
    except OSError:  # no such file yet (or not ours to look at): the atomic way
        special = False
    if special:
        with open(path, "wb") as f:
            f.write(data)
        return
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise

"""The one atomic writer: a reader sees the old file or the new one, never half of one. Torch-free (the
launcher, the ranks and the data tools all write through it).

    write_atomic(path, "text")                    # str, bytes, or any JSON value with as_json=True
    write_atomic(path, record, as_json=True, indent=2, fsync=True)
    record = read_json(path)                      # None when it is missing or half-written by an old version

The temp file sits beside the target (same filesystem, so the rename is atomic) and carries the pid, so
processes writing the same file never share a temp file.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from typing import IO, Iterator


def temp_path(path: str, hidden: bool = False) -> str:
    """PATH.tmpPID beside path (.NAME.tmpPID when hidden: kept out of listings such as the index's)."""
    folder, name = os.path.split(path)
    return os.path.join(folder, f".{name}.tmp{os.getpid()}") if hidden else f"{path}.tmp{os.getpid()}"


@contextlib.contextmanager
def atomic_file(path: str, mode: str = "w", fsync: bool = False, hidden: bool = False) -> Iterator[IO]:
    """Open a temp file beside path; on a clean exit it replaces path (fsynced first, and the folder after,
    when asked); on an error it is removed and path is untouched."""
    tmp = temp_path(path, hidden)
    try:
        with open(tmp, mode) as fh:
            yield fh
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        remove_quietly(tmp)
        raise
    if fsync:
        fsync_dir(os.path.dirname(path) or ".")


def same_bytes_atomic(source: str, path: str) -> None:
    """path becomes a second name of the file source (a hard link, renamed into place: no second write of the
    bytes); where the filesystem has no hard links, a copy, written atomically. Safe because every writer here
    replaces a file by rename, never in place: a later save of source leaves path's bytes alone."""
    tmp = temp_path(path, hidden=True)
    try:
        os.link(source, tmp)
    except OSError:  # no hard links here (some network and FUSE filesystems)
        with open(source, "rb") as src, atomic_file(path, "wb", fsync=True, hidden=True) as dst:
            shutil.copyfileobj(src, dst, 1 << 22)
        return
    try:
        os.replace(tmp, path)
    except BaseException:
        remove_quietly(tmp)
        raise
    fsync_dir(os.path.dirname(path) or ".")


def write_atomic(path: str, data, as_json: bool = False, indent: int | None = None, fsync: bool = False,
                 hidden: bool = False) -> None:
    """Write str, bytes, or (as_json) a JSON value to path atomically."""
    if as_json:
        data = json.dumps(data, indent=indent)
    with atomic_file(path, "wb" if isinstance(data, bytes) else "w", fsync=fsync, hidden=hidden) as fh:
        fh.write(data)


def read_json(path: str) -> dict | None:
    """The JSON object in path, or None when there is none (missing, unreadable, or not JSON)."""
    try:
        with open(path) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


def fsync_dir(folder: str) -> None:
    """Make a rename in folder durable (the directory entry itself is data)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass

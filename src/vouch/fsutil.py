"""Writing files so that no reader ever sees half of one, and secrets are never world-readable."""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from pathlib import Path

from vouch.errors import Conflict, Unavailable


def atomic_write(path: Path, data: bytes, *, mode: int = 0o644, overwrite: bool = True) -> None:
    """Write ``data`` to ``path`` via a temporary file, fsync and rename.

    With ``overwrite=False`` an existing file is never replaced (a key, say), checked atomically.
    """
    refuse_special(path)
    directory = path.parent
    # Random as well as per process: a leftover of a crashed writer (the same PID in another
    # container run, say) is never taken for the target existing.
    tmp = directory / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        try:
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        if overwrite:
            tmp.replace(path)
        else:
            # link() fails if the target exists: no window in which another writer could win.
            os.link(tmp, path)
            tmp.unlink()
        fsync_dir(directory)
    except FileExistsError as exc:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise Conflict(f"{path} already exists; refusing to overwrite it") from exc
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise Unavailable(f"cannot write {path}: {_describe(exc, path)}") from exc


def refuse_special(path: Path) -> None:
    """``BadInput`` if ``path`` is there but is no regular file: a write through rename would
    replace a device, a FIFO or a symbolic link (and what it points to would keep its old
    content), which is never what an output path meant."""
    from vouch.errors import BadInput

    try:
        status = os.lstat(path)
    except OSError:
        return
    if stat.S_ISLNK(status.st_mode):
        raise BadInput(
            f"{path} is a symbolic link; refusing to replace it",
            hint="name the file it points to, or another path",
        )
    if not stat.S_ISREG(status.st_mode) and not stat.S_ISDIR(status.st_mode):
        raise BadInput(f"{path} is not a regular file (a device or a FIFO); refusing to write it")


def probe_writable(path: Path) -> None:
    """Fail now, with the reason, if a file cannot be created beside ``path``.

    Callers probe before acting (issuing, say) so a bad output path costs nothing; os.access
    is not enough (root, /proc, read-only mounts), so a real temporary file is created.
    """
    from vouch.errors import BadInput

    if path.is_dir():
        raise BadInput(f"cannot write {path}: it is a directory")
    refuse_special(path)
    if not path.parent.is_dir():
        raise BadInput(f"cannot write {path}: directory {path.parent} does not exist")
    probe = path.parent / f".{path.name}.{os.getpid()}.probe"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
        probe.unlink()
    except OSError as exc:
        raise Unavailable(f"cannot write {path}: {_describe(exc, path)}") from exc


def fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (best effort: some filesystems refuse)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _describe(exc: OSError, target: Path | None = None) -> str:
    reasons = {
        errno.ENOSPC: "the disk is full",
        errno.EDQUOT: "the disk quota is exhausted",
        errno.EACCES: "permission denied",
        errno.EPERM: "permission denied",
        errno.EROFS: "the file system is read-only",
        errno.ENOTDIR: "a path component is not a directory",
        errno.EISDIR: "it is a directory",
    }
    if exc.errno == errno.ENOENT:
        named = target or (Path(os.fsdecode(exc.filename)) if exc.filename else None)
        if named is not None and not named.parent.is_dir():
            return "its directory does not exist"
        return "no such file"
    return reasons.get(exc.errno or 0, exc.strerror or type(exc).__name__)


def describe_os_error(exc: OSError) -> str:
    return _describe(exc)


def read_limited(path: Path, limit: int, what: str) -> bytes:
    """Read at most ``limit`` bytes (plus one, to tell that a file is too large)."""
    from vouch.errors import BadInput

    try:
        with path.open("rb") as handle:
            data = handle.read(limit + 1)
    except OSError as exc:
        raise BadInput(f"cannot read {what} {path}: {_describe(exc)}") from exc
    if len(data) > limit:
        size = path.stat().st_size
        raise BadInput(f"{what} {path} is {size / 1e6:.1f} MB; at most {limit // 1024} KiB is read")
    return data

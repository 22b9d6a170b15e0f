"""What every command needs: the home, the passphrase source, error rendering, exit codes."""

from __future__ import annotations

import errno
import getpass
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from vouch.errors import AuthenticationFailed, VouchError

# One exit status per error category, chosen here and nowhere else.
EXIT_CODES = {
    "internal": 1,
    "bad-input": 3,
    "policy": 4,
    "lint": 4,
    "not-found": 5,
    "conflict": 6,
    "authentication": 7,
    "config": 8,
    "unavailable": 9,
}


@dataclass
class CliState:
    home: Path
    passphrase_file: Path | None = None


def default_home() -> Path:
    env = os.environ.get("VOUCH_HOME")
    return Path(env).expanduser() if env else Path.home() / ".vouch"


def fail(message: str, *, hint: str | None = None, code: int = 1) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    if hint:
        print(f"hint: {hint}", file=sys.stderr)
    raise SystemExit(code)


@contextmanager
def errors_to_exit() -> Iterator[None]:
    """Turn vouch errors into a message and an exit status; never a traceback for them."""
    try:
        yield
    except VouchError as exc:
        fail(exc.message, hint=exc.hint, code=EXIT_CODES.get(exc.category, 1))
    except KeyboardInterrupt:
        fail("interrupted", code=130)
    except (OSError, RecursionError, UnicodeError) as exc:
        fail_plainly(exc)


_OS_HINTS = {
    errno.ENOSPC: ("the disk is full", "free space and run the command again", 9),
    errno.EDQUOT: ("the disk quota is used up", "free space and run the command again", 9),
    errno.EROFS: ("the file system is read-only", "use a writable place", 9),
    errno.EIO: ("the disk failed a read or write", "check the kernel log (dmesg)", 9),
    errno.EACCES: ("permission denied", "check the owner and mode of the path", 7),
    errno.EPERM: ("operation not permitted", "check the owner and mode of the path", 7),
    errno.ENOENT: ("no such file or directory", "check the path", 5),
    errno.ENOTDIR: ("a part of the path is not a directory", "check the path", 3),
    errno.EISDIR: ("it is a directory, not a file", "name a file", 3),
    errno.EEXIST: ("it already exists", "choose another path or remove it first", 6),
    errno.ENAMETOOLONG: ("the file name is too long", "choose a shorter name", 3),
}


def fail_plainly(exc: BaseException) -> NoReturn:
    """What the system refused, said plainly (a path and a reason), with no traceback: the
    file system (a full disk, a read-only mount, a missing directory), input nested too deeply
    to read, or text that is not valid in its encoding."""
    if isinstance(exc, RecursionError):
        fail("the input is nested too deeply to be read", code=3)
    if isinstance(exc, UnicodeError):
        reason = getattr(exc, "reason", "") or "bad characters"
        fail(f"text that cannot be encoded or decoded here ({reason})", code=3)
    assert isinstance(exc, OSError)
    what, hint, code = _OS_HINTS.get(
        exc.errno or 0, (exc.strerror or type(exc).__name__, None, 9)
    )
    where = f"{exc.filename}: " if exc.filename is not None else ""
    fail(f"{where}{what}", hint=hint, code=code)


def passphrase_source(state: CliState, *, confirm_new: bool = False) -> Callable[[str], bytes]:
    """Passphrase from --passphrase-file, VOUCH_PASSPHRASE, keys.passphrase_file, or a prompt.

    Asked once per process and remembered; a new key's passphrase is confirmed at a prompt.
    """
    cache: list[bytes] = []

    def read_file(path: Path) -> bytes:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise AuthenticationFailed(
                f"cannot read the passphrase file {path}: {exc.strerror}"
            ) from exc
        return data.rstrip(b"\r\n")

    def get(description: str) -> bytes:
        if cache:
            return cache[0]
        value: bytes | None = None
        if state.passphrase_file is not None:
            value = read_file(state.passphrase_file)
        elif os.environ.get("VOUCH_PASSPHRASE"):
            value = os.environ["VOUCH_PASSPHRASE"].encode("utf-8")
        else:
            configured = _configured_passphrase_file(state.home)
            if configured is not None:
                value = read_file(configured)
        if value is None:
            if not sys.stdin.isatty():
                raise AuthenticationFailed(
                    f"a passphrase is needed for the {description}",
                    hint="set VOUCH_PASSPHRASE, pass --passphrase-file, or run in a terminal",
                )
            value = getpass.getpass(f"Passphrase for {description}: ").encode("utf-8")
            if confirm_new and description.startswith("new"):
                again = getpass.getpass("Repeat the passphrase: ").encode("utf-8")
                if again != value:
                    raise AuthenticationFailed("the passphrases do not match")
        if not value:
            raise AuthenticationFailed("the passphrase is empty")
        cache.append(value)
        return value

    return get


def _configured_passphrase_file(home: Path) -> Path | None:
    from vouch.config import CONFIG_NAME, load_config

    if not (home / CONFIG_NAME).exists():
        return None
    configured = load_config(home).keys.passphrase_file
    if not configured:
        return None
    path = Path(configured).expanduser()
    return path if path.is_absolute() else home / path

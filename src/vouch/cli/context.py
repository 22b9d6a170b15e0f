"""What every command needs: the home, the passphrase source, error rendering, exit codes."""

from __future__ import annotations

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

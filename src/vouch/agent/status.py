"""The agent's status file: each certificate's expiry, next renewal and last error, as JSON.

Written atomically after every check, so ``vouch agent status`` (or a monitoring system) can read
it at any time without talking to the agent or the CA.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from vouch.errors import BadInput, NotFound
from vouch.fsutil import atomic_write, read_limited

STATUS_NAME = "status.json"


@dataclass(frozen=True)
class CertificateStatus:
    name: str
    names: list[str]
    serial: str | None
    not_before: str | None
    not_after: str | None
    next_renewal: str
    reason: str
    failures: int
    last_error: str | None
    last_renewed: str | None
    renewals: int
    # Installed files the service has not loaded yet: its reload command is owed (retried at
    # every pass, with backoff after failures; next_reload is when, if backing off).
    reload_pending: bool = False
    reload_failures: int = 0
    next_reload: str | None = None


@dataclass(frozen=True)
class AgentStatus:
    updated: str
    directory: str
    renewal_info: bool  # the CA publishes RFC 9773 renewal information
    certificates: list[CertificateStatus]


def iso(when: dt.datetime | None) -> str | None:
    return None if when is None else when.astimezone(dt.UTC).isoformat(timespec="seconds")


def write_status(state_dir: Path, status: AgentStatus) -> None:
    body = json.dumps(asdict(status), indent=2) + "\n"
    atomic_write(state_dir / STATUS_NAME, body.encode(), mode=0o644)


def read_status(state_dir: Path) -> AgentStatus:
    path = state_dir / STATUS_NAME
    if not path.exists():
        raise NotFound(
            f"no agent status at {path}",
            hint="the agent writes it after its first check: run `vouch agent --once`",
        )
    try:
        raw: dict[str, Any] = json.loads(read_limited(path, 64 << 20, "agent status"))
        certificates = [CertificateStatus(**c) for c in raw.pop("certificates")]
        return AgentStatus(**raw, certificates=certificates)
    except (ValueError, TypeError, KeyError) as exc:
        raise BadInput(f"{path} is not an agent status file") from exc

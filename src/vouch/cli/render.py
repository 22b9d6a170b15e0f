"""Rendering records for people (Rich tables) and scripts (stable JSON shapes)."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import sys
from typing import Any

from vouch.store.records import AuthorityRecord, CertificateRecord


def iso(value: dt.datetime | None) -> str | None:
    return None if value is None else value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def certificate_json(record: CertificateRecord, now: dt.datetime) -> dict[str, Any]:
    return {
        "serial": record.serial,
        "ca": record.authority,
        "profile": record.profile,
        "names": [value for _, value in record.names],
        "subject": record.subject,
        "key_type": record.key_type,
        "not_before": iso(record.not_before),
        "not_after": iso(record.not_after),
        "status": record.status(now),
        "revoked_at": iso(record.revoked_at),
        "revocation_reason": record.revocation_reason,
        "sha256": hashlib.sha256(record.der).hexdigest().upper() if record.der else None,
    }


def authority_json(record: AuthorityRecord, parent: str | None) -> dict[str, Any]:
    return {
        "name": record.name,
        "role": record.role,
        "status": record.status,
        "serial": record.serial,
        "parent": parent,
        "not_before": iso(record.not_before),
        "not_after": iso(record.not_after),
        "key_backend": record.key_backend,
        "key_type": record.key_type,
        "sha256": hashlib.sha256(record.certificate).hexdigest().upper(),
    }


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=False) + "\n")


def print_table(title: str, columns: list[str], rows: list[list[str]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_lines=False)
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*row)
    Console().print(table)


def print_fields(title: str, fields: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    for key, value in fields.items():
        shown = (
            ", ".join(map(str, value))
            if isinstance(value, list)
            else ("" if value is None else str(value))
        )
        table.add_row(key, shown)
    Console().print(table)

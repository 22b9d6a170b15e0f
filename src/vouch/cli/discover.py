"""``vouch discover HOST:PORT...``: inventory the certificates TLS endpoints serve."""

from __future__ import annotations

import datetime as dt
import json
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from vouch.cli.context import errors_to_exit, fail

if TYPE_CHECKING:
    from vouch.agent.discover import Finding

PROBLEMS_EXIT = 11  # like `vouch monitor`: it ran, and found something that needs a person


def discover_command(
    endpoints: Annotated[
        list[str],
        typer.Argument(help="HOST:PORT (port 443 if left out; IPv6 addresses in brackets)."),
    ],
    ca_file: Annotated[
        list[Path] | None,
        typer.Option(
            "--ca-file",
            help="Also trust these CA certificates (PEM); repeatable.",
            show_default=False,
        ),
    ] = None,
    no_system_trust: Annotated[
        bool, typer.Option("--no-system-trust", help="Trust only the --ca-file certificates.")
    ] = False,
    servername: Annotated[
        str | None,
        typer.Option(
            "--servername",
            help="SNI name to send (default: the host, unless an IP).",
            show_default=False,
        ),
    ] = None,
    warn_days: Annotated[
        float, typer.Option("--warn-days", help="Report certificates expiring within this.")
    ] = 14.0,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds per endpoint.")] = 10.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the inventory as JSON.")] = False,
) -> None:
    """Connect to TLS endpoints and list the certificates they serve, whoever issued them, with
    chain problems: expired, self-signed, incomplete chain, name mismatch, weak key.

    Exits 11 when any endpoint has a problem or cannot be reached."""
    from vouch.agent.discover import MAX_ENDPOINTS, discover, load_trust, parse_endpoint

    if len(endpoints) > MAX_ENDPOINTS:
        fail(f"at most {MAX_ENDPOINTS} endpoints at a time", code=3)
    if not 0 < timeout <= 300 or warn_days < 0:
        fail("--timeout is 0 to 300 seconds and --warn-days not negative", code=3)
    with errors_to_exit():
        parsed = [parse_endpoint(e, servername=servername) for e in endpoints]
        anchors = load_trust(ca_file or [], system=not no_system_trust)
    now = dt.datetime.now(dt.UTC)
    with ThreadPoolExecutor(min(16, len(parsed))) as pool:
        findings = list(pool.map(
            lambda e: discover(e, anchors, now=now, warn_within=dt.timedelta(days=warn_days),
                               timeout=timeout),
            parsed,
        ))  # fmt: skip
    if as_json:
        print(json.dumps([asdict(f) for f in findings], indent=2))
    else:
        _render(findings)
    if any(f.problems for f in findings):
        raise SystemExit(PROBLEMS_EXIT)


def _render(findings: list[Finding]) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="TLS endpoints")
    for column in ("endpoint", "subject / names", "issuer", "expires", "key", "problems"):
        table.add_column(column, overflow="fold")
    for f in findings:
        if f.leaf is None:
            table.add_row(
                f.endpoint, "-", "-", "-", "-", "[red]" + escape("\n".join(f.problems)) + "[/red]"
            )
            continue
        problems = escape("\n".join(f.problems)) or ("[green]ok[/green]" if f.trusted else "")
        table.add_row(
            f.endpoint,
            escape(f"{f.leaf.subject or '(empty)'}\n{', '.join(f.leaf.sans)}"),
            escape(f.leaf.issuer),
            f"{f.leaf.not_after}\n({f.days_left:.1f} days)",
            f.leaf.key,
            f"[red]{problems}[/red]" if f.problems else problems,
        )
    Console(width=None if sys.stdout.isatty() else 160).print(table)

"""``vouch agent``: keep certificates renewed over ACME; ``vouch agent status``: where they stand."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import signal
import sys
import threading
from dataclasses import asdict
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer

from vouch.cli.context import errors_to_exit, fail

app = typer.Typer(no_args_is_help=False, add_completion=False)

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        help="The agent's TOML file (default: $VOUCH_AGENT_CONFIG or /etc/vouch/agent.toml).",
        show_default=False,
    ),
]
FAILED_EXIT = 9  # some certificate could not be renewed (or reloaded); the others were


def _config_path(config: Path | None) -> Path:
    from vouch.agent.config import DEFAULT_CONFIG

    if config is not None:
        return config
    env = os.environ.get("VOUCH_AGENT_CONFIG")
    return Path(env) if env else DEFAULT_CONFIG


def _logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    # The ACME library logs whole requests at debug level; they are ours to summarize.
    for noisy in ("acme", "urllib3", "requests"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@app.callback(invoke_without_command=True)
def agent_command(
    ctx: typer.Context,
    config: ConfigOption = None,
    once: Annotated[
        bool, typer.Option("--once", help="One pass: renew what is due, then exit (for timers).")
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="With --once: renew every certificate, due or not.")
    ] = False,
    log_level: Annotated[
        str, typer.Option("--log-level", help="debug, info, warning or error.")
    ] = "info",
) -> None:
    """Keep the configured certificates issued and renewed over ACME (see docs/agent.md)."""
    if ctx.invoked_subcommand is not None:
        ctx.meta["vouch.agent.config"] = config  # `vouch agent --config F status` works too
        return
    if log_level.lower() not in ("debug", "info", "warning", "error"):
        fail(f"unknown log level {log_level!r}", hint="debug, info, warning or error", code=3)
    if force and not once:
        fail("--force goes with --once", code=3)
    _logging(log_level)
    from vouch.agent.config import load_agent_config
    from vouch.agent.daemon import Agent

    with errors_to_exit():
        agent = Agent(load_agent_config(_config_path(config)))
        if once:
            result = agent.run_once(force=force)
            if result.failed:
                fail(
                    f"{len(result.failed)} certificate(s) failed: {', '.join(result.failed)}",
                    hint="the log above says why; `vouch agent status` shows the rest",
                    code=FAILED_EXIT,
                )
            return
        stop = threading.Event()

        def stopping(signum: int, frame: FrameType | None) -> None:
            logging.getLogger("vouch.agent").info("%s: finishing", signal.Signals(signum).name)
            stop.set()

        signal.signal(signal.SIGTERM, stopping)
        signal.signal(signal.SIGINT, stopping)
        agent.run_forever(stop)


@app.command("status")
def status_command(
    ctx: typer.Context,
    config: ConfigOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the status file as JSON.")] = False,
) -> None:
    """Each certificate's expiry, next renewal and last error, from the agent's status file."""
    from vouch.agent.config import load_agent_config
    from vouch.agent.status import read_status

    with errors_to_exit():
        path = _config_path(config or ctx.meta.get("vouch.agent.config"))
        status = read_status(load_agent_config(path).agent.state_dir)
    if as_json:
        print(json.dumps(asdict(status), indent=2))
        return
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"vouch agent: {status.directory} (as of {status.updated})")
    for column in ("name", "names", "serial", "expires", "next renewal", "why", "last error"):
        table.add_column(column, overflow="fold")
    now = dt.datetime.now(dt.UTC)
    for cert in status.certificates:
        expired = cert.not_after is not None and dt.datetime.fromisoformat(cert.not_after) < now
        table.add_row(
            cert.name, ", ".join(cert.names), cert.serial or "-",
            f"[red]{cert.not_after} (expired)[/red]" if expired else (cert.not_after or "-"),
            cert.next_renewal, escape(cert.reason),
            f"[red]{escape(cert.last_error)}[/red] ({cert.failures}x)" if cert.last_error else "",
        )  # fmt: skip
    Console(width=None if sys.stdout.isatty() else 160).print(table)
    if not status.renewal_info:
        print("the CA publishes no renewal information (RFC 9773): renewing by lifetime only")

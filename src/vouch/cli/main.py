"""``vouch``: the command line."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vouch.cli import (
    acme_admin,
    admin,
    agent,
    audit,
    bootstrap,
    ca,
    ceremony,
    cert,
    crl,
    demo,
    discover,
    incident,
    init,
    keys,
    monitor,
    remote,
    serve,
    token,
)
from vouch.cli.context import CliState, default_home

app = typer.Typer(
    name="vouch",
    help="vouch: a complete, automated public key infrastructure.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def main(
    ctx: typer.Context,
    home: Annotated[
        Path | None,
        typer.Option(
            "--home", help="The vouch home (default: $VOUCH_HOME or ~/.vouch).", show_default=False
        ),
    ] = None,
    passphrase_file: Annotated[
        Path | None,
        typer.Option(
            "--passphrase-file", help="File holding the key passphrase.", show_default=False
        ),
    ] = None,
    server: Annotated[
        str | None,
        typer.Option(
            "--server",
            envvar="VOUCH_SERVER",
            help="Act on a remote vouch (cert and ca commands) through its API; its root is "
            "pinned by vouch bootstrap.",
            show_default=False,
        ),
    ] = None,
    token_file: Annotated[
        Path | None,
        typer.Option(
            "--token-file",
            help="With --server: an administrator's API token (else $VOUCH_TOKEN).",
            show_default=False,
        ),
    ] = None,
) -> None:
    ctx.obj = CliState(home=(home or default_home()).expanduser(), passphrase_file=passphrase_file)
    remote.select(ctx, server, token_file)


app.command("init")(init.init_command)
app.command("demo")(demo.demo_command)
app.command("crl")(crl.crl_command)
app.command("serve")(serve.serve_command)
app.command("publish")(serve.publish_command)
app.command("monitor")(monitor.monitor_command)
app.command("discover")(discover.discover_command)
app.add_typer(agent.app, name="agent", help="Keep certificates renewed over ACME (a daemon, or --once).")
app.add_typer(cert.app, name="cert", help="Issue, list, show and export certificates.")
app.add_typer(ca.app, name="ca", help="List, inspect and create certificate authorities.")
app.add_typer(audit.app, name="audit", help="The audit log: verify, prove, export, witness.")
app.add_typer(keys.app, name="keys", help="CA keys: list, test, back up (M-of-N), restore.")
app.add_typer(ceremony.app, name="ceremony", help="Offline root ceremonies with signed transcripts.")
app.add_typer(acme_admin.app, name="acme", help="ACME administration: external account binding keys.")
app.command("token")(token.token_command)
app.command("bootstrap")(bootstrap.bootstrap_command)
app.add_typer(admin.app, name="admin", help="API tokens for administrators; provisioners.")
app.add_typer(incident.app, name="incident", help="Emergency rotation of a compromised CA.")


def run() -> None:
    app()

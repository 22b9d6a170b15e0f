"""``vouch``: the command line.

Each run imports only the module of the command it names (and Typer converts only that one):
loading all of them costs more than a one-shot command's own work. Without a known command name
(``vouch``, ``vouch --help``, a typo) every command is registered, as help and suggestions need.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NamedTuple

import typer

from vouch.cli.context import CliState, default_home

if TYPE_CHECKING:
    from collections.abc import Iterable


class _Entry(NamedTuple):
    """A command (``help`` None: the function's docstring) or a group of commands (a Typer)."""

    name: str
    module: str
    attribute: str
    help: str | None = None


# In the order `vouch --help` lists them.
COMMANDS: tuple[_Entry, ...] = (
    _Entry("init", "init", "init_command"),
    _Entry("demo", "demo", "demo_command"),
    _Entry("crl", "crl", "crl_command"),
    _Entry("serve", "serve", "serve_command"),
    _Entry("publish", "serve", "publish_command"),
    _Entry("monitor", "monitor", "monitor_command"),
    _Entry("discover", "discover", "discover_command"),
    _Entry("agent", "agent", "app", "Keep certificates renewed over ACME (a daemon, or --once)."),
    _Entry("cert", "cert", "app", "Issue, list, show and export certificates."),
    _Entry("ca", "ca", "app", "List, inspect and create certificate authorities."),
    _Entry("audit", "audit", "app", "The audit log: verify, prove, export, witness."),
    _Entry("keys", "keys", "app", "CA keys: list, test, back up (M-of-N), restore."),
    _Entry("ceremony", "ceremony", "app", "Offline root ceremonies with signed transcripts."),
    _Entry("acme", "acme_admin", "app", "ACME administration: external account binding keys."),
    _Entry("token", "token", "token_command"),
    _Entry("bootstrap", "bootstrap", "bootstrap_command"),
    _Entry("admin", "admin", "app", "API tokens for administrators; provisioners."),
    _Entry("incident", "incident", "app", "Emergency rotation of a compromised CA."),
)

# The global options that take a value (see main() below): the parser skips their values.
_VALUE_OPTIONS = frozenset({"--home", "--passphrase-file", "--server", "--token-file"})


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
    from vouch.cli import remote

    ctx.obj = CliState(home=(home or default_home()).expanduser(), passphrase_file=passphrase_file)
    remote.select(ctx, server, token_file)


def build_app(names: Iterable[str] | None = None) -> typer.Typer:
    """The ``vouch`` app with the commands ``names`` (all when None)."""
    wanted = None if names is None else set(names)
    app = typer.Typer(
        name="vouch",
        help="vouch: a complete, automated public key infrastructure.",
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        add_completion=False,
    )
    app.callback()(main)
    for entry in COMMANDS:
        if wanted is not None and entry.name not in wanted:
            continue
        target = getattr(importlib.import_module(f"vouch.cli.{entry.module}"), entry.attribute)
        if isinstance(target, typer.Typer):
            app.add_typer(target, name=entry.name, help=entry.help)
        else:
            app.command(entry.name)(target)
    return app


def command_named(args: Sequence[str]) -> str | None:
    """The command ``args`` run (after the global options), if it is one of ``COMMANDS``."""
    known = {entry.name for entry in COMMANDS}
    index = 0
    while index < len(args):
        arg = args[index]
        if arg == "--":
            index += 1
            break
        if arg in _VALUE_OPTIONS:
            index += 2
        elif arg.split("=", 1)[0] in _VALUE_OPTIONS and "=" in arg:
            index += 1
        elif arg.startswith("-"):
            return None  # --help, or an error the full app reports as usual
        else:
            break
    if index < len(args) and args[index] in known:
        return args[index]
    return None


def __getattr__(name: str) -> typer.Typer:
    # ``vouch.cli.main.app``: the full app, built on first use, for tools that load it (docs).
    if name == "app":
        app = globals()["app"] = build_app()
        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def run() -> None:
    from vouch.cli.context import fail, fail_plainly
    from vouch.errors import VouchError

    command = command_named(sys.argv[1:])
    try:
        build_app(None if command is None else [command])()
    except VouchError as exc:  # one a command did not turn into its message itself
        from vouch.cli.context import EXIT_CODES

        fail(exc.message, hint=exc.hint, code=EXIT_CODES.get(exc.category, 1))
    except (OSError, RecursionError, UnicodeError) as exc:
        fail_plainly(exc)
    except OverflowError:  # a number beyond what a date or the store can hold
        fail("a number given is too large", code=3)

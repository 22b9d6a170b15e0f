"""CLI start-up: a run builds only the command it names (after the global options), and the full
app where help or a suggestion needs every command."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import typer
from hypothesis import given
from hypothesis import strategies as st

from vouch.cli import main as cli_main
from vouch.cli.main import COMMANDS, build_app, command_named

NAMES = [entry.name for entry in COMMANDS]
VALUE_OPTIONS = ["--home", "--passphrase-file", "--server", "--token-file"]

# An option's value may look like anything: a command name, an option, an empty string.
values = st.one_of(
    st.sampled_from([*NAMES, "--help", "-", "--", "", "x=y"]),
    st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=12),
)


@st.composite
def global_options(draw: st.DrawFn) -> list[str]:
    """Global options that take a value, in any order and number, as ``--opt V`` or ``--opt=V``."""
    args: list[str] = []
    for option in draw(st.lists(st.sampled_from(VALUE_OPTIONS), max_size=6)):
        value = draw(values)
        args += [f"{option}={value}"] if draw(st.booleans()) else [option, value]
    if draw(st.booleans()):
        args.append("--")
    return args


def names(app: typer.Typer) -> set[str | None]:
    return {g.name for g in app.registered_groups} | {c.name for c in app.registered_commands}


@given(global_options(), st.sampled_from(NAMES), st.lists(values, max_size=4))
def test_the_command_after_global_options(
    options: list[str], command: str, rest: list[str]
) -> None:
    assert command_named([*options, command, *rest]) == command


@given(
    global_options(),
    values.filter(lambda word: word not in NAMES and not word.startswith("-")),
    st.lists(values, max_size=4),
)
def test_no_command_for_unknown_names(options: list[str], word: str, rest: list[str]) -> None:
    assert command_named([*options, word, *rest]) is None


@given(
    global_options(),
    st.sampled_from(["--help", "-h", "--version", "--hom", "--home-dir=x", "-x", "--no-such"]),
    st.sampled_from(NAMES),
)
def test_no_command_after_help_or_another_option(
    options: list[str], option: str, command: str
) -> None:
    # (after ``--`` a word starting with "-" is not a command name either)
    assert command_named([*options, option, command]) is None


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ([], None),
        (["cert"], "cert"),
        (["--home", "ca", "cert"], "cert"),  # "ca" is --home's value
        (["--home=ca", "cert", "issue"], "cert"),
        (["--", "ca"], "ca"),
        (["--", "--help"], None),
        (["--home"], None),  # its value is missing
        (["--home", "x", "--server"], None),
        (["--passphrase-file", "p", "--token-file", "t", "--server", "s", "keys"], "keys"),
        (["Cert"], None),
        (["cert", "--help"], "cert"),  # help for one command needs only that command
        (["--help", "cert"], None),
    ],
)
def test_command_named_examples(args: list[str], expected: str | None) -> None:
    assert command_named(args) == expected


def test_build_app_registers_only_the_named_command() -> None:
    assert names(build_app(["cert"])) == {"cert"}
    assert names(build_app(["init", "ca"])) == {"init", "ca"}
    assert names(build_app()) == set(NAMES)


def test_a_named_command_imports_no_other_command_module() -> None:
    others = sorted({f"vouch.cli.{e.module}" for e in COMMANDS if e.module != "cert"})
    code = (
        "import json, sys\n"
        "from vouch.cli.main import build_app\n"
        "build_app(['cert'])\n"
        f"print(json.dumps([m for m in {others!r} if m in sys.modules]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert json.loads(out.stdout) == []


def test_module_app_is_the_full_app_built_once() -> None:
    app = cli_main.app
    assert isinstance(app, typer.Typer) and names(app) == set(NAMES)
    assert cli_main.app is app  # built on first use, then kept
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        cli_main.nothing  # noqa: B018


def test_a_typo_still_gets_a_suggestion() -> None:
    from tests.servers import VOUCH, vouch_env

    typo = subprocess.run(
        [VOUCH, "cret"], capture_output=True, text=True, timeout=60, env=vouch_env(COLUMNS="200")
    )
    assert typo.returncode != 0
    assert re.search(r"No such command 'cret'\.\s+Did you mean 'cert'\?", typo.stderr), typo.stderr
    # With global options before it too; and a named command still runs behind them.
    typo = subprocess.run(
        [VOUCH, "--home=/nonexistent", "cret"],
        capture_output=True,
        text=True,
        timeout=60,
        env=vouch_env(COLUMNS="200"),
    )
    assert typo.returncode != 0 and "Did you mean 'cert'?" in typo.stderr, typo.stderr
    shown = subprocess.run(
        [VOUCH, "--home", "/nonexistent", "cert", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        env=vouch_env(COLUMNS="200"),
    )
    assert shown.returncode == 0 and "issue" in shown.stdout, shown.stderr

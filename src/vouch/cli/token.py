"""``vouch token``: one-time provisioner tokens for the API."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from vouch.cli.context import CliState, errors_to_exit, passphrase_source

if TYPE_CHECKING:
    from vouch.services.provisioners import Provisioner
    from vouch.wiring import Vouch


def token_command(
    ctx: typer.Context,
    names: Annotated[list[str], typer.Argument(help="The names the certificate may carry.")],
    ttl: Annotated[
        str | None,
        typer.Option("--ttl", help="How long the token is good (default: the provisioner's)."),
    ] = None,
    provisioner: Annotated[
        str | None,
        typer.Option(
            "--provisioner", help="Which provisioner signs it (default: the only token one)."
        ),
    ] = None,
    audience: Annotated[
        str | None,
        typer.Option("--audience", help="The API URL it is for (default: this home's)."),
    ] = None,
    key_file: Annotated[
        Path | None,
        typer.Option(
            "--key-file",
            help="Sign with this P-256 key (PEM) instead of a home's provisioner key: for a "
            "provisioner created through the API. Needs --provisioner and --audience.",
        ),
    ] = None,
) -> None:
    """Print a signed token that lets its bearer get one certificate for NAMES, once, soon.

    Redeem it with POST /api/v1/certificates {"csr": ..., "token": ...} (docs/api.md)."""
    if key_file is not None:
        _token_from_key_file(ctx, names, ttl, provisioner, audience, key_file)
        return
    from vouch.durations import parse_duration
    from vouch.errors import BadInput, ConfigError
    from vouch.keys.base import KeyRef
    from vouch.services.tokens import mint_token
    from vouch.wiring import Vouch
    from vouch.x509.names import dedupe, parse_name

    state: CliState = ctx.obj
    with errors_to_exit():
        vouch = Vouch(state.home, passphrase=passphrase_source(state))
        try:
            chosen = _choose(vouch, provisioner)
            parsed = dedupe(parse_name(n) for n in names)
            chosen.policy.check_names(parsed)  # fail here, not when the machine redeems it
            lifetime = parse_duration(ttl) if ttl else chosen.token_ttl
            if lifetime > chosen.max_token_ttl:
                raise BadInput(
                    f"--ttl {ttl} is longer than provisioner {chosen.name} allows "
                    f"({chosen.max_token_ttl})"
                )
            if not chosen.key_ref:
                raise ConfigError(
                    f"provisioner {chosen.name} has no key here (provisioners.key)",
                    hint="run this where its private key is configured, or sign with "
                    "--key-file KEY --audience URL",
                )
            key = vouch.keys.load(KeyRef.parse(chosen.key_ref))
            if key.public_key() != chosen.public_key:
                raise ConfigError(
                    f"the key {chosen.key_ref} is not provisioner {chosen.name}'s public_key"
                )
            token = mint_token(
                key,
                provisioner=chosen.name,
                audience=audience or vouch.api_audience(),
                names=[n.value for n in parsed],
                ttl=lifetime,
                now=vouch.clock.now(),
            )
        finally:
            vouch.close()
    print(token)


def _token_from_key_file(
    ctx: typer.Context,
    names: list[str],
    ttl: str | None,
    provisioner: str | None,
    audience: str | None,
    key_file: Path,
) -> None:
    """No home: the key, the provisioner's name and the API URL are all given. The server
    checks the names against the provisioner's policy when the token is redeemed."""
    import datetime as dt

    from cryptography.hazmat.primitives import serialization

    from vouch.durations import parse_duration
    from vouch.errors import AuthenticationFailed, BadInput
    from vouch.fsutil import describe_os_error
    from vouch.services.tokens import mint_token
    from vouch.x509.names import dedupe, parse_name

    state: CliState = ctx.obj
    with errors_to_exit():
        if provisioner is None or audience is None:
            raise BadInput(
                "--key-file needs --provisioner NAME and --audience URL",
                hint="the audience is the API's URL, e.g. https://pki.example.com/api/v1",
            )
        try:
            data = key_file.read_bytes()
        except OSError as exc:
            raise BadInput(f"cannot read {key_file}: {describe_os_error(exc)}") from exc
        try:
            try:
                key = serialization.load_pem_private_key(data, password=None)
            except TypeError:  # encrypted: the passphrase as for the home's keys
                secret = passphrase_source(state)(f"the key {key_file}")
                key = serialization.load_pem_private_key(data, password=secret)
        except ValueError as exc:
            raise AuthenticationFailed(
                f"{key_file} is not a PEM private key, or the passphrase is wrong"
            ) from exc
        token = mint_token(
            key,  # type: ignore[arg-type]  # mint_token refuses anything but P-256
            provisioner=provisioner,
            audience=audience,
            names=[n.value for n in dedupe(parse_name(n) for n in names)],
            ttl=parse_duration(ttl) if ttl else dt.timedelta(minutes=5),
            now=dt.datetime.now(dt.UTC),
        )
    print(token)


def _choose(vouch: Vouch, name: str | None) -> Provisioner:
    from vouch.errors import BadInput, NotFound

    if name is not None:
        found = vouch.provisioners.get(name)
        if found.type != "token":
            raise BadInput(f"provisioner {name} is of type {found.type}; tokens need type token")
        return found
    # Those whose key this home holds (one created through the API has none here).
    candidates = [p for p in vouch.provisioners.all() if p.type == "token" and p.key_ref]
    if not candidates:
        raise NotFound(
            "this home has no token provisioner",
            hint="vouch admin provisioner add NAME creates one",
        )
    if len(candidates) > 1:
        raise BadInput(
            "several token provisioners: name one with --provisioner",
            hint=", ".join(p.name for p in candidates),
        )
    return candidates[0]

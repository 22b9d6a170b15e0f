"""``vouch admin``: API tokens for administrators, and provisioners (these also on a remote
vouch: ``vouch --server URL admin provisioner add|list|remove``)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from vouch.cli import remote
from vouch.cli.context import CliState, errors_to_exit, fail, passphrase_source

if TYPE_CHECKING:
    from vouch.wiring import Vouch

app = typer.Typer(no_args_is_help=True)
tokens_app = typer.Typer(no_args_is_help=True)
provisioners_app = typer.Typer(no_args_is_help=True)
app.add_typer(tokens_app, name="token", help="Administrators' API tokens (shown once).")
app.add_typer(provisioners_app, name="provisioner", help="Who may ask the API for certificates.")

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON.")]


@app.callback()
def _group(ctx: typer.Context) -> None:
    remote.guard(ctx, "admin")  # with --server, only the provisioner commands (cli/remote.py)


@provisioners_app.callback()
def _provisioners(ctx: typer.Context) -> None:
    remote.guard(ctx, "provisioner")


def _open(ctx: typer.Context) -> Vouch:
    from vouch.wiring import Vouch

    state: CliState = ctx.obj
    return Vouch(state.home, passphrase=passphrase_source(state))


@tokens_app.command("new")
def token_new(
    ctx: typer.Context,
    role: Annotated[str, typer.Option("--role", help="admin, operator or auditor.")],
    name: Annotated[
        str, typer.Option("--name", help="Whose token it is, e.g. alice@example.com.")
    ] = "admin",
    ttl: Annotated[
        str | None, typer.Option("--ttl", help="Expires after this (e.g. 90d); default never.")
    ] = None,
) -> None:
    """Create an API token and print it once (only its SHA-256 is kept)."""
    from vouch.durations import parse_duration

    with errors_to_exit():
        vouch = _open(ctx)
        try:
            created = vouch.admin_tokens().create(
                name, role, ttl=parse_duration(ttl) if ttl else None
            )
        finally:
            vouch.close()
    print(
        f"API token {created.record.id} for {name} ({role}); shown once, keep it secret:",
        file=sys.stderr,
    )
    print(created.token)


@tokens_app.command("list")
def token_list(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """The API tokens (never their secrets)."""
    from vouch.cli.render import iso, print_json, print_table

    with errors_to_exit():
        vouch = _open(ctx)
        try:
            records = vouch.admin_tokens().list()
        finally:
            vouch.close()
    rows = [
        {
            "id": r.id,
            "name": r.name,
            "role": r.role,
            "created_at": iso(r.created_at),
            "expires_at": iso(r.expires_at),
            "revoked_at": iso(r.revoked_at),
        }
        for r in records
    ]
    if as_json:
        print_json(rows)
        return
    print_table(
        "API tokens",
        ["id", "name", "role", "created", "expires", "revoked"],
        [[str(v or "") for v in row.values()] for row in rows],
    )


@tokens_app.command("revoke")
def token_revoke(
    ctx: typer.Context, token_id: Annotated[int, typer.Argument(help="The token's id.")]
) -> None:
    """Revoke an API token at once (on every node)."""
    with errors_to_exit():
        vouch = _open(ctx)
        try:
            vouch.admin_tokens().revoke(token_id)
        finally:
            vouch.close()
    print(f"API token {token_id} revoked")


@provisioners_app.command("add")
def provisioner_add(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The provisioner's name (letters, digits, ._-).")],
    suffix: Annotated[
        list[str] | None,
        typer.Option("--allow-suffix", help="DNS suffix its tokens may name (repeatable)."),
    ] = None,
    profile: Annotated[
        list[str] | None, typer.Option("--profile", help="Profile it may use (repeatable).")
    ] = None,
    max_lifetime: Annotated[
        str | None, typer.Option("--max-lifetime", help="Longest certificate, e.g. 30d.")
    ] = None,
    ca: Annotated[
        list[str] | None,
        typer.Option("--ca", help="CA its tokens may issue from (repeatable; default: any)."),
    ] = None,
    public_key: Annotated[
        Path | None,
        typer.Option(
            "--public-key",
            help="With --server: the provisioner's P-256 public key (PEM); its private key "
            "stays with whoever mints its tokens.",
        ),
    ] = None,
) -> None:
    """Make a token provisioner: a P-256 key (encrypted, in keys/provisioners/) and its
    [[provisioners]] entry in vouch.toml; with --server, on the remote vouch from a public key
    (kept in its store, served by every node)."""
    if (api := remote.client(ctx)) is not None:
        if public_key is None:
            fail("a remote provisioner needs --public-key FILE (a P-256 public key, PEM)", code=2)
        try:
            pem = public_key.read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError) as exc:
            fail(f"cannot read {public_key}: {exc}", code=2)
        body: dict[str, object] = {
            "name": name, "public_key": pem, "profiles": profile or [], "cas": ca or [],
        }  # fmt: skip
        if suffix:
            body["policy"] = {"allowed_dns_suffixes": suffix}
        if max_lifetime:
            body["max_lifetime"] = max_lifetime
        remote.provisioner_add(api, body)
        return
    if public_key is not None:
        fail(
            "--public-key is for a remote vouch (--server URL); here a key pair is made",
            code=2,
        )
    import tomllib

    from cryptography.hazmat.primitives import serialization

    from vouch.config import (
        CONFIG_NAME,
        ProvisionerSettings,
        VouchConfig,
        load_config,
        toml_string,
    )
    from vouch.errors import BadInput, Conflict
    from vouch.fsutil import atomic_write
    from vouch.keys.base import KeyRef
    from vouch.services.provisioners import build_provisioners

    state: CliState = ctx.obj
    with errors_to_exit():
        try:
            ProvisionerSettings(name=name)
        except ValueError as exc:
            raise BadInput(
                f"not a provisioner name: {name!r}", hint="letters, digits and ._- (64 at most)"
            ) from exc
        config = load_config(state.home)
        if any(p.name == name for p in config.provisioners):
            raise Conflict(f"a provisioner named {name!r} already exists")
        public_path = f"provisioners/{name}.pub.pem"
        ref = KeyRef("file", f"keys/provisioners/{name}.key.pem")
        lines = [
            "",
            "[[provisioners]]",
            f"name = {toml_string(name)}",
            'type = "token"',
            f"public_key = {toml_string(public_path)}",
            f"key = {toml_string(str(ref))}",
        ]
        if profile:
            lines.append(f"profiles = [{', '.join(toml_string(p) for p in profile)}]")
        if ca:
            lines.append(f"cas = [{', '.join(toml_string(c) for c in ca)}]")
        if max_lifetime:
            lines.append(f"max_lifetime = {toml_string(max_lifetime)}")
        if suffix:
            allowed = ", ".join(toml_string(s) for s in suffix)
            lines.append(f"policy = {{ allowed_dns_suffixes = [{allowed}] }}")
        path = state.home / CONFIG_NAME
        text = path.read_text(encoding="utf-8").rstrip("\n") + "\n" + "\n".join(lines) + "\n"
        try:  # the new entry must read back before anything is written
            checked = VouchConfig.model_validate(tomllib.loads(text))
            build_provisioners(checked.provisioners[-1:], lambda _path: _throwaway_public_key())
        except (ValueError, tomllib.TOMLDecodeError) as exc:
            raise BadInput(f"that provisioner would not be valid: {exc}") from exc
        vouch = _open(ctx)
        try:
            if any(r.name == name for r in vouch.api_store.provisioners()):
                raise Conflict(
                    f"a provisioner named {name!r} was created through the API",
                    hint="choose another name, or remove that one first",
                )
            (state.home / "keys" / "provisioners").mkdir(mode=0o700, exist_ok=True)
            # The key and its public half are taken back if vouch.toml cannot be written: a
            # retry then starts clean instead of finding them "already there".
            with vouch.keys.discarding_on_failure(ref):
                key = vouch.keys.generate(ref, "ec-p256")
                public = key.public_key().public_bytes(
                    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
                )
                (state.home / "provisioners").mkdir(mode=0o755, exist_ok=True)
                atomic_write(state.home / public_path, public, overwrite=False)
                try:
                    atomic_write(path, text.encode("utf-8"), mode=0o600)
                except BaseException:
                    (state.home / public_path).unlink(missing_ok=True)
                    raise
        finally:
            vouch.close()
    print(f"Provisioner {name} added to {CONFIG_NAME}; its public key is {public_path}")
    print(f"Mint a token: vouch token www.example.com --provisioner {name}")
    print(f"A running vouch serve adopts it within seconds (it re-reads {CONFIG_NAME}).")


@provisioners_app.command("remove")
def provisioner_remove(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="A provisioner created through the API.")],
) -> None:
    """Remove a provisioner created through the API: its tokens are refused from then on (one in
    vouch.toml is removed by deleting its entry there)."""
    if (api := remote.client(ctx)) is not None:
        remote.provisioner_remove(api, name)
        return
    with errors_to_exit():
        vouch = _open(ctx)
        try:
            vouch.api_provisioners().remove(name)
        finally:
            vouch.close()
    print(f"Provisioner {name} removed: a running vouch serve refuses its tokens within seconds.")


@provisioners_app.command("list")
def provisioner_list(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """The provisioners in force: those in vouch.toml and those created through the API."""
    from vouch.cli.render import print_json, print_table

    if (api := remote.client(ctx, token=False)) is not None:
        described = remote.provisioner_list(api)
    else:
        with errors_to_exit():
            vouch = _open(ctx)
            try:
                described = [p.describe() for p in vouch.provisioners.all()]
            finally:
                vouch.close()
    if as_json:
        print_json(described)
        return
    print_table(
        "Provisioners",
        ["name", "type", "profiles", "CAs", "max lifetime", "policy"],
        [
            [
                d["name"],
                d["type"],
                ", ".join(d["profiles"]) or "any",
                ", ".join(d.get("cas") or []) or "any",
                d["max_lifetime"] or "",
                str(d["policy"] or ""),
            ]
            for d in described
        ],
    )


def _throwaway_public_key() -> bytes:
    """Stands in for the new provisioner's key while its entry is checked."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    return (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )

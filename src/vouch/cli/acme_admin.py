"""``vouch acme``: ACME administration: external account binding keys, renewal windows."""

from __future__ import annotations

from typing import Annotated

import typer

from vouch.cli.context import CliState, errors_to_exit, fail, passphrase_source

app = typer.Typer(no_args_is_help=True)
eab_app = typer.Typer(no_args_is_help=True)
app.add_typer(eab_app, name="eab", help="External account binding keys (RFC 8555 7.3.4).")


def _open(ctx: typer.Context):  # type: ignore[no-untyped-def]
    from vouch.wiring import Vouch

    state: CliState = ctx.obj
    return Vouch(state.home, passphrase=passphrase_source(state))


@eab_app.command("new")
def eab_new_command(
    ctx: typer.Context,
    note: Annotated[
        str, typer.Option("--note", help="Who or what the key is for (shown by list).")
    ] = "",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Make a single-use EAB key; its HMAC key is printed now and never again."""
    from vouch.cli.render import print_json

    if len(note) > 500 or any(ord(c) < 32 for c in note):
        fail("--note is at most 500 printable characters", code=3)
    with errors_to_exit():
        vouch = _open(ctx)
        made = vouch.acme.new_eab_key(note)
    if as_json:
        print_json({"key_id": made.key_id, "hmac_key": made.hmac_key})
        return
    print(f"key id:   {made.key_id}")
    print(f"hmac key: {made.hmac_key}")
    # With "=": a base64url key may begin with "-", which the clients would take for an option.
    print("The HMAC key is shown only now. Give both to the account holder, e.g.")
    print(f"  certbot ... --eab-kid={made.key_id} --eab-hmac-key=HMAC_KEY")
    print(f"  lego ... --eab --kid={made.key_id} --hmac=HMAC_KEY")


@eab_app.command("list")
def eab_list_command(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """EAB keys: unused, bound (to which account) or revoked. HMAC keys are never shown."""
    from vouch.cli.render import iso, print_json, print_table

    with errors_to_exit():
        keys = _open(ctx).acme.eab_keys()
    rows = [
        {
            "key_id": k.key_id,
            "status": k.status,
            "note": k.note,
            "created_at": iso(k.created_at),
            "account": k.account_id,
            "bound_at": iso(k.bound_at),
            "revoked_at": iso(k.revoked_at),
        }
        for k in keys
    ]
    if as_json:
        print_json(rows)
        return
    print_table(
        "EAB keys",
        ["key id", "status", "account", "created", "note"],
        [
            [r["key_id"], r["status"], str(r["account"] or ""), r["created_at"] or "", r["note"]]
            for r in rows
        ],
    )


@eab_app.command("revoke")
def eab_revoke_command(
    ctx: typer.Context,
    key_id: Annotated[str, typer.Argument(help="The key id, as `vouch acme eab list` shows.")],
) -> None:
    """Revoke an EAB key: it can no longer register an account (a bound account stays)."""
    with errors_to_exit():
        key = _open(ctx).acme.revoke_eab_key(key_id)
    print(f"revoked {key.key_id}" + (f" (bound to account {key.account_id})" if key.account_id else ""))


@app.command("renew-now")
def renew_now_command(
    ctx: typer.Context,
    serial: Annotated[
        list[str] | None,
        typer.Option("--serial", help="A certificate's serial (hex); repeatable.", show_default=False),
    ] = None,
    ca: Annotated[
        str | None,
        typer.Option("--ca", help="Every certificate this CA issued until now.", show_default=False),
    ] = None,
) -> None:
    """Tell ACME clients to renew now (RFC 9773): their renewal window moves to the present."""
    from vouch.store.repository import CertificateQuery
    from vouch.x509.serials import format_serial, parse_serial

    if not serial and ca is None:
        fail("give --serial SERIAL (repeatable) or --ca NAME", code=3)
    with errors_to_exit():
        vouch = _open(ctx)
        ids = []
        for value in serial or []:
            found = vouch.store.certificates(
                CertificateQuery(serial=format_serial(parse_serial(value)))
            )
            if not found:
                fail(f"no issued certificate with serial {value}", code=5)
            ids += [r.id for r in found]
        count = vouch.acme.renew_now(certificate_ids=ids, authority=ca)
    print(f"renewal windows pulled to now: {count} override(s) recorded")

"""``vouch keys``: Key backends: list, health-check, back up and restore CA keys."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from vouch.cli.context import EXIT_CODES, CliState, errors_to_exit, passphrase_source

app = typer.Typer(no_args_is_help=True)


def _open(ctx: typer.Context):  # type: ignore[no-untyped-def]
    from vouch.wiring import Vouch

    state: CliState = ctx.obj
    return Vouch(state.home, passphrase=passphrase_source(state))


@app.command("list")
def list_command(
    ctx: typer.Context, as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False
) -> None:
    """Every CA key: backend, reference, algorithm, and the SHA-256 of its public key."""
    from vouch.cli.render import print_json, print_table
    from vouch.services.key_health import ca_keys

    with errors_to_exit():
        vouch = _open(ctx)
        try:
            keys = ca_keys(vouch.store.list_authorities())
        finally:
            vouch.close()
    rows = [
        {
            "ca": k.ca,
            "role": k.role,
            "status": k.status,
            "backend": k.backend,
            "ref": k.ref,
            "key_type": k.key_type,
            "spki_sha256": k.spki_sha256,
        }
        for k in keys
    ]
    if as_json:
        print_json(rows)
        return
    print_table(
        "CA keys",
        ["ca", "role", "status", "backend", "reference", "type", "public key SHA-256"],
        [
            [
                r["ca"],
                r["role"],
                r["status"],
                r["backend"],
                r["ref"],
                r["key_type"],
                r["spki_sha256"],
            ]
            for r in rows
        ],
    )


@app.command("test")
def test_command(
    ctx: typer.Context,
    ca: Annotated[
        str | None, typer.Option("--ca", help="Test this CA's key only.", show_default=False)
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Sign and verify once with each CA key this vouch holds; non-zero exit if one fails."""
    from vouch.cli.render import print_json
    from vouch.services.key_health import check_key, testable

    with errors_to_exit():
        vouch = _open(ctx)
        try:
            if ca is not None:
                records = [vouch.store.get_authority(ca)]
                if not testable(records[0]):
                    from vouch.errors import KeyUnavailable

                    raise KeyUnavailable(
                        f"CA {ca}'s key is not held by this vouch ({records[0].key_backend}, "
                        f"{records[0].status})",
                        hint="an offline root's key is tested in a ceremony",
                    )
            else:
                records = [r for r in vouch.store.list_authorities() if testable(r)]
            checks = [check_key(record, vouch.keys) for record in records]
        finally:
            vouch.close()
    failed = [c for c in checks if not c.ok]
    if as_json:
        print_json(
            [
                {
                    "ca": c.ca,
                    "ref": c.ref,
                    "ok": c.ok,
                    "sign_ms": None if c.seconds is None else round(c.seconds * 1000, 2),
                    "error": None if c.error is None else c.error.message,
                    "hint": None if c.error is None else c.error.hint,
                }
                for c in checks
            ]
        )
    else:
        for check in checks:
            if check.ok:
                assert check.seconds is not None
                print(
                    f"ok      {check.ca:<16} {check.ref}  (signed in {check.seconds * 1000:.1f} ms)"
                )
            else:
                assert check.error is not None
                print(f"FAILED  {check.ca:<16} {check.ref}: {check.error.message}")
                if check.error.hint:
                    print(f"        hint: {check.error.hint}")
    if failed:
        first = failed[0].error
        assert first is not None
        print(f"error: {len(failed)} of {len(checks)} CA keys cannot sign", file=sys.stderr)
        raise SystemExit(EXIT_CODES.get(first.category, 1))


@app.command("backup")
def backup_command(
    ctx: typer.Context,
    shares: Annotated[int, typer.Option("--shares", help="N: how many shares to make.")],
    threshold: Annotated[int, typer.Option("--threshold", help="M: how many restore the key.")],
    ca: Annotated[
        str | None, typer.Option("--ca", help="Back up this CA's key file.", show_default=False)
    ] = None,
    key_file: Annotated[
        Path | None,
        typer.Option(
            "--key-file",
            help="Back up this encrypted key file (e.g. an offline root's root.key.pem).",
            show_default=False,
        ),
    ] = None,
    out_dir: Annotated[
        Path, typer.Option("--out-dir", help="Where the backup and the share files go.")
    ] = Path(),
) -> None:
    """Encrypt a file-held CA key and split the key to it into N shares, any M of which restore
    it (SLIP-39 words for paper). Give each share file to a different person."""
    from cryptography import x509

    from vouch.clock import SystemClock
    from vouch.errors import BadInput, Conflict
    from vouch.fsutil import atomic_write
    from vouch.keys.base import KeyRef
    from vouch.services.key_backup import back_up_key, check_split

    state: CliState = ctx.obj
    with errors_to_exit():
        check_split(shares, threshold)
        if (ca is None) == (key_file is None):
            raise BadInput("name the key to back up: --ca NAME or --key-file PATH")
        if key_file is not None:
            from vouch.keys.file import FileKeyBackend

            label = key_file.name.removesuffix(".pem").removesuffix(".key")
            backend = FileKeyBackend(key_file.parent, passphrase_source(state))
            key = backend.load(KeyRef("file", key_file.name))
        else:
            assert ca is not None
            vouch = _open(ctx)
            try:
                record = vouch.store.get_authority(ca)
                ref = KeyRef.parse(record.key_ref)
                if ref.scheme != "file":
                    raise BadInput(
                        f"CA {ca}'s key is {record.key_backend}, not a file: it cannot be backed "
                        "up here",
                        hint="an HSM key is backed up with the HSM's own tools; an offline "
                        "root's with --key-file on the ceremony machine",
                    )
                # The key its certificate names, or a refusal: a backup of some other key
                # under the CA's name would restore a key that signs nothing that verifies.
                certificate = x509.load_der_x509_certificate(record.certificate)
                key = vouch._matching_key(record, certificate)
            finally:
                vouch.close()
            label = ca
        backup = back_up_key(
            key, label=label, shares=shares, threshold=threshold, now=SystemClock().now()
        )
        out_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        document = out_dir / f"{label}.backup.json"
        targets = [out_dir / f"{label}.share-{i}-of-{shares}.txt" for i in range(1, shares + 1)]
        for target in [document, *targets]:
            if target.exists():
                raise Conflict(f"{target} already exists; refusing to overwrite it")
        atomic_write(document, backup.document, mode=0o600, overwrite=False)
        for number, (target, words) in enumerate(zip(targets, backup.shares, strict=True), 1):
            text = (
                f"# vouch key backup share {number} of {shares} for {label} "
                f"(any {threshold} restore it; share set {backup.header['share_set']})\n"
                f"# key SHA-256 of public key: {backup.header['spki_sha256']}\n{words}\n"
            )
            atomic_write(target, text.encode("utf-8"), mode=0o600, overwrite=False)
    print(f"Backup of {label}: {document}")
    print(f"{shares} shares, any {threshold} restore the key:")
    for target in targets:
        print(f"  {target}")
    print("Print each share, give it to a different holder, and delete the share files.")


@app.command("restore")
def restore_command(
    ctx: typer.Context,
    backup: Path,
    out: Annotated[Path, typer.Option("--out", help="Write the restored key file here (0600).")],
    shares_file: Annotated[
        list[Path] | None,
        typer.Option(
            "--shares-file",
            help="A file with one or more shares (one per line; # comments). Repeatable. "
            "Without it, the words are asked for at the terminal.",
            show_default=False,
        ),
    ] = None,
    certificate: Annotated[
        Path | None,
        typer.Option(
            "--certificate",
            help="The CA certificate (PEM) the key must belong to: checked before anything is "
            "written.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Rebuild a backed-up key from any M of its shares, encrypted under a new passphrase."""
    from vouch.errors import BadInput, Conflict
    from vouch.fsutil import atomic_write, read_limited
    from vouch.keys.pkcs8 import encrypt_private_key
    from vouch.services.key_backup import MAX_BACKUP, read_backup, restore_key

    state: CliState = ctx.obj
    with errors_to_exit():
        if out.exists():
            raise Conflict(f"{out} already exists; refusing to overwrite it")
        document = read_backup(read_limited(backup, MAX_BACKUP, "backup file"))
        header = document["header"]
        mnemonics: list[str] = []
        for path in shares_file or ():
            text = read_limited(path, 64 * 1024, "shares file").decode("utf-8", "replace")
            mnemonics += [
                line.strip()
                for line in text.splitlines()
                if line.strip() and not line.lstrip().startswith("#")
            ]
        if not shares_file:
            if not sys.stdin.isatty():
                raise BadInput("no --shares-file given and no terminal to type the shares at")
            import getpass

            for number in range(1, int(header["threshold"]) + 1):
                mnemonics.append(getpass.getpass(f"Share {number} (words, hidden): "))
        key = restore_key(document, mnemonics)
        if certificate is not None:
            from cryptography import x509

            try:
                expected = x509.load_pem_x509_certificate(
                    read_limited(certificate, 64 * 1024, "certificate")
                ).public_key()
            except ValueError as exc:
                raise BadInput(f"{certificate} is not a PEM certificate") from exc
            if key.public_key() != expected:
                raise BadInput(
                    f"the restored key is not the key of the certificate in {certificate}; "
                    "nothing was written",
                    hint="check that this is the backup of that CA's key",
                )
        passphrase = passphrase_source(state, confirm_new=True)(f"new key {out.name}")
        if len(passphrase) < 8:
            raise BadInput("a key passphrase must have at least 8 characters")
        atomic_write(out, encrypt_private_key(key, passphrase), mode=0o600, overwrite=False)
    print(
        f"Restored {header['label']} ({header['key_type']}, public key SHA-256 "
        f"{header['spki_sha256']}) to {out}"
    )

"""``vouch init``: a new home with a root CA, an issuing intermediate and encrypted keys; or,
with ``--root-transcript``, a home under a root made in an offline ceremony (no root key here).

A failed init leaves nothing behind: no home, no offline root key, and no key objects in a
PKCS#11 token other than those that were there before it started.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from vouch.cli.context import CliState, errors_to_exit, passphrase_source

if TYPE_CHECKING:
    from vouch.keys.pkcs11 import KeyObject


def init_command(
    ctx: typer.Context,
    name: Annotated[
        str | None,
        typer.Option(
            "--name",
            help="Organization name in the CA certificates [default: Example Corp, or the "
            "root's with --root-transcript].",
            show_default=False,
        ),
    ] = None,
    country: Annotated[
        str | None,
        typer.Option(
            "--country",
            help="Two-letter country code of the organization [default: US, or the root's].",
            show_default=False,
        ),
    ] = None,
    key_type: Annotated[
        str, typer.Option("--key-type", help="ec-p256, ec-p384, rsa-3072, rsa-4096 or ed25519.")
    ] = "ec-p256",
    root_validity: Annotated[str, typer.Option("--root-validity")] = "20y",
    intermediate_validity: Annotated[str, typer.Option("--intermediate-validity")] = "5y",
    offline_root: Annotated[
        Path | None,
        typer.Option(
            "--offline-root",
            help="Write the root key here and keep none in the home.",
            show_default=False,
        ),
    ] = None,
    public_url: Annotated[
        str,
        typer.Option(
            "--public-url", help="Base URL written into certificates for AIA, CRL and OCSP."
        ),
    ] = "http://127.0.0.1:8080",
    permit_dns: Annotated[
        list[str] | None,
        typer.Option(
            "--permit-dns",
            help="Name-constrain the issuing CA to this DNS suffix (repeatable).",
            show_default=False,
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Replace an existing home (destroys its keys).")
    ] = False,
    passphrase_file: Annotated[
        Path | None,
        typer.Option(
            "--passphrase-file", help="File holding the key passphrase.", show_default=False
        ),
    ] = None,
    key_backend: Annotated[
        str,
        typer.Option(
            "--key-backend",
            help="Where the CA keys are made: file (encrypted files in the home) or "
            "pkcs11:token=LABEL (keys 'root' and 'issuing' made in the token).",
        ),
    ] = "file",
    pkcs11_module: Annotated[
        str | None,
        typer.Option(
            "--pkcs11-module",
            help="PKCS#11 module (default: SoftHSM2's); written to keys.pkcs11_module.",
            show_default=False,
        ),
    ] = None,
    pkcs11_pin_file: Annotated[
        str | None,
        typer.Option(
            "--pkcs11-pin-file",
            help="File (mode 0600) with the token's user PIN; else VOUCH_PKCS11_PIN.",
            show_default=False,
        ),
    ] = None,
    root_transcript: Annotated[
        Path | None,
        typer.Option(
            "--root-transcript",
            help="Start the home under a root made by `vouch ceremony create-root`: its "
            "transcript (signature in TRANSCRIPT.sig) is verified and recorded; no root key and "
            "no intermediate are made (next: vouch ca new-intermediate issuing --csr-out).",
            show_default=False,
        ),
    ] = None,
    trust_root: Annotated[
        str | None,
        typer.Option(
            "--trust-root",
            help="With --root-transcript: the root certificate's SHA-256, as read out at the "
            "ceremony.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Create a root CA, an issuing intermediate, vouch.toml and a database."""
    state: CliState = ctx.obj
    if passphrase_file is not None:
        state.passphrase_file = passphrase_file
    if root_transcript is not None or trust_root is not None:
        with errors_to_exit():
            _init_under_ceremony_root(
                state,
                transcript=root_transcript,
                trust_root=trust_root,
                organization=name,
                country=country,
                public_url=public_url,
                pkcs11_module=pkcs11_module,
                pkcs11_pin_file=pkcs11_pin_file,
                refused={
                    "--offline-root": offline_root is not None,
                    "--force": force,
                    "--permit-dns": bool(permit_dns),
                    "--key-backend": key_backend != "file",
                },
            )
        return
    with (
        errors_to_exit(),
        _undone_on_failure(
            state.home,
            offline_root=offline_root,
            key_backend=key_backend,
            pkcs11_module=pkcs11_module,
            pkcs11_pin_file=pkcs11_pin_file,
        ),
    ):
        from vouch.durations import parse_duration
        from vouch.wiring import init_home
        from vouch.x509.build import NameConstraintsSpec
        from vouch.x509.keytypes import parse_key_type
        from vouch.x509.names import normalize_dns

        constraints = None
        if permit_dns:
            constraints = NameConstraintsSpec(
                permitted_dns=tuple(normalize_dns(d) for d in permit_dns)
            )
        vouch = init_home(
            state.home,
            passphrase=passphrase_source(state, confirm_new=True),
            organization=name or "Example Corp",
            country=country or "US",
            key_type=parse_key_type(key_type),
            root_validity=parse_duration(root_validity),
            intermediate_validity=parse_duration(intermediate_validity),
            offline_root=offline_root,
            public_url=public_url,
            force=force,
            name_constraints=constraints,
            key_backend=key_backend,
            pkcs11_module=pkcs11_module,
            pkcs11_pin_file=pkcs11_pin_file,
        )
        roots = vouch.store.list_authorities()
        vouch.close()
    print(f"Created a vouch home at {state.home}")
    for record in roots:
        print(
            f"  {record.role:<12} {record.name:<10} serial {record.serial}  "
            f"until {record.not_after:%Y-%m-%d}  key {record.key_ref}"
        )
    if offline_root is not None:
        print(f"The root key is in {offline_root}; no root key is in the home. Keep it offline.")
    print(f"Trust anchor: {state.home / 'root.pem'}")
    print("Next: vouch cert new www.example.com")


@contextmanager
def _undone_on_failure(
    home: Path,
    *,
    offline_root: Path | None,
    key_backend: str,
    pkcs11_module: str | None,
    pkcs11_pin_file: str | None,
) -> Iterator[None]:
    """If the block fails (an error, a refusal, Ctrl-C), remove what it made: the home directory
    and offline root files that were not there before, and the key objects that appeared in the
    token under the labels init makes. Objects present before the block are never touched."""
    from vouch.errors import VouchError
    from vouch.keys.base import new_key_ref
    from vouch.keys.pkcs11 import Pkcs11KeyBackend, Pkcs11Ref
    from vouch.wiring import ROOT_CERT_FILE, ROOT_KEY_FILE, pkcs11_pin_source

    labels: dict[str, set[str]] = {}  # token -> labels init will make in it
    with suppress(VouchError):  # a bad --key-backend is init's to report
        for ca in ("issuing",) if offline_root is not None else ("root", "issuing"):
            ref = new_key_ref(key_backend, ca)
            if ref.scheme == "pkcs11" and (target := Pkcs11Ref.parse(ref)).label is not None:
                labels.setdefault(target.token, set()).add(target.label)

    def token_backend() -> Pkcs11KeyBackend:
        return Pkcs11KeyBackend(pkcs11_module, pkcs11_pin_source(home, pkcs11_pin_file))

    before: dict[str, frozenset[KeyObject]] = {}
    if labels:
        backend = token_backend()
        try:
            for token, wanted in labels.items():
                before[token] = backend.key_objects(token, wanted)
        except VouchError:
            # Token absent or PIN wrong: init refuses the same way before it makes any key.
            before = {}
        finally:
            backend.close()
    home_existed = home.exists()
    home_entries = set(home.iterdir()) if home.is_dir() else set()
    offline_new = [
        path
        for path in (
            []
            if offline_root is None
            else [offline_root / ROOT_KEY_FILE, offline_root / ROOT_CERT_FILE, offline_root]
        )
        if not path.exists()
    ]
    try:
        yield
    except BaseException:
        if before:
            backend = token_backend()
            try:
                for token, snapshot in before.items():
                    removed = backend.remove_new_objects(token, labels[token], snapshot)
                    for found in removed:
                        print(
                            f"removed the new {found} from PKCS#11 token {token!r}",
                            file=sys.stderr,
                        )
            except VouchError as exc:
                print(
                    f"could not remove the keys made in the token: {exc.message}",
                    file=sys.stderr,
                )
            finally:
                backend.close()
        for path in offline_new:  # files first, then the directory if init made it
            with suppress(OSError):  # a directory holding anything else stays
                if path.is_dir():
                    path.rmdir()
                else:
                    path.unlink()
        # init_home takes its own files back; what it could not (after an interrupt) goes too.
        if not home_existed:
            shutil.rmtree(home, ignore_errors=True)
        elif home.is_dir():
            for entry in set(home.iterdir()) - home_entries:
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
        raise


def _init_under_ceremony_root(
    state: CliState,
    *,
    transcript: Path | None,
    trust_root: str | None,
    organization: str | None,
    country: str | None,
    public_url: str,
    pkcs11_module: str | None,
    pkcs11_pin_file: str | None,
    refused: dict[str, bool],
) -> None:
    """A new home whose only CA is the root of a ``create-root`` transcript, verified against
    the fingerprint read out at the ceremony and recorded as ``vouch ceremony import`` does; the
    root key stays with the ceremony. Nothing is left behind if any step fails."""
    import hashlib

    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    from vouch.config import CONFIG_NAME, render_initial_config
    from vouch.errors import BadInput, Conflict
    from vouch.fsutil import atomic_write, read_limited
    from vouch.services.ceremony_import import MAX_TRANSCRIPT, root_certificate_of
    from vouch.wiring import DEFAULT_LINT_ALLOW, ROOT_CERT_FILE, Vouch

    if transcript is None or trust_root is None:
        raise BadInput(
            "--root-transcript and --trust-root go together",
            hint="vouch init --root-transcript transcripts/0001-create-root.json "
            "--trust-root SHA256",
        )
    given = [option for option, used in refused.items() if used]
    if given:
        raise BadInput(
            f"{', '.join(given)} does not apply with --root-transcript",
            hint="the root is the ceremony's; make intermediates with vouch ca new-intermediate",
        )
    home = state.home
    if (home / CONFIG_NAME).exists():
        raise Conflict(f"{home} already holds a vouch home", hint="use another --home")
    data = read_limited(transcript, MAX_TRANSCRIPT, "transcript")
    signature = read_limited(
        transcript.with_name(transcript.name + ".sig"), 16 * 1024, "transcript signature"
    )
    subject = root_certificate_of(data).subject

    def attribute(oid: x509.ObjectIdentifier) -> str | None:
        found = subject.get_attributes_for_oid(oid)
        return str(found[0].value) if found else None

    organization = organization or attribute(x509.NameOID.ORGANIZATION_NAME) or "Example Corp"
    country = country or attribute(x509.NameOID.COUNTRY_NAME) or "US"
    with _undone_on_failure(
        home, offline_root=None, key_backend="file", pkcs11_module=None, pkcs11_pin_file=None
    ):
        home.mkdir(parents=True, exist_ok=True, mode=0o700)
        (home / "keys").mkdir(exist_ok=True, mode=0o700)
        text = render_initial_config(
            organization=organization,
            country=country,
            public_url=public_url,
            passphrase_file=None,
            lint_allow=DEFAULT_LINT_ALLOW,
            pkcs11_module=pkcs11_module,
            pkcs11_pin_file=pkcs11_pin_file,
        )
        atomic_write(home / CONFIG_NAME, text.encode("utf-8"), mode=0o600)
        vouch = Vouch(home, passphrase=passphrase_source(state, confirm_new=True), new_store=True)
        try:
            result = vouch.ceremony_importer().import_transcript(
                data, signature, trust_root_sha256=trust_root
            )
            root = vouch.store.get_authority(result.signer)
            certificate = x509.load_der_x509_certificate(root.certificate)
            atomic_write(
                home / ROOT_CERT_FILE, certificate.public_bytes(serialization.Encoding.PEM)
            )
            vouch.audit.sign_head()  # the audit key, and a first tree head over the import
        finally:
            vouch.close()
    print(f"Created a vouch home at {home} under root {root.name} (serial {root.serial}),")
    fingerprint = hashlib.sha256(root.certificate).hexdigest()
    print(f"  verified against SHA-256 {fingerprint} and recorded; its key is not in this home.")
    print(f"Trust anchor: {home / ROOT_CERT_FILE}")
    print(
        "Next: vouch ca new-intermediate issuing --csr-out issuing.csr "
        "(then ceremony sign-csr on the offline side, and vouch ceremony import here)"
    )

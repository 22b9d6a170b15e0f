"""``vouch bootstrap``: trust a remote vouch, as ``step ca bootstrap`` does.

The root certificate is fetched over a connection that cannot be trusted yet; what makes it
trustworthy is its SHA-256 fingerprint, which the operator got from the CA by another way
(``vouch ca show root`` there). Then the server's TLS certificate must chain to that root.
Only when both hold are the root and the URL saved in the client configuration.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from vouch.cli.context import errors_to_exit
from vouch.cli.remote import (
    TIMEOUT,
    check_url,
    client_config_path,
    describe_transport_error,
    tls_context,
)
from vouch.errors import AuthenticationFailed, BadInput, Conflict, VouchError

if TYPE_CHECKING:  # imported when used: every command starts without loading them
    from cryptography import x509

_HEX = re.compile(r"^[0-9A-F]{64}$")


def bootstrap_command(
    ca_url: Annotated[
        str, typer.Option("--ca-url", help="The CA's URL, e.g. https://ca.example.com:8443.")
    ],
    fingerprint: Annotated[
        str,
        typer.Option(
            "--fingerprint", help="SHA-256 of the root certificate (vouch ca show root, on the CA)."
        ),
    ],
    force: Annotated[
        bool, typer.Option("--force", help="Replace an existing client configuration.")
    ] = False,
) -> None:
    """Trust a remote vouch: fetch its root, check the fingerprint, pin it for --server."""
    from cryptography.hazmat.primitives import serialization

    from vouch.config import toml_string
    from vouch.fsutil import atomic_write

    with errors_to_exit():
        url = check_url(ca_url)
        wanted = _fingerprint(fingerprint)
        path = client_config_path()
        if path.exists() and not force:
            raise Conflict(
                f"{path} already trusts a CA", hint="add --force to replace it with this one"
            )
        root = _fetch_root(url, wanted)
        root_path = path.with_name(f"{path.stem}-root.pem")
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        atomic_write(root_path, root.public_bytes(serialization.Encoding.PEM))
        try:
            _check_tls(url, root_path)
        except VouchError:
            root_path.unlink(missing_ok=True)
            raise
        config = (
            "# Written by vouch bootstrap: the CA this client trusts, its root pinned by\n"
            "# fingerprint. `vouch --server URL` and, without a local home, `vouch cert|ca`\n"
            "# act on it (docs/remote.md).\n"
            f"ca_url = {toml_string(url)}\n"
            f"fingerprint = {toml_string(wanted)}\n"
            f"root = {toml_string(root_path.name)}\n"
        )
        atomic_write(path, config.encode("utf-8"))
    print(f"Trusting {url}: root {root.subject.rfc4514_string()} (SHA-256 {wanted})")
    print(f"  root:   {root_path}")
    print(f"  config: {path}")


def _fingerprint(text: str) -> str:
    value = re.sub(r"[\s:]", "", text).upper().removeprefix("SHA256")
    if not _HEX.match(value):
        raise BadInput(
            "a fingerprint is the SHA-256 of the root certificate: 64 hex digits",
            hint="vouch ca show root, on the CA, prints it",
        )
    return value


def _fetch_root(url: str, wanted: str) -> x509.Certificate:
    import httpx
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    # Not verified on purpose: nothing is trusted yet; the fingerprint is the check.
    try:
        with httpx.Client(verify=False, timeout=TIMEOUT, follow_redirects=False) as client:  # noqa: S501
            response = client.get(f"{url}/api/v1/cas")
    except httpx.HTTPError as exc:
        raise describe_transport_error(exc, url) from exc
    try:
        listed = response.json() if response.is_success else None
    except ValueError:
        listed = None
    if not isinstance(listed, list):
        raise BadInput(
            f"{url} does not answer as a vouch API (GET /api/v1/cas: HTTP {response.status_code})",
            hint="check the URL; the API must be enabled on that server",
        )
    seen: dict[str, x509.Certificate] = {}
    for item in listed:
        for pem in _chain_of(item):
            try:
                certificate = x509.load_pem_x509_certificate(pem.encode("ascii"))
            except (ValueError, UnicodeEncodeError):
                continue
            der = certificate.public_bytes(serialization.Encoding.DER)
            seen[hashlib.sha256(der).hexdigest().upper()] = certificate
    found = seen.get(wanted)
    if found is None:
        # The fingerprint it does offer is not shown: it may be an interceptor's, and the
        # point of pinning is that the right one comes from the CA's operator, not from here.
        raise AuthenticationFailed(
            f"{url} offers no certificate with SHA-256 {wanted}; nothing was saved",
            hint="check the fingerprint with the CA's operator: a mismatch can also mean "
            "that someone is between you and the CA",
        )
    if not _self_signed(found):
        raise BadInput(
            f"the certificate with SHA-256 {wanted} is not a root (not self-signed)",
            hint="pin the root's fingerprint (vouch ca show root), not an intermediate's",
        )
    return found


def _chain_of(item: Any) -> list[str]:
    if not isinstance(item, dict):
        return []
    chain = item.get("chain")
    return [p for p in chain if isinstance(p, str)] if isinstance(chain, list) else []


def _self_signed(certificate: x509.Certificate) -> bool:
    from cryptography.exceptions import InvalidSignature

    try:
        certificate.verify_directly_issued_by(certificate)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _check_tls(url: str, root_path: Path) -> None:
    """The server's TLS certificate must chain to the root just fetched."""
    import httpx

    if not url.startswith("https:"):
        return
    try:
        with httpx.Client(verify=tls_context(root_path), timeout=TIMEOUT) as client:
            client.get(f"{url}/api/v1/cas")
    except httpx.HTTPError as exc:
        raise describe_transport_error(exc, url) from exc

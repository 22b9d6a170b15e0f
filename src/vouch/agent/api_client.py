"""The agent's other way to a certificate: vouch's REST API (docs/api.md).

The first certificate (and any that can no longer renew by possession: expired, revoked, or
without the clientAuth usage TLS needs to present it) is redeemed with a one-time token; every
later one is a renewal by possession: the agent presents its current certificate over mTLS and
sends a CSR for a fresh key.
"""

from __future__ import annotations

import ipaddress
import shlex
import ssl
import subprocess
from pathlib import Path
from typing import Any

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed448, ed25519
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID

from vouch.agent.config import ApiSettings, CertificateSpec
from vouch.errors import AuthenticationFailed, BadInput, Unavailable

TIMEOUT = 30.0
MAX_TOKEN = 16 * 1024


class ApiCa:
    def __init__(self, settings: ApiSettings) -> None:
        self.settings = settings

    def obtain(
        self,
        spec: CertificateSpec,
        key: CertificateIssuerPrivateKeyTypes,
        current: x509.Certificate | None,
        current_files: tuple[Path, Path] | None,
    ) -> str:
        """A PEM chain for ``key`` and the spec's names: by possession of ``current`` when it
        can still renew, else with a one-time token."""
        csr = _csr(spec.names, key)
        if current is not None and current_files is not None and _can_present(current):
            try:
                return self._renew(csr, current_files)
            except AuthenticationFailed:
                if spec.token_file is None and spec.token_command is None:
                    raise
        token = _token(spec)
        body: dict[str, Any] = {"csr": csr, "token": token}
        if self.settings.profile:
            body["profile"] = self.settings.profile
        if self.settings.lifetime:
            body["lifetime"] = self.settings.lifetime
        chain = self._post("/certificates", body, client_cert=None)
        if spec.token_file is not None:
            spec.token_file.unlink(missing_ok=True)  # spent: never offer it again
        return chain

    def _renew(self, csr: str, files: tuple[Path, Path]) -> str:
        return self._post("/renew", {"csr": csr}, client_cert=files)

    def _post(
        self, path: str, body: dict[str, Any], *, client_cert: tuple[Path, Path] | None
    ) -> str:
        context = ssl.create_default_context(
            cafile=str(self.settings.ca_bundle) if self.settings.ca_bundle else None
        )
        if client_cert is not None:
            chain, key = client_cert
            try:
                context.load_cert_chain(str(chain), str(key))
            except (OSError, ssl.SSLError) as exc:
                raise BadInput(f"cannot use the current certificate for mTLS: {exc}") from exc
        url = self.settings.url + path
        try:
            with httpx.Client(verify=context, timeout=TIMEOUT) as client:
                response = client.post(url, json=body)
        except httpx.HTTPError as exc:
            raise Unavailable(f"cannot reach the vouch API at {url}: {exc}") from exc
        if response.status_code == 200 or response.status_code == 201:
            try:
                chain = response.json()["chain"]
            except (ValueError, KeyError, TypeError) as exc:
                raise BadInput(f"the API at {url} sent no certificate chain") from exc
            if not isinstance(chain, str):
                raise BadInput(f"the API at {url} sent no certificate chain")
            return chain
        try:
            problem = response.json()
            message = f"{problem.get('error')}: {problem.get('message')}"
        except (ValueError, AttributeError):
            message = response.text[:200]
        if response.status_code in (401, 403):
            raise AuthenticationFailed(f"the vouch API refused {path} ({message})")
        if response.status_code in (429, 502, 503, 504):
            raise Unavailable(f"the vouch API is busy or down ({response.status_code}: {message})")
        raise BadInput(f"the vouch API refused {path} ({response.status_code}: {message})")


def _csr(names: list[str], key: CertificateIssuerPrivateKeyTypes) -> str:
    general: list[x509.GeneralName] = []
    for name in names:
        try:
            general.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            general.append(x509.DNSName(name))
    algorithm = None if _is_eddsa(key) else hashes.SHA256()
    request = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(x509.SubjectAlternativeName(general), critical=False)
        .sign(key, algorithm)
    )
    return request.public_bytes(serialization.Encoding.PEM).decode("ascii")


def _is_eddsa(key: object) -> bool:
    return isinstance(key, (ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey))


def _can_present(certificate: x509.Certificate) -> bool:
    """TLS clients present only certificates whose EKU allows client authentication."""
    try:
        usages = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return True
    return ExtendedKeyUsageOID.CLIENT_AUTH in usages


def _token(spec: CertificateSpec) -> str:
    if spec.token_file is not None:
        try:
            with spec.token_file.open("rb") as handle:
                raw = handle.read(MAX_TOKEN + 1)
        except FileNotFoundError as exc:
            raise BadInput(
                f"{spec.name}: no one-time token at {spec.token_file}",
                hint=f"mint one: vouch token {' '.join(spec.names)} > {spec.token_file}",
            ) from exc
        except OSError as exc:
            raise BadInput(f"{spec.name}: cannot read {spec.token_file}: {exc.strerror}") from exc
        token = raw.decode("ascii", "replace").strip()
    elif spec.token_command is not None:
        argv = (
            shlex.split(spec.token_command)
            if isinstance(spec.token_command, str)
            else list(spec.token_command)
        )
        try:
            result = subprocess.run(
                [*argv, *spec.names], capture_output=True, text=True, timeout=60, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise Unavailable(f"{spec.name}: the token command failed: {exc}") from exc
        if result.returncode != 0:
            raise Unavailable(
                f"{spec.name}: the token command exited with {result.returncode}: "
                f"{result.stderr.strip()[:200]}"
            )
        token = result.stdout.strip()
    else:
        raise BadInput(
            f"{spec.name}: no certificate to renew by possession and no token_file or "
            "token_command for a first one"
        )
    if not token or len(token) > MAX_TOKEN:
        raise BadInput(f"{spec.name}: the one-time token is empty or too long")
    return token

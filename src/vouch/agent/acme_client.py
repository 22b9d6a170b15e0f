"""The agent's side of ACME (RFC 8555), through certbot's ``acme`` library: the account, orders,
http-01 challenges, finalization, and renewal information (RFC 9773).

The protocol is the library's; this module chooses the account key, when to poll, and turns the
library's and the network's exceptions into vouch errors that say which CA and what went wrong.
"""

from __future__ import annotations

import base64
import datetime as dt
import email.utils
import ipaddress
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from josepy.jwa import ES256, ES384, ES512, RS256, JWASignature
from josepy.jwk import JWK, JWKEC, JWKRSA

from acme import client, errors, messages
from vouch.agent.challenges import Http01Responder
from vouch.agent.config import AcmeSettings
from vouch.errors import AuthenticationFailed, BadInput, ConfigError, Unavailable, VouchError
from vouch.fsutil import atomic_write, read_limited

log = logging.getLogger("vouch.agent")

USER_AGENT = "vouch-agent/0.1"
# How long one order may take, challenges and finalization included.
ORDER_TIMEOUT = dt.timedelta(seconds=90)
NETWORK_TIMEOUT = 30


def load_account_key(path: Path) -> JWK:
    """The account key; a new EC P-256 key (0600) the first time."""
    if not path.exists():
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        if not path.parent.is_dir():
            raise BadInput(f"cannot create the account key {path}: its directory does not exist")
        atomic_write(path, pem, mode=0o600, overwrite=False)
        log.info("created a new ACME account key at %s", path)
    loaded = serialization.load_pem_private_key(
        read_limited(path, 64 * 1024, "account key"), password=None
    )
    if isinstance(loaded, ec.EllipticCurvePrivateKey):
        return JWKEC(key=loaded)
    if isinstance(loaded, rsa.RSAPrivateKey):
        return JWKRSA(key=loaded)
    raise BadInput(f"the account key {path} is neither an EC nor an RSA key")


def _alg(key: JWK) -> JWASignature:
    if isinstance(key, JWKRSA):
        return RS256
    size = key.key.curve.key_size
    return {256: ES256, 384: ES384, 521: ES512}[size]


@contextmanager
def acme_errors(what: str) -> Iterator[None]:
    """The library's and the network's exceptions, as vouch errors naming what failed."""
    try:
        yield
    except VouchError:
        raise
    except messages.Error as exc:
        kind = exc.code or "error"
        detail = exc.detail or exc.description or ""
        if kind in ("unauthorized", "accountDoesNotExist", "externalAccountRequired"):
            raise AuthenticationFailed(f"{what}: the CA refused ({kind}): {detail}") from exc
        raise Unavailable(f"{what}: the CA answered {kind}: {detail}") from exc
    except errors.ValidationError as exc:
        problems = "; ".join(
            f"{a.body.identifier.value}: {c.error.detail if c.error else 'invalid'}"
            for a in exc.failed_authzrs
            for c in a.body.challenges
            if c.error is not None
        )
        raise Unavailable(f"{what}: a challenge failed: {problems or 'no detail'}") from exc
    except errors.TimeoutError as exc:
        raise Unavailable(f"{what}: the CA did not finish in time") from exc
    except requests.exceptions.SSLError as exc:
        raise Unavailable(
            f"{what}: the CA's HTTPS certificate is not trusted",
            hint="set acme.ca_bundle to the PEM of the CA that issued it",
        ) from exc
    except requests.exceptions.RequestException as exc:
        raise Unavailable(f"{what}: cannot reach the CA ({type(exc).__name__})") from exc
    except errors.Error as exc:
        raise Unavailable(f"{what}: {type(exc).__name__}: {exc}") from exc


def make_csr(key: CertificateIssuerPrivateKeyTypes, names: list[str]) -> bytes:
    """A CSR for ``names`` (DNS names and IP addresses); the subject is left to the CA."""
    alternatives: list[x509.GeneralName] = []
    for name in names:
        try:
            alternatives.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alternatives.append(x509.DNSName(name))
    # An empty subject: the CA takes the names from the SAN (a CN would be read as a DNS name).
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    builder = builder.add_extension(x509.SubjectAlternativeName(alternatives), critical=False)
    digest = None if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) else (
        hashes.SHA384() if isinstance(key, ec.EllipticCurvePrivateKey)
        and key.curve.key_size >= 384 else hashes.SHA256()
    )  # fmt: skip
    return builder.sign(key, digest).public_bytes(serialization.Encoding.PEM)


@dataclass(frozen=True)
class RenewalWindow:
    start: dt.datetime
    end: dt.datetime
    retry_after: dt.timedelta


def cert_id(leaf: x509.Certificate) -> str:
    """RFC 9773 4.1: base64url(AKI keyIdentifier) "." base64url(serial's DER content octets)."""
    try:
        aki = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    except x509.ExtensionNotFound as exc:
        raise BadInput("the certificate has no authority key identifier") from exc
    if aki.key_identifier is None:
        raise BadInput("the certificate's authority key identifier has no keyIdentifier")
    serial = leaf.serial_number.to_bytes(leaf.serial_number.bit_length() // 8 + 1, "big")
    return f"{_b64url(aki.key_identifier)}.{_b64url(serial)}"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _retry_after(value: str | None) -> dt.timedelta:
    """Retry-After in seconds or as an HTTP date; six hours when absent (RFC 9773 4.3.3)."""
    default = dt.timedelta(hours=6)
    if not value:
        return default
    if value.strip().isdigit():
        return dt.timedelta(seconds=int(value))
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return default
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return max(when - dt.datetime.now(dt.UTC), dt.timedelta(0))


class AcmeCa:
    """One ACME CA and our account with it. Each thread gets its own connection (the library's
    nonce pool and HTTP session are not shared across threads)."""

    def __init__(self, settings: AcmeSettings) -> None:
        self.settings = settings
        self._key = load_account_key(settings.account_key)
        self._alg = _alg(self._key)
        self._local = threading.local()
        self._account: messages.RegistrationResource | None = None
        self._account_lock = threading.Lock()
        self.directory: messages.Directory | None = None

    def _network(self) -> client.ClientNetwork:
        net = client.ClientNetwork(
            self._key, alg=self._alg, user_agent=USER_AGENT, timeout=NETWORK_TIMEOUT
        )
        if self.settings.ca_bundle is not None:
            if not self.settings.ca_bundle.is_file():
                raise ConfigError(f"acme.ca_bundle {self.settings.ca_bundle} is not a file")
            # requests takes a CA bundle path wherever it takes verify=True.
            net.verify_ssl = str(self.settings.ca_bundle)  # type: ignore[assignment]
        return net

    def _client(self) -> client.ClientV2:
        made: client.ClientV2 | None = getattr(self._local, "client", None)
        if made is None:
            net = self._network()
            with acme_errors(f"fetching the ACME directory {self.settings.directory}"):
                directory = self.directory or client.ClientV2.get_directory(
                    self.settings.directory, net
                )
            self.directory = directory
            made = client.ClientV2(directory, net)
            made.net.account = self._ensure_account(made)
            self._local.client = made
        return made

    def _eab(self, directory: messages.Directory) -> dict[str, object] | None:
        settings = self.settings
        if settings.eab_kid is None:
            return None
        secret = settings.eab_hmac_key
        if settings.eab_hmac_key_file is not None:
            secret = read_limited(settings.eab_hmac_key_file, 4096, "EAB key file").decode().strip()
        assert secret is not None
        try:
            return messages.ExternalAccountBinding.from_data(
                self._key.public_key(), settings.eab_kid, secret, directory
            )
        except (ValueError, TypeError) as exc:
            raise ConfigError("the EAB key is not base64url") from exc

    def _ensure_account(self, acme: client.ClientV2) -> messages.RegistrationResource:
        with self._account_lock:
            if self._account is not None:
                return self._account
            with acme_errors("looking up the ACME account"):
                try:
                    acme.new_account(messages.NewRegistration(only_return_existing=True))
                    raise Unavailable("the CA did not say where the account is")
                except errors.ConflictError as found:
                    account = messages.RegistrationResource(
                        uri=found.location, body=messages.Registration()
                    )
                    log.info("using ACME account %s", found.location)
                except messages.Error as missing:
                    if missing.code != "accountDoesNotExist":
                        raise
                    account = self._register(acme)
            self._account = account
            return account

    def _register(self, acme: client.ClientV2) -> messages.RegistrationResource:
        if acme.external_account_required() and self.settings.eab_kid is None:
            raise AuthenticationFailed(
                "this CA requires an external account binding",
                hint="set acme.eab_kid and acme.eab_hmac_key_file (ask the CA's operator)",
            )
        registration = messages.NewRegistration(
            contact=tuple(self.settings.contact),
            terms_of_service_agreed=True,
            external_account_binding=self._eab(acme.directory),
        )
        with acme_errors("registering an ACME account"):
            account = acme.new_account(registration)
        log.info("registered ACME account %s", account.uri)
        return account

    def profiles(self) -> dict[str, str]:
        acme = self._client()
        meta = getattr(acme.directory, "meta", None)
        return dict(getattr(meta, "profiles", None) or {})

    def has_renewal_info(self) -> bool:
        acme = self._client()
        try:
            acme.directory["renewalInfo"]
        except KeyError:
            return False
        return True

    def renewal_info(self, leaf: x509.Certificate) -> RenewalWindow | None:
        """RFC 9773: the CA's suggested renewal window for ``leaf``, and when to ask again; None
        when the CA publishes no renewal information."""
        acme = self._client()
        try:
            base = str(acme.directory["renewalInfo"]).rstrip("/")
        except KeyError:
            return None
        with acme_errors("asking for renewal information"):
            response = acme.net.get(f"{base}/{cert_id(leaf)}", content_type="application/json")
            info = messages.RenewalInfo.from_json(response.json())
        window = info.suggested_window
        if window.start is None or window.end is None or window.end < window.start:
            raise Unavailable("asking for renewal information: the CA sent no valid window")
        return RenewalWindow(
            window.start.astimezone(dt.UTC),
            window.end.astimezone(dt.UTC),
            _retry_after(response.headers.get("Retry-After")),
        )

    def obtain(
        self,
        names: list[str],
        key: CertificateIssuerPrivateKeyTypes,
        responder: Http01Responder,
        profile: str | None,
    ) -> str:
        """Order, prove control of every name over http-01, finalize; the full chain PEM."""
        acme = self._client()
        deadline = time.monotonic() + ORDER_TIMEOUT.total_seconds()
        label = ", ".join(names)
        with acme_errors(f"ordering a certificate for {label}"):
            order = acme.new_order(make_csr(key, names), profile=profile)
            tokens: list[str] = []
            try:
                for authz in order.authorizations:
                    if authz.body.status == messages.STATUS_VALID:
                        continue  # the CA reuses a recent validation
                    challenge = next(
                        (c for c in authz.body.challenges if c.chall.typ == "http-01"), None
                    )
                    if challenge is None:
                        raise Unavailable(
                            f"the CA offers no http-01 challenge for {authz.body.identifier.value}"
                        )
                    response, validation = challenge.response_and_validation(self._key)
                    responder.add(challenge.chall.encode("token"), validation)
                    tokens.append(challenge.chall.encode("token"))
                    acme.answer_challenge(challenge, response)
                for authz in order.authorizations:
                    self._wait_valid(acme, authz, deadline)
            finally:
                for token in tokens:
                    responder.remove(token)
            return self._finalize(acme, order, deadline)

    @staticmethod
    def _wait_valid(
        acme: client.ClientV2, authz: messages.AuthorizationResource, deadline: float
    ) -> None:
        pause = 0.1
        while authz.body.status in (messages.STATUS_PENDING, messages.STATUS_PROCESSING):
            if time.monotonic() > deadline:
                raise errors.TimeoutError()
            time.sleep(pause)
            pause = min(pause * 2, 2.0)
            authz, _ = acme.poll(authz)
        if authz.body.status != messages.STATUS_VALID:
            failed = [c for c in authz.body.challenges if c.error is not None]
            if failed:
                raise errors.ValidationError([authz])
            raise Unavailable(
                f"the authorization for {authz.body.identifier.value} is {authz.body.status}"
            )

    @staticmethod
    def _finalize(acme: client.ClientV2, order: messages.OrderResource, deadline: float) -> str:
        order = acme.begin_finalization(order)
        if order.body.status == messages.STATUS_VALID and order.body.certificate:
            # Most CAs (vouch included) issue during finalize: fetch now rather than poll.
            response = acme.net.post(
                order.body.certificate, None, new_nonce_url=acme.directory["newNonce"]
            )
            return str(response.text)
        remaining = max(1.0, deadline - time.monotonic())
        done = acme.poll_finalization(order, dt.datetime.now() + dt.timedelta(seconds=remaining))
        return str(done.fullchain_pem)

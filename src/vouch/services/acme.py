"""The ACME registration authority (RFC 8555): accounts, orders, authorizations, finalization.

Identity comes first: an order's names are issued only when every authorization is valid (a
challenge really validated), and the CSR may name exactly the order's identifiers. Issuance goes
through the same ``Authority`` as everything else (policy, lint, records, audit log).
"""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from vouch.acme.jws import AccountKey, Jws, jwk_of, key_from_jwk, thumbprint
from vouch.acme.problems import AcmeProblem, malformed, unauthorized
from vouch.clock import Clock
from vouch.errors import BadInput, Conflict, LintFailure, NotFound, PolicyViolation, VouchError
from vouch.services.authority import Authority, IssuanceRequest
from vouch.services.revocation import LEAF_REASONS, Revoker
from vouch.store.acme import Account, AcmeStore, Authz, Challenge, Order
from vouch.store.repository import CertificateQuery, Store
from vouch.x509.csr import load_csr
from vouch.x509.names import SubjectName, normalize_dns, normalize_ip
from vouch.x509.policy import NamePolicy

NONCE_LIFETIME = dt.timedelta(hours=1)
ORDER_LIFETIME = dt.timedelta(days=7)
MAX_IDENTIFIERS = 100
CHALLENGE_TYPES = ["http-01", "dns-01", "tls-alpn-01"]
# RFC 5280 5.3.1 reason codes by number, as revokeCert carries them.
REASON_CODES = {0: "unspecified", 1: "keyCompromise", 3: "affiliationChanged", 4: "superseded",
                5: "cessationOfOperation", 9: "privilegeWithdrawn"}  # fmt: skip


@dataclass(frozen=True)
class AcmeSettings:
    terms_of_service: str | None = None
    website: str | None = None
    caa_identities: tuple[str, ...] = ()
    profile: str = "tls-server"


def key_authorization(token: str, account: Account) -> str:
    return f"{token}.{account.thumbprint}"


class AcmeService:
    def __init__(
        self,
        *,
        store: AcmeStore,
        certificates: Store,
        authority: Callable[[], Authority],
        revoker: Callable[[], Revoker],
        name_policy: NamePolicy | None,
        clock: Clock,
        settings: AcmeSettings,
    ) -> None:
        self._store = store
        self._certificates = certificates
        self._authority = authority
        self._revoker = revoker
        self._policy = name_policy
        self._clock = clock
        self.settings = settings

    @property
    def store(self) -> AcmeStore:
        return self._store

    # -- nonces ----------------------------------------------------------------------------------

    def new_nonce(self) -> str:
        nonce = secrets.token_urlsafe(24)
        self._store.add_nonce(nonce, self._clock.now() + NONCE_LIFETIME)
        return nonce

    def use_nonce(self, nonce: str) -> None:
        if not self._store.use_nonce(nonce, self._clock.now()):
            raise AcmeProblem("badNonce", "the nonce is unknown, used, or expired")

    # -- accounts --------------------------------------------------------------------------------

    def account_for_kid(self, kid: str, account_id: int) -> tuple[Account, AccountKey]:
        try:
            account = self._store.account(account_id)
        except NotFound as exc:
            raise AcmeProblem("accountDoesNotExist", f"no account {kid}") from exc
        if account.status != "valid":
            raise unauthorized(f"account {kid} is {account.status}")
        return account, key_from_jwk(account.jwk)

    def new_account(self, jws: Jws) -> tuple[Account, bool]:
        assert jws.jwk is not None
        key = key_from_jwk(jws.jwk)
        payload = jws.json_payload()
        existing = self._store.account_by_thumbprint(thumbprint(key))
        if existing is not None:
            if existing.status != "valid":
                raise unauthorized(f"the account with this key is {existing.status}")
            return existing, False
        if payload.get("onlyReturnExisting"):
            raise AcmeProblem("accountDoesNotExist", "no account exists with this key")
        if self.settings.terms_of_service and payload.get("termsOfServiceAgreed") is not True:
            raise AcmeProblem(
                "userActionRequired", "agree to the terms of service first", status=403
            )
        contact = _contacts(payload.get("contact", []))
        return self._store.add_account(
            thumbprint(key), jwk_of(key), contact, self._clock.now()
        ), True

    def update_account(self, account: Account, payload: dict[str, Any]) -> Account:
        if payload.get("status") == "deactivated":
            return self._store.update_account(account.id, status="deactivated")
        if "status" in payload and payload["status"] != "valid":
            raise malformed("an account can only be deactivated")
        if "contact" in payload:
            return self._store.update_account(account.id, contact=_contacts(payload["contact"]))
        return account

    def change_key(self, account: Account, outer: Jws, inner: Jws) -> None:
        """RFC 8555 7.3.5: the inner JWS is signed by the new key and names the account."""
        from vouch.acme.jws import verify

        if inner.jwk is None or inner.kid is not None:
            raise malformed("the inner JWS of keyChange carries the new key as jwk")
        if inner.url != outer.url:
            raise malformed("the inner JWS url differs from the outer")
        new_key = key_from_jwk(inner.jwk)
        verify(inner, new_key)
        payload = inner.json_payload()
        if payload.get("account") != outer.kid:
            raise malformed("the keyChange payload names another account")
        old_key = key_from_jwk(payload.get("oldKey", {}))
        if thumbprint(old_key) != account.thumbprint:
            raise malformed("oldKey is not the account's key")
        try:
            self._store.change_key(
                account.id, thumbprint(new_key), jwk_of(new_key), self._clock.now()
            )
        except Conflict as exc:
            raise AcmeProblem("conflict", str(exc), status=409) from exc

    # -- orders ----------------------------------------------------------------------------------

    def new_order(self, account: Account, payload: dict[str, Any]) -> Order:
        raw = payload.get("identifiers")
        if not isinstance(raw, list) or not raw:
            raise malformed("an order needs a non-empty identifiers list")
        if len(raw) > MAX_IDENTIFIERS:
            raise AcmeProblem("rejectedIdentifier", f"at most {MAX_IDENTIFIERS} identifiers")
        if "notBefore" in payload or "notAfter" in payload:
            raise malformed("notBefore and notAfter are not supported; the profile sets validity")
        identifiers: list[dict[str, str]] = []
        names: list[SubjectName] = []
        for item in raw:
            identifier, name = self._identifier(item)
            if identifier not in identifiers:
                identifiers.append(identifier)
                names.append(name)
        if self._policy is not None:
            try:
                self._policy.check_names(
                    [SubjectName(n.kind, n.value.removeprefix("*.")) for n in names]
                )
            except PolicyViolation as exc:
                raise AcmeProblem("rejectedIdentifier", exc.message) from exc
        now = self._clock.now()
        tokens = [[secrets.token_urlsafe(32) for _ in CHALLENGE_TYPES] for _ in identifiers]
        replaces = payload.get("replaces")
        return self._store.add_order(
            account_id=account.id,
            identifiers=identifiers,
            expires=now + ORDER_LIFETIME,
            replaces=str(replaces) if replaces else None,
            at=now,
            challenge_types=CHALLENGE_TYPES,
            tokens=tokens,
        )

    @staticmethod
    def _identifier(item: Any) -> tuple[dict[str, str], SubjectName]:
        if not isinstance(item, dict) or not isinstance(item.get("value"), str):
            raise malformed("an identifier is an object with type and value")
        kind, value = item.get("type"), item["value"]
        try:
            if kind == "dns":
                wildcard = value.startswith("*.")
                normalized = normalize_dns(value)
                if not wildcard and "*" in normalized:
                    raise BadInput("a wildcard is the whole left-most label")
                return {"type": "dns", "value": normalized}, SubjectName("dns", normalized)
            if kind == "ip":
                normalized = normalize_ip(value)
                return {"type": "ip", "value": normalized}, SubjectName("ip", normalized)
        except BadInput as exc:
            raise AcmeProblem("rejectedIdentifier", exc.message) from exc
        raise AcmeProblem("unsupportedIdentifier", f"identifier type {kind!r} is not supported")

    def order_of(self, account: Account, order_id: int) -> Order:
        order = self._store.order(order_id)
        if order.account_id != account.id:
            raise unauthorized("this order belongs to another account")
        return self._expire(order)

    def _expire(self, order: Order) -> Order:
        if order.status in ("pending", "ready") and order.expires <= self._clock.now():
            self._store.set_order(order.id, status="invalid")
            return self._store.order(order.id)
        return order

    def authz_of(self, account: Account, authz_id: int) -> Authz:
        authz = self._store.authz(authz_id)
        if self._store.order(authz.order_id).account_id != account.id:
            raise unauthorized("this authorization belongs to another account")
        return authz

    def deactivate_authz(self, account: Account, authz_id: int) -> Authz:
        self.authz_of(account, authz_id)
        self._store.deactivate_authz(authz_id)
        return self._store.authz(authz_id)

    def start_challenge(self, account: Account, challenge_id: int) -> tuple[Challenge, Authz, bool]:
        """Mark a challenge processing; True when the caller should now validate it."""
        challenge = self._store.challenge(challenge_id)
        authz = self.authz_of(account, challenge.authz_id)
        if authz.status != "pending":
            return challenge, authz, False
        started = self._store.start_challenge(challenge_id)
        return self._store.challenge(challenge_id), authz, started

    def finish_challenge(self, challenge_id: int, error: AcmeProblem | None) -> None:
        self._store.finish_challenge(
            challenge_id,
            ok=error is None,
            at=self._clock.now(),
            error=None if error is None else error.document(),
        )

    def finalize(self, account: Account, order_id: int, payload: dict[str, Any]) -> Order:
        order = self.order_of(account, order_id)
        if order.status != "ready":
            raise AcmeProblem(
                "orderNotReady", f"the order is {order.status}, not ready", status=403
            )
        csr_b64 = payload.get("csr")
        if not isinstance(csr_b64, str):
            raise malformed("finalize needs a csr")
        from vouch.acme.jws import b64url_decode

        try:
            parsed = load_csr(b64url_decode(csr_b64))
        except (BadInput, PolicyViolation) as exc:
            raise AcmeProblem("badCSR", exc.message) from exc
        wanted = {(i["type"], i["value"]) for i in order.identifiers}
        asked = {(n.kind, n.value) for n in parsed.names}
        if asked != wanted:
            raise AcmeProblem(
                "badCSR",
                "the CSR must name exactly the order's identifiers "
                f"(order: {sorted(v for _, v in wanted)}, CSR: {sorted(v for _, v in asked)})",
            )
        if not self._store.claim_finalize(order.id):
            raise AcmeProblem("orderNotReady", "the order is already being finalized", status=403)
        try:
            issued = self._authority().issue(
                IssuanceRequest.from_csr(parsed, profile=self.settings.profile)
            )
        except (PolicyViolation, LintFailure) as exc:
            problem = AcmeProblem(
                "rejectedIdentifier" if isinstance(exc, PolicyViolation) else "badCSR", exc.message
            )
            self._store.set_order(order.id, status="invalid", error=problem.document())
            raise problem from exc
        except VouchError:
            self._store.set_order(order.id, status="ready")  # nothing was issued: try again later
            raise
        record = self._certificates.certificates(
            CertificateQuery(serial=issued.serial, authority=None)
        )[0]
        self._store.set_order(order.id, status="valid", certificate_id=record.id)
        return self._store.order(order.id)

    def certificate_chain(self, account: Account, certificate_id: int) -> bytes:
        order = self._store.order_for_certificate(certificate_id)
        if order is None or order.account_id != account.id:
            raise unauthorized("this certificate was not issued to this account")
        found = [
            r
            for r in self._certificates.certificates(CertificateQuery(state="issued"))
            if r.id == certificate_id
        ]
        if not found or found[0].der is None:
            raise AcmeProblem("malformed", "no such certificate", status=404)
        return found[0].der

    # -- revocation ------------------------------------------------------------------------------

    def revoke(self, jws: Jws, account: Account | None, key: AccountKey) -> None:
        """RFC 8555 7.6: by the account that holds authorizations for every name, or by the
        certificate's own key."""
        from vouch.acme.jws import b64url_decode

        payload = jws.json_payload()
        try:
            certificate = x509.load_der_x509_certificate(
                b64url_decode(payload.get("certificate", ""))
            )
        except ValueError as exc:
            raise malformed("certificate is not a DER certificate") from exc
        reason_code = payload.get("reason", 0)
        if reason_code not in REASON_CODES:
            raise AcmeProblem("badRevocationReason", f"reason {reason_code} is not allowed")
        serial = format(certificate.serial_number, "X")
        if account is None:
            cert_key = certificate.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            own = key.public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            if cert_key != own:
                raise unauthorized("the JWS key is not the certificate's key")
        else:
            try:
                san = certificate.extensions.get_extension_for_class(
                    x509.SubjectAlternativeName
                ).value
            except x509.ExtensionNotFound as exc:
                raise unauthorized("the certificate names nothing") from exc
            names = {("dns", n) for n in san.get_values_for_type(x509.DNSName)} | {
                ("ip", str(n)) for n in san.get_values_for_type(x509.IPAddress)
            }
            held = self._store.valid_names_of(account.id, self._clock.now())
            owned = False
            records = self._certificates.certificates(CertificateQuery(serial=serial))
            for record in records:
                order = self._store.order_for_certificate(record.id)
                owned = owned or (order is not None and order.account_id == account.id)
            if not owned and not names <= held:
                raise unauthorized(
                    "this account neither ordered the certificate nor controls its names"
                )
        try:
            self._revoker().revoke(serial, REASON_CODES[reason_code], reasons=LEAF_REASONS)
        except NotFound as exc:
            raise unauthorized("vouch did not issue this certificate") from exc
        except Conflict as exc:
            raise AcmeProblem("alreadyRevoked", str(exc)) from exc


def _contacts(value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(c, str) for c in value):
        raise malformed("contact is a list of URLs")
    for contact in value:
        if not contact.startswith("mailto:") or "," in contact or "?" in contact:
            raise AcmeProblem(
                "unsupportedContact", f"only mailto: contacts are supported: {contact}"
            )
    return list(value)

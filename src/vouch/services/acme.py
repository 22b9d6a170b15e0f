"""The ACME registration authority (RFC 8555): accounts, orders, authorizations, finalization.

Identity comes first: an order's names are issued only when every authorization is valid (a
challenge really validated), and the CSR may name exactly the order's identifiers. Issuance goes
through the same ``Authority`` as everything else (policy, lint, records, audit log).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import hashlib
import hmac
import json
import math
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from vouch.acme import eab
from vouch.acme.ari import CertId, cert_id_of, default_window, parse_cert_id
from vouch.acme.challenges import TIMEOUT
from vouch.acme.domains import registered_domain
from vouch.acme.group import GroupWork
from vouch.acme.jws import (
    AccountKey,
    Jws,
    b64url,
    b64url_decode,
    jwk_of,
    key_from_jwk,
    thumbprint,
    verify,
)
from vouch.acme.problems import AcmeProblem, malformed, rate_limited, unauthorized
from vouch.clock import Clock
from vouch.errors import BadInput, Conflict, LintFailure, NotFound, PolicyViolation, VouchError
from vouch.services.authority import Authority, IssuanceRequest
from vouch.services.revocation import LEAF_REASONS, Revoker
from vouch.store.acme import Account, AcmeStore, Authz, Challenge, EabKey, Order
from vouch.store.records import CertificateRecord
from vouch.store.repository import CertificateQuery, Store
from vouch.x509.csr import load_csr
from vouch.x509.keypolicy import spki_sha256
from vouch.x509.names import SubjectName, normalize_dns, normalize_ip
from vouch.x509.policy import NamePolicy
from vouch.x509.serials import format_serial

NONCE_LIFETIME = dt.timedelta(hours=1)
NONCE_TIME_BYTES, NONCE_RANDOM_BYTES, NONCE_MAC_BYTES = 5, 16, 16
ORDER_LIFETIME = dt.timedelta(days=7)
MAX_IDENTIFIERS = 100
CHALLENGE_TYPES = ["http-01", "dns-01", "tls-alpn-01"]
# RFC 5280 5.3.1 reason codes by number, as revokeCert carries them.
REASON_CODES = {0: "unspecified", 1: "keyCompromise", 3: "affiliationChanged", 4: "superseded",
                5: "cessationOfOperation", 9: "privilegeWithdrawn"}  # fmt: skip


# How long an Authority (its loaded key, policy and profiles) is reused between finalizations.
AUTHORITY_TTL = 30.0
# A finalization still processing after this long is taken to have died (see _expire); an
# issuance (policy, lint, signing, two durable commits) takes well under a second.
FINALIZE_TIMEOUT = dt.timedelta(seconds=10)
# A node gives up on a validation after this long and records it failed: room for each of the
# validator's three tries to wait out a connect and a read (each bounded by its TIMEOUT); a
# target slower than that (a trickled body, a chain of slow redirects) is failing anyway.
VALIDATION_TIMEOUT = dt.timedelta(seconds=6 * TIMEOUT)
# A challenge still processing after this long was abandoned (its node died, or could not
# record the outcome): the next request for it by its account claims it again and validates
# anew. The margin over VALIDATION_TIMEOUT covers recording the outcome and clock skew between
# nodes, so a live node's validation is never taken over.
CHALLENGE_TIMEOUT = 2 * VALIDATION_TIMEOUT
# An override window (renew now) is this long, starting when it is set.
RENEW_NOW_WINDOW = dt.timedelta(minutes=1)


@dataclass(frozen=True)
class RateLimit:
    count: int  # 0: no limit
    window: dt.timedelta


@dataclass(frozen=True)
class AcmeSettings:
    terms_of_service: str | None = None
    website: str | None = None
    caa_identities: tuple[str, ...] = ()
    profile: str = "tls-server"
    eab_required: bool = False
    # CAA is checked at validation and again at finalize when the validation is older than this.
    caa_recheck_after: dt.timedelta = dt.timedelta(hours=8)
    orders_per_account: RateLimit = RateLimit(300, dt.timedelta(hours=3))
    certificates_per_domain: RateLimit = RateLimit(50, dt.timedelta(days=7))
    # How long clients wait before asking for renewal information again (RFC 9773 4.3).
    renewal_info_retry_after: int = 6 * 3600


class CaaCheck(Protocol):
    def check(self, name: str, *, wildcard: bool) -> None: ...


@dataclass(frozen=True)
class RenewalInfo:
    start: dt.datetime
    end: dt.datetime
    forced: bool  # the CA pulled the window forward (renew_now)


@dataclass(frozen=True)
class _Finalization:
    """An order claimed for finalization (checked, processing) and what to issue for it."""

    order: Order
    request: IssuanceRequest
    domains: set[str]


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
        caa: CaaCheck | None = None,
        eab_wrapping_key: Callable[[], bytes] | None = None,
    ) -> None:
        self._store = store
        self._certificates = certificates
        self._make_authority = authority
        self._revoker = revoker
        self._policy = name_policy
        self._clock = clock
        self.settings = settings
        self._caa = caa
        self._eab_wrapping_key = eab_wrapping_key
        self._authority_lock = threading.Lock()
        self._cached_authority: tuple[float, Authority] | None = None
        self._nonce_key_cache: bytes | None = None
        # Requests that arrive together use their nonces (and read their accounts) in one
        # transaction; each still learns whether its own nonce was fresh.
        self._nonce_uses: GroupWork[tuple[str, dt.datetime, int], tuple[bool, Account | None]]
        self._nonce_uses = GroupWork(store.use_nonces_reading_accounts)
        # Concurrent finalizations issue as one batch (shared transactions and disk waits).
        # Orders this node is finalizing now: a slow issuance (a busy HSM) is not taken for a
        # dead one and handed back to the client (which would get a second certificate).
        self._in_flight: set[int] = set()
        self._in_flight_lock = threading.Lock()
        self._finalizations: GroupWork[_Finalization, Order] = GroupWork(
            self._issue_finalizations
        )

    def _authority(self) -> Authority:
        """The issuing authority, reused for a few seconds: loading a CA key for every order
        would cost more than issuing. The CA's status is read every time, so a CA retired or
        revoked (on any node) stops issuing here at once."""
        with self._authority_lock:
            now = time.monotonic()
            cached = self._cached_authority
            if cached is not None:
                record = cached[1].ca.record
                current = self._certificates.authority_by_id(record.id)
                if now - cached[0] > AUTHORITY_TTL or current.status != record.status:
                    cached = None
            if cached is None:
                cached = self._cached_authority = (now, self._make_authority())
            return cached[1]

    @property
    def store(self) -> AcmeStore:
        return self._store

    # -- nonces ----------------------------------------------------------------------------------

    def _nonce_key(self) -> bytes:
        if self._nonce_key_cache is None:
            self._nonce_key_cache = self._store.secret(
                "nonce-key", lambda: secrets.token_bytes(32)
            )
        return self._nonce_key_cache

    def new_nonce(self) -> str:
        """An authenticated nonce (expiry, randomness, MAC): issuing one writes nothing; any
        node that shares the store can check it, and using it records it once (RFC 8555 6.5)."""
        expires = int((self._clock.now() + NONCE_LIFETIME).timestamp())
        body = expires.to_bytes(NONCE_TIME_BYTES, "big") + secrets.token_bytes(NONCE_RANDOM_BYTES)
        mac = hmac.new(self._nonce_key(), body, hashlib.sha256).digest()[:NONCE_MAC_BYTES]
        return b64url(body + mac)

    def _nonce_expiry(self, nonce: str) -> dt.datetime:
        """When an authentic, unexpired nonce expires (whether it was used is the store's)."""
        try:
            raw = b64url_decode(nonce)
        except AcmeProblem as exc:
            raise _bad_nonce() from exc
        body, mac = raw[:-NONCE_MAC_BYTES], raw[-NONCE_MAC_BYTES:]
        if len(raw) != NONCE_TIME_BYTES + NONCE_RANDOM_BYTES + NONCE_MAC_BYTES:
            raise _bad_nonce()
        expected = hmac.new(self._nonce_key(), body, hashlib.sha256).digest()[:NONCE_MAC_BYTES]
        if not hmac.compare_digest(mac, expected):
            raise _bad_nonce()
        expires = dt.datetime.fromtimestamp(
            int.from_bytes(body[:NONCE_TIME_BYTES], "big"), dt.UTC
        )
        if expires <= self._clock.now():
            raise _bad_nonce()
        return expires

    def use_nonce(self, nonce: str) -> None:
        if not self._store.use_nonce(nonce, self._nonce_expiry(nonce)):
            raise _bad_nonce()

    # -- accounts --------------------------------------------------------------------------------

    def account_for_kid(self, kid: str, account_id: int) -> tuple[Account, AccountKey]:
        try:
            account = self._store.account(account_id)
        except NotFound as exc:
            raise AcmeProblem("accountDoesNotExist", f"no account {kid}") from exc
        return self._signer(kid, account)

    def use_nonce_for_kid(
        self, nonce: str, kid: str, account_id: int
    ) -> tuple[Account, AccountKey]:
        """``use_nonce`` then ``account_for_kid`` in one transaction, shared with the requests
        that arrive at the same time (the hot path)."""
        used, account = self._nonce_uses.submit((nonce, self._nonce_expiry(nonce), account_id))
        if not used:
            raise _bad_nonce()
        if account is None:
            raise AcmeProblem("accountDoesNotExist", f"no account {kid}")
        return self._signer(kid, account)

    @staticmethod
    def _signer(kid: str, account: Account) -> tuple[Account, AccountKey]:
        if account.status != "valid":
            raise unauthorized(f"account {kid} is {account.status}")
        return account, _account_key(account.thumbprint, json.dumps(account.jwk))

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
            raise AcmeProblem("userActionRequired", "agree to the terms of service first")
        contact = _contacts(payload.get("contact", []))
        try:
            eab_key_id = self._check_binding(jws, payload.get("externalAccountBinding"))
            made = self._store.add_account(
                thumbprint(key), jwk_of(key), contact, self._clock.now(), eab_key_id=eab_key_id
            )
        except (AcmeProblem, Conflict) as exc:
            # Two registrations with one key and one EAB key at once (a client that registers
            # from several tasks): the first makes the account, and the other, which looked
            # before it was stored, must get it too (RFC 8555 7.3: a key that has an account
            # gets that account), not "EAB key used".
            raced = self._store.account_by_thumbprint(thumbprint(key))
            if raced is not None:
                if raced.status != "valid":
                    raise unauthorized(f"the account with this key is {raced.status}") from exc
                return raced, False
            if isinstance(exc, Conflict):
                raise unauthorized(
                    "the external account binding key was used or revoked meanwhile"
                ) from exc
            raise
        return made, True

    def _check_binding(self, jws: Jws, value: Any) -> str | None:
        """RFC 8555 7.3.4: the key id of a verified, unused EAB key, or None without one."""
        if value is None:
            if self.settings.eab_required:
                raise AcmeProblem(
                    "externalAccountRequired",
                    "this CA requires an external account binding (ask its operator for a key)",
                )
            return None
        assert jws.jwk is not None
        binding = eab.parse_binding(value, outer_url=jws.url, outer_jwk=jws.jwk)
        record = self._store.eab_key(binding.key_id)
        if record is None or record.status != "unused" or record.sealed is None:
            raise unauthorized("the external account binding key is unknown, used or revoked")
        if self._eab_wrapping_key is None:
            raise AcmeProblem("serverInternal", "external account binding is not set up here")
        secret = eab.unseal(self._eab_wrapping_key(), record.key_id, record.sealed)
        eab.verify_binding(binding, secret)
        return record.key_id

    # -- external account binding keys (operator side) -------------------------------------------

    def new_eab_key(self, note: str) -> eab.NewEabKey:
        """A new single-use key; its HMAC key is returned here once and kept only sealed."""
        if self._eab_wrapping_key is None:
            raise VouchError("external account binding is not set up here")
        made = eab.new_key(self._eab_wrapping_key())
        self._store.add_eab_key(made.key_id, made.sealed, note, self._clock.now())
        return made

    def eab_keys(self) -> list[EabKey]:
        return self._store.eab_keys()

    def revoke_eab_key(self, key_id: str) -> EabKey:
        return self._store.revoke_eab_key(key_id, self._clock.now())

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
            raise AcmeProblem("conflict", str(exc)) from exc

    # -- rate limits -----------------------------------------------------------------------------

    def _check_rate_limits(self, account: Account, domains: set[str]) -> None:
        now = self._clock.now()
        limit = self.settings.orders_per_account
        if limit.count:
            count, oldest = self._store.orders_since(account.id, now - limit.window)
            if count >= limit.count and oldest is not None:
                raise rate_limited(
                    f"at most {limit.count} new orders per account in {limit.window}",
                    _seconds_until(oldest + limit.window, now),
                )
        limit = self.settings.certificates_per_domain
        if limit.count:
            for domain in sorted(domains):
                count, oldest = self._store.issued_for_domain_since(domain, now - limit.window)
                if count >= limit.count and oldest is not None:
                    raise rate_limited(
                        f"at most {limit.count} certificates for {domain} in {limit.window}",
                        _seconds_until(oldest + limit.window, now),
                    )

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
        replaces = payload.get("replaces")
        if replaces is not None:
            replaces = self._check_replaces(account, replaces, identifiers, order_id=None).text()
        self._check_rate_limits(account, _domains(identifiers))
        now = self._clock.now()
        tokens = [[secrets.token_urlsafe(32) for _ in CHALLENGE_TYPES] for _ in identifiers]
        return self._store.add_order(
            account_id=account.id,
            identifiers=identifiers,
            expires=now + ORDER_LIFETIME,
            replaces=replaces,
            at=now,
            challenge_types=CHALLENGE_TYPES,
            tokens=tokens,
        )

    def _check_replaces(
        self,
        account: Account,
        value: Any,
        identifiers: list[dict[str, str]],
        *,
        order_id: int | None,
    ) -> CertId:
        """RFC 9773 5: the replaced certificate is this account's, shares a name with the
        order, and no other finalized order replaced it already."""
        cert_id = parse_cert_id(value)
        record = self._find_certificate(cert_id)
        if record is None:
            raise malformed("replaces names no certificate this CA issued")
        order = self._store.order_for_certificate(record.id)
        if order is None or order.account_id != account.id:
            raise unauthorized("replaces names a certificate of another account")
        if not {(i["type"], i["value"]) for i in identifiers} & set(record.names):
            raise malformed("the order shares no identifier with the certificate it replaces")
        for other, status in self._store.orders_replacing(cert_id.text()):
            if other != order_id and status in ("valid", "processing"):
                raise AcmeProblem(
                    "alreadyReplaced", f"order {other} already replaced this certificate"
                )
        return cert_id

    def _find_certificate(self, cert_id: CertId) -> CertificateRecord | None:
        serial = format_serial(cert_id.serial)
        for record in self._certificates.certificates(CertificateQuery(serial=serial)):
            if record.der is not None and cert_id_of(
                x509.load_der_x509_certificate(record.der)
            ) == cert_id:
                return record
        return None

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
        now = self._clock.now()
        if order.status in ("pending", "ready") and order.expires <= now:
            self._store.set_order(order.id, status="invalid")
            return self._store.order(order.id)
        if (
            order.status == "processing"
            and (order.finalize_started is None or order.finalize_started < now - FINALIZE_TIMEOUT)
            and order.id not in self._in_flight  # slow, not dead: it must not be issued twice
        ):
            # A finalization that never finished (its node died after recording the intent, or
            # the store failed before the order was set back): the client may finalize again.
            self._store.release_stale_finalize(order.id, now - FINALIZE_TIMEOUT)
            return self._store.order(order.id)
        return order

    def authz_of(self, account: Account, authz_id: int) -> Authz:
        authz = self._store.authz(authz_id)
        if self._store.order_account_id(authz.order_id) != account.id:
            raise unauthorized("this authorization belongs to another account")
        return authz

    def deactivate_authz(self, account: Account, authz_id: int) -> Authz:
        self.authz_of(account, authz_id)
        self._store.deactivate_authz(authz_id)
        return self._store.authz(authz_id)

    def start_challenge(self, account: Account, challenge_id: int) -> tuple[Challenge, Authz, bool]:
        """Mark a challenge processing; True when the caller should now validate it. A challenge
        left processing longer than CHALLENGE_TIMEOUT (abandoned) is claimed again, by one node
        only (the store's conditional update)."""
        challenge = self._store.challenge(challenge_id)
        authz = self.authz_of(account, challenge.authz_id)
        if authz.status != "pending":
            return challenge, authz, False
        now = self._clock.now()
        started = self._store.start_challenge(
            challenge_id, now, stale_before=now - CHALLENGE_TIMEOUT
        )
        return self._store.challenge(challenge_id), authz, started

    def resume_abandoned(self, authz: Authz) -> tuple[Authz, list[Challenge]]:
        """The authorization as it is now, and those of its challenges whose abandoned
        validation this caller claimed again (and must now run). A client that only polls its
        authorization or challenge (as RFC 8555 7.5.1 has it do) thus still gets an answer
        after the node validating for it died. Call after checking the reader's ownership."""
        if authz.status != "pending":
            return authz, []
        now = self._clock.now()
        stale_before = now - CHALLENGE_TIMEOUT
        resumed: set[int] = set()
        for challenge in authz.challenges:
            started = challenge.processing_started
            if (
                challenge.status == "processing"
                and (started is None or started < stale_before)
                and self._store.start_challenge(challenge.id, now, stale_before=stale_before)
            ):
                resumed.add(challenge.id)
        if not resumed:
            return authz, []
        authz = self._store.authz(authz.id)
        return authz, [c for c in authz.challenges if c.id in resumed]

    def caa_refusal(self, authz: Authz) -> AcmeProblem | None:
        """Why CAA forbids this CA to issue for the authorization's name, or None if it may
        (or CAA is not checked here). Blocking: DNS lookups."""
        if self._caa is None or authz.type != "dns":
            return None
        try:
            self._caa.check(authz.value, wildcard=authz.wildcard)
        except AcmeProblem as problem:
            return problem
        return None

    def finish_challenge(self, challenge: Challenge, error: AcmeProblem | None) -> bool:
        """Record a validation; a met challenge still fails if CAA forbids this CA."""
        if error is None and self._caa is not None:
            error = self.caa_refusal(self._store.authz(challenge.authz_id))
        return self.record_validation(challenge, error) is not None

    def record_validation(
        self, challenge: Challenge, error: AcmeProblem | None
    ) -> Challenge | None:
        """Record the validation of ``challenge`` as claimed (processing) by this caller, whose
        CAA verdict the caller already folded into ``error``: the challenge as recorded. None,
        recording nothing, when the claim was lost: the validation outlived CHALLENGE_TIMEOUT
        and was claimed again."""
        return self._store.finish_challenge(
            challenge.id,
            started=challenge.processing_started,
            ok=error is None,
            at=self._clock.now(),
            error=None if error is None else error.document(),
        )

    def finalize(self, account: Account, order_id: int, payload: dict[str, Any]) -> Order:
        order = self.order_of(account, order_id)
        if order.status != "ready":
            raise AcmeProblem(
                "orderNotReady", f"the order is {order.status}, not ready"
            )
        csr_b64 = payload.get("csr")
        if not isinstance(csr_b64, str):
            raise malformed("finalize needs a csr")
        try:
            parsed = load_csr(b64url_decode(csr_b64))
        except (BadInput, PolicyViolation) as exc:
            raise AcmeProblem("badCSR", exc.message) from exc
        # RFC 8555 11.1: the certificate's key is never the account's (one stolen key would
        # then both hold the account and impersonate the server).
        account_key = _account_key(account.thumbprint, json.dumps(account.jwk))
        if spki_sha256(parsed.public_key) == spki_sha256(account_key):
            raise AcmeProblem("badCSR", "the CSR's key is the account key: use a key of its own")
        wanted = {(i["type"], i["value"]) for i in order.identifiers}
        asked = {(n.kind, n.value) for n in parsed.names}
        if asked != wanted:
            raise AcmeProblem(
                "badCSR",
                "the CSR must name exactly the order's identifiers "
                f"(order: {sorted(v for _, v in wanted)}, CSR: {sorted(v for _, v in asked)})",
            )
        domains = _domains(order.identifiers)
        self._check_rate_limits_at_finalize(domains)
        if order.replaces is not None:
            self._check_replaces(account, order.replaces, order.identifiers, order_id=order.id)
        if not self._store.claim_finalize(order.id, self._clock.now()):
            raise AcmeProblem("orderNotReady", "the order is already being finalized")
        try:
            self._recheck_caa(order)
        except AcmeProblem as refused:
            self._store.set_order(order.id, status="invalid", error=refused.document())
            raise
        except VouchError:
            self._store.set_order(order.id, status="ready")
            raise
        request = IssuanceRequest.from_csr(parsed, profile=self.settings.profile)
        with self._in_flight_lock:
            self._in_flight.add(order.id)
        try:
            return self._finalizations.submit(_Finalization(order, request, domains))
        finally:
            with self._in_flight_lock:
                self._in_flight.discard(order.id)

    def _issue_finalizations(
        self, batch: Sequence[_Finalization]
    ) -> list[Order | BaseException]:
        """Issue for claimed orders together (the authority's group commit), then mark them
        valid in one transaction; each order gets its valid self or the error to raise."""
        try:
            authority = self._authority()
            results = authority.issue_batch([f.request for f in batch])
        except VouchError as exc:
            for item in batch:  # nothing was issued: the client may try again later
                self._store.set_order(item.order.id, status="ready")
            return [exc] * len(batch)
        outcomes: list[Order | BaseException] = []
        completed: list[tuple[int, int, set[str]]] = []
        for item, result in zip(batch, results, strict=True):
            if isinstance(result, (PolicyViolation, LintFailure)):
                problem = AcmeProblem(
                    "rejectedIdentifier" if isinstance(result, PolicyViolation) else "badCSR",
                    result.message,
                )
                self._store.set_order(item.order.id, status="invalid", error=problem.document())
                outcomes.append(problem)
            elif isinstance(result, VouchError):
                self._store.set_order(item.order.id, status="ready")
                outcomes.append(result)
            else:
                # The certificate's own record: after an incident moved issuance to the standby
                # during this batch, the CA that signed is not the one this service asked.
                completed.append((item.order.id, result.record_id, item.domains))
                outcomes.append(
                    dataclasses.replace(item.order, status="valid", certificate_id=result.record_id)
                )
        if completed:
            self._store.complete_orders(completed, self._clock.now())
        return outcomes

    def _check_rate_limits_at_finalize(self, domains: set[str]) -> None:
        # Orders are counted when made; issued certificates per domain again here, since many
        # orders made under the limit could otherwise all be finalized.
        limit = self.settings.certificates_per_domain
        if not limit.count:
            return
        now = self._clock.now()
        for domain in sorted(domains):
            count, oldest = self._store.issued_for_domain_since(domain, now - limit.window)
            if count >= limit.count and oldest is not None:
                raise rate_limited(
                    f"at most {limit.count} certificates for {domain} in {limit.window}",
                    _seconds_until(oldest + limit.window, now),
                )

    def _recheck_caa(self, order: Order) -> None:
        """CAA again for names validated longer ago than the configured window (RFC 8659 3:
        the check must be fresh when the certificate is issued)."""
        if self._caa is None:
            return
        stale_before = self._clock.now() - self.settings.caa_recheck_after
        for authz_id in order.authz_ids:
            authz = self._store.authz(authz_id)
            if authz.type == "dns" and (
                authz.validated_at is None or authz.validated_at < stale_before
            ):
                self._caa.check(authz.value, wildcard=authz.wildcard)

    def certificate_chain(self, account: Account, certificate_id: int) -> CertificateRecord:
        order = self._store.order_for_certificate(certificate_id)
        if order is None or order.account_id != account.id:
            raise unauthorized("this certificate was not issued to this account")
        record = self._certificates.certificate(certificate_id)
        if record.der is None:
            raise NotFound("no such certificate")
        return record

    # -- renewal information (RFC 9773) ----------------------------------------------------------

    def renewal_info(self, cert_id_text: str) -> RenewalInfo:
        cert_id = parse_cert_id(cert_id_text)
        record = self._find_certificate(cert_id)
        if record is None:
            raise NotFound("no certificate with this identifier")
        return self.renewal_window(record)

    def renewal_window(self, record: CertificateRecord) -> RenewalInfo:
        """When this certificate should be renewed: the window the CA forced on it (renew now:
        a key rotation, a compromise), else the default one. ACME's renewalInfo and the REST
        API's certificate answers both tell it."""
        override = self._store.renewal_override(
            record.id, record.authority_id, record.not_before
        )
        if override is not None:
            return RenewalInfo(override[0], override[1], forced=True)
        start, end = default_window(record.not_before, record.not_after)
        return RenewalInfo(start, end, forced=False)

    def renew_now(
        self, *, certificate_ids: Sequence[int] = (), authority: str | None = None
    ) -> int:
        """Pull the renewal window of certificates to now: the given ones, or every certificate
        ``authority`` issued until now (a CA key rotation, a compromise). Stored, so every node
        answers renewalInfo with it; returns how many overrides were recorded."""
        now = self._clock.now()
        window = (now, now + RENEW_NOW_WINDOW)
        recorded = 0
        for certificate_id in certificate_ids:
            record = self._certificates.certificate(certificate_id)
            self._store.add_renewal_override(
                certificate_id=record.id, authority_id=None, issued_before=now,
                window=window, at=now, subject=record.serial,
            )  # fmt: skip
            recorded += 1
        if authority is not None:
            issuer = self._certificates.get_authority(authority)
            self._store.add_renewal_override(
                certificate_id=None, authority_id=issuer.id, issued_before=now,
                window=window, at=now, subject=issuer.name,
            )  # fmt: skip
            recorded += 1
        return recorded

    # -- revocation ------------------------------------------------------------------------------

    def revoke(self, jws: Jws, account: Account | None, key: AccountKey) -> None:
        """RFC 8555 7.6: by the account that holds authorizations for every name, or by the
        certificate's own key."""
        payload = jws.json_payload()
        try:
            certificate = x509.load_der_x509_certificate(
                b64url_decode(payload.get("certificate", ""))
            )
        except ValueError as exc:
            raise malformed("certificate is not a DER certificate") from exc
        reason_code = payload.get("reason", 0)
        if not isinstance(reason_code, int) or isinstance(reason_code, bool):
            raise malformed("reason is a revocation reason code (an integer)")
        if reason_code not in REASON_CODES:
            raise AcmeProblem("badRevocationReason", f"reason {reason_code} is not allowed")
        # Only the very certificate vouch stored under this serial: a forged one that merely
        # borrows a victim's (public) serial, with the forger's key or names, revokes nothing.
        der = certificate.public_bytes(serialization.Encoding.DER)
        serial = format_serial(certificate.serial_number)
        record = next(
            (
                r
                for r in self._certificates.certificates(CertificateQuery(serial=serial))
                if r.der == der
            ),
            None,
        )
        if record is None:
            raise unauthorized("vouch did not issue this certificate")
        # Who asked, for the audit log: RFC 8555 7.6 allows the account or the certificate's key.
        by: dict[str, object] = (
            {"certificate_key": True} if account is None else {"acme_account": account.id}
        )
        if account is None:
            if spki_sha256(certificate.public_key()) != spki_sha256(key):
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
            order = self._store.order_for_certificate(record.id)
            owned = order is not None and order.account_id == account.id
            held = self._store.valid_names_of(account.id, self._clock.now())
            if not owned and not names <= held:
                raise unauthorized(
                    "this account neither ordered the certificate nor controls its names"
                )
        try:
            self._revoker().revoke(
                serial, REASON_CODES[reason_code], ca=record.authority, reasons=LEAF_REASONS, by=by
            )
        except NotFound as exc:
            raise unauthorized("vouch did not issue this certificate") from exc
        except Conflict as exc:
            raise AcmeProblem("alreadyRevoked", str(exc)) from exc


def _bad_nonce() -> AcmeProblem:
    return AcmeProblem("badNonce", "the nonce is unknown, used, or expired")


@functools.lru_cache(maxsize=1024)
def _account_key(thumbprint: str, jwk_json: str) -> AccountKey:
    """An account's public key, parsed (and its point checked) once per key rather than once
    per request; bounded, and keyed by the whole JWK, so a changed key is parsed anew."""
    return key_from_jwk(json.loads(jwk_json))


def _domains(identifiers: list[dict[str, str]]) -> set[str]:
    return {registered_domain(i["value"]) for i in identifiers if i["type"] == "dns"}


def _seconds_until(when: dt.datetime, now: dt.datetime) -> int:
    return max(1, math.ceil((when - now).total_seconds()))


def _contacts(value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(c, str) for c in value):
        raise malformed("contact is a list of URLs")
    for contact in value:
        if not contact.startswith("mailto:") or "," in contact or "?" in contact:
            raise AcmeProblem(
                "unsupportedContact", f"only mailto: contacts are supported: {contact}"
            )
    return list(value)

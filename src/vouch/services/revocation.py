"""Revoking certificates and CAs: recorded once, final, and published at once.

A revocation commits first (with its events, and the key's block for keyCompromise); then the
CA's CRL and the certificate's OCSP response are produced again by the ``after_revoke`` hook.
If that fails (no key here, say) the server's periodic check catches up within seconds: the CA's
revision tells it the published data is behind.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass

from vouch.clock import Clock
from vouch.errors import BadInput, NotFound
from vouch.faults import checkpoint
from vouch.store.records import AuthorityRecord, CertificateRecord, NewEvent
from vouch.store.repository import Store
from vouch.store.revocations import AlreadyRevoked, RevocationStore
from vouch.x509.serials import format_serial, parse_serial

LEAF_REASONS = (
    "unspecified",
    "keyCompromise",
    "affiliationChanged",
    "superseded",
    "cessationOfOperation",
    "privilegeWithdrawn",
)
CA_REASONS = ("unspecified", "keyCompromise", "cACompromise", "superseded", "cessationOfOperation")


@dataclass(frozen=True)
class Revoked:
    serial: str
    ca: str
    reason: str
    revoked_at: dt.datetime
    invalidity_date: dt.datetime | None
    key_blocked: bool


def check_reason(reason: str, allowed: tuple[str, ...]) -> str:
    by_lower = {r.lower(): r for r in allowed}
    found = by_lower.get(reason.lower())
    if found is None:
        raise BadInput(
            f"unknown revocation reason {reason!r}", hint=f"one of: {', '.join(allowed)}"
        )
    return found


class Revoker:
    def __init__(
        self,
        *,
        store: Store,
        revocations: RevocationStore,
        clock: Clock,
        after_revoke: Callable[[AuthorityRecord, CertificateRecord], None] | None = None,
    ) -> None:
        self._store = store
        self._revocations = revocations
        self._clock = clock
        self._after_revoke = after_revoke

    def find(self, serial: str, ca: str | None = None) -> CertificateRecord:
        canonical = format_serial(parse_serial(serial))
        found = self._revocations.find_issued(canonical, ca)
        if not found:
            where = f" under CA {ca}" if ca else ""
            raise NotFound(
                f"vouch never issued a certificate with serial {canonical}{where}",
                hint="vouch cert list shows what was issued",
            )
        if len(found) > 1:
            raise BadInput(
                f"serial {canonical} was issued by several CAs ({', '.join(c.authority for c in found)})",
                hint="name the CA with --ca",
            )
        return found[0]

    def revoke(
        self,
        serial: str,
        reason: str,
        *,
        ca: str | None = None,
        invalidity_date: dt.datetime | None = None,
        reasons: tuple[str, ...] = LEAF_REASONS,
        by: dict[str, object] | None = None,
        as_ca: bool = False,
    ) -> Revoked:
        """``by`` says who asked, for the audit log (an administrator, an ACME account, the
        certificate's own key); None where the caller is the local operator. A CA's own
        certificate is revoked only ``as_ca`` (``revoke_ca``, which also retires the CA)."""
        reason = check_reason(reason, reasons)
        record = self.find(serial, ca)
        if not as_ca:
            named = self._ca_certified_by(record)
            if named is not None:
                raise BadInput(
                    f"serial {record.serial} is the certificate of CA {named}: revoking it here "
                    "would leave the CA issuing under a revoked certificate",
                    hint=f"an administrator revokes a CA with: vouch ca revoke {named} --reason ...",
                )
        now = self._clock.now().replace(microsecond=0)
        if invalidity_date is not None:
            if invalidity_date.tzinfo is None:
                raise BadInput("the invalidity date needs a time zone (e.g. 2026-11-01T12:00Z)")
            try:
                invalidity_date = invalidity_date.astimezone(dt.UTC).replace(microsecond=0)
            except OverflowError as exc:
                raise BadInput("the invalidity date lies outside the years 1 to 9999") from exc
            if invalidity_date > now:
                raise BadInput("the invalidity date lies in the future")
            if invalidity_date.year < 1950:  # the CRL could not carry it (x509/crl.py)
                raise BadInput(
                    "the invalidity date lies before 1950: give the date the key was known or "
                    "suspected to be compromised",
                )
        block = reason in ("keyCompromise", "cACompromise")
        events = [
            NewEvent(
                "certificate.revoked",
                record.serial,
                {
                    "ca": record.authority,
                    "serial": record.serial,
                    "reason": reason,
                    "revoked_at": now.isoformat(),
                    "invalidity_date": invalidity_date.isoformat() if invalidity_date else None,
                    **({"by": by} if by is not None else {}),
                },
            )
        ]
        if block:
            events.append(
                NewEvent(
                    "key.blocked",
                    record.spki_sha256,
                    {"spki_sha256": record.spki_sha256, "serial": record.serial, "reason": reason},
                )
            )
        self._revocations.revoke(
            certificate_id=record.id,
            reason=reason,
            at=now,
            invalidity_date=invalidity_date,
            block_key=block,
            new_events=events,
        )
        if self._after_revoke is not None:
            self._after_revoke(self._store.authority_by_id(record.authority_id), record)
        return Revoked(record.serial, record.authority, reason, now, invalidity_date, block)

    def _ca_certified_by(self, record: CertificateRecord) -> str | None:
        """The CA whose own certificate ``record`` is, if any."""
        for authority in self._store.list_authorities():
            if (
                authority.parent_id is not None
                and format_serial(parse_serial(authority.serial)) == record.serial
            ):
                parent = self._store.authority_by_id(authority.parent_id)
                if parent.name == record.authority:
                    return authority.name
        return None

    def revoke_ca(self, name: str, reason: str) -> Revoked:
        """Revoke an intermediate: its certificate on its issuer's CRL, and the CA retired.

        Two transactions (the certificate's revocation, then the CA's): if the process dies
        between them, running it again finds the certificate revoked and completes the CA's
        revocation with the recorded reason and time, instead of refusing it as done."""
        reason = check_reason(reason, CA_REASONS)
        authority = self._store.get_authority(name)
        if authority.role == "root" or authority.parent_id is None:
            raise BadInput(
                f"{name} is a root CA: a root is not revoked, it is removed from trust stores",
                hint="revoke its intermediates instead, or distribute a new root",
            )
        parent = self._store.authority_by_id(authority.parent_id)
        if authority.status == "revoked":
            raise AlreadyRevoked(
                f"CA {name} is already revoked",
                hint=f"revocation is final; `vouch crl --ca {parent.name}` (with --root-key DIR "
                "for an offline root) signs its issuer's CRL again if that CRL is behind",
            )
        record = self.find(authority.serial, parent.name)
        if record.revoked_at is None:
            revoked = self.revoke(
                authority.serial, reason, ca=parent.name, reasons=CA_REASONS, as_ca=True
            )
        else:
            revoked = self._recorded(record)
        checkpoint("revoke-ca.between")  # crash-safety tests: certificate revoked, CA not yet
        self._revocations.mark_ca_revoked(
            authority.id,
            revoked.reason,
            revoked.revoked_at,
            NewEvent(
                "ca.revoked",
                authority.name,
                {"name": authority.name, "serial": authority.serial, "reason": revoked.reason},
            ),
        )
        return revoked

    def _recorded(self, record: CertificateRecord) -> Revoked:
        """A CA certificate's revocation as recorded by an earlier, interrupted ``revoke_ca``
        (its events are in the log already); its CRL is published again."""
        assert record.revoked_at is not None
        reason = record.revocation_reason or "unspecified"
        if self._after_revoke is not None:
            self._after_revoke(self._store.authority_by_id(record.authority_id), record)
        return Revoked(
            record.serial,
            record.authority,
            reason,
            record.revoked_at,
            record.invalidity_date,
            reason in ("keyCompromise", "cACompromise"),
        )

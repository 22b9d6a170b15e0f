"""Producing CRLs: each CA's full CRL, its shards, and the root's CRL of intermediates.

A CRL is due when none exists, when a revocation happened after it was made (the CA's revision
moved on), or at half its validity. CRL numbers come from the store, which refuses a number that
is not above every earlier one: two nodes racing cannot publish numbers out of order.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes

from vouch.clock import Clock
from vouch.errors import Conflict, LintFailure
from vouch.store.records import AuthorityRecord, CRLRecord, NewEvent
from vouch.store.revocations import RevocationStore
from vouch.x509.build import IssuerUrls
from vouch.x509.crl import CRLSpec, build_crl
from vouch.x509.lint import Finding, LintMode

log = logging.getLogger(__name__)

FULL = -1  # the shard number of a CA's complete CRL


class CRLLinter(Protocol):
    def lint_crl(self, der: bytes, *, arl: bool = False) -> list[Finding]: ...


@dataclass(frozen=True)
class CRLSettings:
    validity: dt.timedelta
    root_validity: dt.timedelta
    shards: int = 0


class CRLProducer:
    def __init__(
        self,
        *,
        revocations: RevocationStore,
        clock: Clock,
        settings: CRLSettings,
        linter: CRLLinter | None = None,
        lint_mode: LintMode = LintMode.BLOCK,
    ) -> None:
        self._revocations = revocations
        self._clock = clock
        self._settings = settings
        self._linter = linter
        self._lint_mode = lint_mode

    def scopes(self, authority: AuthorityRecord) -> list[int]:
        """The CRLs a CA publishes: its full CRL, and its shards for an issuing CA."""
        if authority.role == "root" or not self._settings.shards:
            return [FULL]
        return [FULL, *range(self._settings.shards)]

    def validity(self, authority: AuthorityRecord) -> dt.timedelta:
        return self._settings.root_validity if authority.role == "root" else self._settings.validity

    def due(self, authority: AuthorityRecord) -> list[int]:
        now = self._clock.now()
        revision = self._revocations.revision(authority.id)
        due = []
        for shard in self.scopes(authority):
            latest = self._revocations.latest_crl(authority.id, shard)
            if (
                latest is None
                or latest.covers_revision < revision
                or now >= latest.this_update + (latest.next_update - latest.this_update) / 2
            ):
                due.append(shard)
        return due

    def produce(
        self,
        authority: AuthorityRecord,
        key: CertificateIssuerPrivateKeyTypes,
        urls: IssuerUrls,
        *,
        shards: list[int] | None = None,
        attempts: int = 3,
    ) -> list[CRLRecord]:
        """Sign and store the CRLs named (default: those due); returns what was published."""
        wanted = self.due(authority) if shards is None else shards
        issuer = x509.load_der_x509_certificate(authority.certificate)
        made = []
        for shard in wanted:
            for attempt in range(attempts):
                try:
                    made.append(self._produce_one(authority, issuer, key, urls, shard))
                    break
                except Conflict:
                    # Another node published a CRL number meanwhile: take the next and rebuild.
                    if attempt == attempts - 1:
                        raise
        return made

    def _produce_one(
        self,
        authority: AuthorityRecord,
        issuer: x509.Certificate,
        key: CertificateIssuerPrivateKeyTypes,
        urls: IssuerUrls,
        shard: int,
    ) -> CRLRecord:
        now = self._clock.now().replace(microsecond=0)
        revision = self._revocations.revision(authority.id)
        number = self._revocations.next_crl_number(authority.id)
        counted = _Counter(
            self._revocations.iter_revoked(
                authority.id,
                shard=None if shard == FULL else shard,
                # CA/B BR 7.2.2: an entry stays on at least one CRL after its certificate expires.
                expired_before=now - self.validity(authority),
            )
        )
        spec = CRLSpec(
            issuer=issuer,
            number=number,
            this_update=now,
            next_update=now + self.validity(authority),
            distribution_point=None if shard == FULL else urls.crl_url(shard),
        )
        der = build_crl(spec, counted, key)
        self._lint(der, authority)
        record = CRLRecord(
            authority_id=authority.id,
            shard=shard,
            number=number,
            this_update=spec.this_update,
            next_update=spec.next_update,
            covers_revision=revision,
            entries=counted.count,
            der=der,
        )
        self._revocations.add_crl(
            record,
            [
                NewEvent(
                    "crl.published",
                    f"{authority.name}/{number}",
                    {
                        "ca": authority.name,
                        "shard": shard,
                        "number": number,
                        "entries": counted.count,
                        "this_update": now.isoformat(),
                    },
                )
            ],
        )
        return record

    def _lint(self, der: bytes, authority: AuthorityRecord) -> None:
        if self._lint_mode is LintMode.OFF or self._linter is None:
            return
        # A root's CRL lists CAs: the ARL rules (validity up to a year) apply to it.
        findings = self._linter.lint_crl(der, arl=authority.role == "root")
        if not findings:
            return
        if self._lint_mode is LintMode.BLOCK:
            raise LintFailure([str(f) for f in findings])
        log.warning("CRL lint findings for %s: %s", authority.name, "; ".join(map(str, findings)))


class _Counter:
    """Passes entries through while counting them (the CRL builder streams)."""

    def __init__(self, entries: object) -> None:
        self._entries = entries
        self.count = 0

    def __iter__(self):  # type: ignore[no-untyped-def]
        for entry in self._entries:  # type: ignore[attr-defined]
            self.count += 1
            yield entry

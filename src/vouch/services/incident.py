"""Emergency rotation after an issuing CA's key is compromised, with its MTTR measured.

``declare`` stops issuance under the CA at once and moves it to a standby intermediate (prepared
and signed before, so no root ceremony is on the critical path), then pulls every certificate's
ACME renewal window (RFC 9773) to now. ``progress`` counts what has been replaced: a certificate
is replaced when each of its names is in an unrevoked certificate another CA issued since the
declaration. ``finish`` revokes what is left, publishes the CA's CRLs and OCSP responses, revokes
the CA on its root's CRL (signed here, or in an offline root ceremony whose transcript is then
imported), blocks its key and closes the incident with its time to recover.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes

from vouch.clock import Clock
from vouch.errors import BadInput, Conflict, NotFound
from vouch.faults import checkpoint
from vouch.services.ceremony_import import CeremonyImporter
from vouch.services.crls import FULL
from vouch.services.revocation import LEAF_REASONS, Revoker, check_reason
from vouch.store.incident import (
    OPEN,
    IncidentRecord,
    IncidentStore,
    LeafRevocation,
)
from vouch.store.records import AuthorityRecord, NewEvent
from vouch.store.repository import CertificateQuery, Store
from vouch.store.revocations import RevocationStore
from vouch.x509.keypolicy import spki_sha256
from vouch.x509.serials import parse_serial

INCIDENT_REASONS = ("keyCompromise", "cACompromise")
# vouch's own OCSP responder certificates under the CA sign its revoked answers to the end;
# intermediates it may have signed are CAs, not leaves to replace.
NOT_LEAVES = ("ocsp-responder", "intermediate-ca")


@dataclass(frozen=True)
class Declared:
    incident: IncidentRecord
    replacement: AuthorityRecord | None
    renewal_overrides: int
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Outstanding:
    """A certificate under the compromised CA that nothing has replaced yet."""

    serial: str
    names: tuple[str, ...]
    owner: str
    not_after: dt.datetime


@dataclass
class OwnerCount:
    total: int = 0
    replaced: int = 0
    remaining: int = 0


@dataclass
class Progress:
    incident: IncidentRecord
    at: dt.datetime
    total: int = 0
    replaced: int = 0
    revoked: int = 0  # revoked without a replacement (finish, or by hand)
    expired: int = 0  # expired without a replacement
    remaining: list[Outstanding] = field(default_factory=list)
    owners: dict[str, OwnerCount] = field(default_factory=dict)

    @property
    def done(self) -> bool:
        return not self.remaining

    def as_json(self) -> dict[str, Any]:
        incident = self.incident
        return {
            "incident": incident.id,
            "ca": incident.authority,
            "replacement": incident.replacement,
            "reason": incident.reason,
            "status": incident.status,
            "declared_at": _iso(incident.declared_at),
            "deadline": _iso(incident.deadline),
            "finished_at": _iso(incident.finished_at),
            "mttr_seconds": incident.mttr_seconds,
            "elapsed_seconds": (
                (incident.finished_at or self.at) - incident.declared_at
            ).total_seconds(),
            "certificates": self.total,
            "replaced": self.replaced,
            "revoked_unreplaced": self.revoked,
            "expired_unreplaced": self.expired,
            "remaining": len(self.remaining),
            "by_owner": [
                {"owner": owner, **vars(count)} for owner, count in sorted(self.owners.items())
            ],
            "outstanding": [
                {
                    "serial": o.serial,
                    "names": list(o.names),
                    "owner": o.owner,
                    "not_after": _iso(o.not_after),
                }
                for o in self.remaining
            ],
        }


@dataclass(frozen=True)
class Finished:
    incident: IncidentRecord
    leaves_revoked: int
    # When the root is offline and no transcript was given: the ceremony step still to run
    # (the incident stays open until its transcript is imported).
    ceremony_step: str | None = None
    notes: tuple[str, ...] = ()


class IncidentService:
    def __init__(
        self,
        *,
        store: Store,
        incidents: IncidentStore,
        revocations: RevocationStore,
        clock: Clock,
        keys_check: Callable[[AuthorityRecord], None],
        renew_now: Callable[[str], int],
        publish: Callable[[AuthorityRecord], list[str]],
        revoker: Revoker,
        root_crl: Callable[[AuthorityRecord, CertificateIssuerPrivateKeyTypes], int],
        importer: CeremonyImporter,
    ) -> None:
        self._store = store
        self._incidents = incidents
        self._revocations = revocations
        self._clock = clock
        self._keys_check = keys_check
        self._renew_now = renew_now
        self._publish = publish
        self._revoker = revoker
        self._root_crl = root_crl
        self._importer = importer

    def _now(self) -> dt.datetime:
        return self._clock.now().replace(microsecond=0)

    # -- declaring -----------------------------------------------------------------------------

    def declare(
        self,
        ca: str,
        *,
        reason: str,
        deadline: dt.timedelta | None = None,
        standby: str | None = None,
    ) -> Declared:
        reason = _incident_reason(reason)
        compromised = self._store.get_authority(ca)
        if compromised.role == "root" or compromised.parent_id is None:
            raise BadInput(
                f"{ca} is a root CA: a compromised root is replaced in trust stores, not rotated "
                "here",
                hint="see docs/incident-runbook.md, 'If the root is compromised'",
            )
        now = self._now()
        existing = [
            i
            for i in self._incidents.list_incidents(open_only=True)
            if i.authority_id == compromised.id
        ]
        if existing:
            return self._attach(existing[0], compromised, standby, now)
        if compromised.status == "revoked":
            raise Conflict(f"CA {ca} is revoked already: it issues nothing")
        if compromised.status == "standby":
            raise Conflict(
                f"CA {ca} is a standby that never issued: revoke it instead",
                hint=f"vouch ca revoke {ca} --reason keyCompromise",
            )
        replacement = self._replacement(compromised, standby, now)
        declared: dict[str, object] = {
            "ca": ca,
            "serial": compromised.serial,
            "reason": reason,
            "replacement": None if replacement is None else replacement.name,
            "deadline": None if deadline is None else (now + deadline).isoformat(),
            "declared_at": now.isoformat(),
        }
        activate = compromised.status == "active" and replacement is not None
        incident = self._incidents.declare(
            authority_id=compromised.id,
            replacement_id=None if replacement is None else replacement.id,
            activate_replacement=activate,
            stop_only=compromised.status == "active" and replacement is None,
            reason=reason,
            at=now,
            deadline=None if deadline is None else now + deadline,
            count_from=now,
            leaf_profiles_excluded=NOT_LEAVES,
            declared=declared,
            new_events=_switch_events(compromised, replacement) if activate else [],
        )
        notes = []
        if replacement is None:
            notes.append(
                f"no CA issues in place of {ca}: issuance under it has stopped and requests "
                "fail until a standby takes over (vouch ca new-intermediate NAME --standby, "
                f"then vouch incident declare --ca {ca} --standby NAME)"
            )
        overrides = self._renew_now(ca)
        return Declared(
            incident=incident,
            replacement=None
            if replacement is None
            else self._store.get_authority(replacement.name),
            renewal_overrides=overrides,
            notes=tuple(notes),
        )

    def _attach(
        self,
        incident: IncidentRecord,
        compromised: AuthorityRecord,
        standby: str | None,
        now: dt.datetime,
    ) -> Declared:
        """An open incident without a replacement gets one (declared again with --standby)."""
        if incident.replacement is not None or standby is None:
            raise Conflict(
                f"incident {incident.id} is already open for CA {compromised.name}"
                + (f" (issuance moved to {incident.replacement})" if incident.replacement else ""),
                hint="vouch incident status shows its progress",
            )
        replacement = self._replacement(compromised, standby, now)
        assert replacement is not None  # a name was given: found or refused
        self._incidents.attach_replacement(
            incident.id,
            authority_id=compromised.id,
            replacement_id=replacement.id,
            at=now,
            new_events=_switch_events(compromised, replacement, incident=incident.id),
        )
        return Declared(
            incident=self._incidents.get(incident.id),
            replacement=self._store.get_authority(replacement.name),
            renewal_overrides=self._renew_now(compromised.name),
        )

    def _replacement(
        self, compromised: AuthorityRecord, standby: str | None, now: dt.datetime
    ) -> AuthorityRecord | None:
        """The standby intermediate that takes over (named, or the one valid longest under the
        same root); a CA already rolled over keeps its successor."""
        authorities = self._store.list_authorities()
        spki = _spki(compromised)
        if standby is None and compromised.status == "retired":
            return None  # rolled over before: its successor issues already
        if standby is not None:
            found = next((a for a in authorities if a.name == standby), None)
            if found is None:
                raise NotFound(f"no CA named {standby!r}", hint="vouch ca list shows the CAs")
            candidates = [found]
            if found.role != "intermediate" or found.status != "standby":
                raise Conflict(
                    f"CA {standby} is a {found.status} {found.role}, not a standby intermediate",
                    hint="prepare one with vouch ca new-intermediate NAME --standby",
                )
        else:
            candidates = [
                a
                for a in authorities
                if a.role == "intermediate"
                and a.status == "standby"
                and a.parent_id == compromised.parent_id
                and a.not_after > now
            ]
            if not candidates:
                return None
        chosen = max(candidates, key=lambda a: a.not_after)
        if chosen.not_after <= now:
            raise Conflict(f"the standby CA {chosen.name} has expired")
        if _spki(chosen) == spki:
            raise Conflict(
                f"the standby CA {chosen.name} has the compromised CA's key: it cannot take over",
                hint="prepare a standby with a new key (vouch ca new-intermediate NAME --standby)",
            )
        # Issuance moves there the moment the incident is recorded: its key must sign now.
        self._keys_check(chosen)
        return chosen

    # -- progress ------------------------------------------------------------------------------

    def find(self, ca: str | None = None, incident_id: int | None = None) -> IncidentRecord:
        """An incident by number, the open one of a CA, or the only open one (else the newest)."""
        if incident_id is not None:
            return self._incidents.get(incident_id)
        found = self._incidents.list_incidents()
        if ca is not None:
            found = [i for i in found if i.authority == ca]
        if not found:
            raise NotFound(
                "no incident" + (f" for CA {ca}" if ca else "") + " was declared",
                hint="vouch incident declare --ca NAME --reason keyCompromise",
            )
        still_open = [i for i in found if i.status == OPEN]
        if len(still_open) > 1:
            raise BadInput(
                f"{len(still_open)} incidents are open ({', '.join(i.authority for i in still_open)})",
                hint="name the CA with --ca",
            )
        return still_open[0] if still_open else found[-1]

    def open_incidents(self) -> list[IncidentRecord]:
        return self._incidents.list_incidents(open_only=True)

    def progress(self, incident: IncidentRecord) -> Progress:
        now = self._clock.now()
        result = Progress(incident=incident, at=now)
        leaves = self._incidents.leaves(
            incident.authority_id,
            not_after_after=incident.declared_at,
            exclude_profiles=NOT_LEAVES,
        )
        # Revoked before the declaration: nothing to replace.
        leaves = [
            leaf
            for leaf in leaves
            if leaf.revoked_at is None or leaf.revoked_at >= incident.declared_at
        ]
        renewed = set(
            self._incidents.names_issued_since(
                incident.declared_at, except_authority=incident.authority_id
            )
        )
        owners = self._incidents.owners(
            [leaf.id for leaf in leaves], [leaf.serial for leaf in leaves]
        )
        for leaf in leaves:
            owner = owners.get(leaf.id, "unknown")
            count = result.owners.setdefault(owner, OwnerCount())
            count.total += 1
            result.total += 1
            if leaf.names and leaf.names <= renewed:
                result.replaced += 1
                count.replaced += 1
            elif leaf.revoked_at is not None:
                result.revoked += 1
            elif leaf.not_after <= now:
                result.expired += 1
            else:
                count.remaining += 1
                result.remaining.append(
                    Outstanding(
                        leaf.serial,
                        tuple(sorted(n.partition(":")[2] for n in leaf.names)),
                        owner,
                        leaf.not_after,
                    )
                )
        return result

    # -- finishing -----------------------------------------------------------------------------

    def finish(
        self,
        incident: IncidentRecord,
        *,
        force: bool = False,
        root_key: CertificateIssuerPrivateKeyTypes | None = None,
        transcript: tuple[bytes, bytes] | None = None,
        leaf_reason: str = "keyCompromise",
    ) -> Finished:
        """Revoke the old leaves, publish, revoke the CA on its root's CRL, block its key and
        close the incident. Each step is recorded as it is done, so running it again after a
        failure (or after the offline root's ceremony) goes on where it stopped."""
        leaf_reason = check_reason(leaf_reason, LEAF_REASONS)
        if incident.status != OPEN:
            raise Conflict(
                f"incident {incident.id} was finished on {_iso(incident.finished_at)} "
                f"(MTTR {incident.mttr_seconds:.0f} s)"
            )
        now = self._now()
        notes: list[str] = []
        compromised = self._store.authority_by_id(incident.authority_id)
        revoked = 0
        if incident.leaves_revoked_at is None:
            progress = self.progress(incident)
            past_deadline = incident.deadline is not None and now >= incident.deadline
            if progress.remaining and not (force or past_deadline):
                raise Conflict(
                    f"{len(progress.remaining)} of {progress.total} certificates under "
                    f"{compromised.name} have not been replaced yet",
                    hint="vouch incident status lists them; wait, or finish with --force "
                    "(their holders lose service until they renew)",
                )
            revoked = self._revoke_leaves(incident, compromised, leaf_reason, now)
            notes += self._publish(compromised)
        # Done only when the CA is revoked and its root's CRL lists it: a run cut short between
        # the two (the root CRL's signing failed, or the process died) signs it now.
        if compromised.status != "revoked" or not self._on_root_crl(compromised):
            step = self._revoke_ca(incident, compromised, root_key, transcript)
            if step is not None:
                return Finished(
                    self._incidents.get(incident.id),
                    revoked,
                    ceremony_step=step,
                    notes=tuple(notes),
                )
        return Finished(self._close(incident, compromised, revoked), revoked, notes=tuple(notes))

    def _revoke_leaves(
        self, incident: IncidentRecord, compromised: AuthorityRecord, reason: str, now: dt.datetime
    ) -> int:
        # Every unrevoked certificate still valid, whenever issued: one issued in the instant of
        # the declaration (an in-flight request) is revoked with the rest.
        leaves = [
            leaf
            for leaf in self._incidents.leaves(
                compromised.id, not_after_after=now, exclude_profiles=NOT_LEAVES
            )
            if leaf.revoked_at is None
        ]
        events = [
            NewEvent(
                "certificate.revoked",
                leaf.serial,
                {
                    "ca": compromised.name,
                    "serial": leaf.serial,
                    "reason": reason,
                    "revoked_at": now.isoformat(),
                    "invalidity_date": None,
                    "incident": incident.id,
                },
            )
            for leaf in leaves
        ]
        events.append(
            NewEvent(
                "incident.leaves-revoked",
                str(incident.id),
                {
                    "incident": incident.id,
                    "ca": compromised.name,
                    "count": len(leaves),
                    "reason": reason,
                },
            )
        )
        return self._incidents.revoke_leaves(
            incident_id=incident.id,
            authority_id=compromised.id,
            revocations=[LeafRevocation(leaf.id, leaf.serial) for leaf in leaves],
            reason=reason,
            at=now,
            new_events=events,
        )

    def _revoke_ca(
        self,
        incident: IncidentRecord,
        compromised: AuthorityRecord,
        root_key: CertificateIssuerPrivateKeyTypes | None,
        transcript: tuple[bytes, bytes] | None,
    ) -> str | None:
        """The CA revoked and on its root's CRL; returns the ceremony step when that must happen
        offline. Each part is skipped when done, so a run cut short goes on where it stopped."""
        assert compromised.parent_id is not None
        root = self._store.authority_by_id(compromised.parent_id)
        reason = "keyCompromise" if incident.reason == "keyCompromise" else "cACompromise"
        if (
            compromised.status != "revoked"
            and self._revoker.find(compromised.serial, root.name).revoked_at is not None
        ):
            # ``revoke_ca`` was cut short after the CA's certificate was revoked: the CA's own
            # revocation is completed here (no key needed), with the reason and time recorded.
            self._revoker.revoke_ca(compromised.name, reason)
            compromised = self._store.get_authority(compromised.name)
        if transcript is not None:
            data, signature = transcript
            _check_transcript_revokes(data, compromised)
            self._importer.import_transcript(data, signature)
            if self._store.get_authority(compromised.name).status != "revoked":
                raise Conflict(
                    f"the imported root CRL does not revoke CA {compromised.name}",
                    hint=f"sign one with --revoke {compromised.serial}:{reason}",
                )
            return None
        if root_key is None:
            return (
                "On the offline root's ceremony machine:\n"
                f"  vouch ceremony sign-crl --dir ROOT_DIR --operator NAME "
                f"--revoke {compromised.serial}:{reason}\n"
                "then, here, with the transcript it writes:\n"
                f"  vouch incident finish --ca {compromised.name} "
                "--root-crl-transcript transcripts/NNNN-sign-crl.json"
            )
        if compromised.status != "revoked":
            self._revoker.revoke_ca(compromised.name, reason)
        checkpoint("incident.before-root-crl")  # crash-safety tests: CA revoked, root CRL not
        self._root_crl(root, root_key)
        return None

    def _on_root_crl(self, compromised: AuthorityRecord) -> bool:
        """Whether the root's newest CRL lists the revoked CA (or was made after every
        revocation the root recorded, the CA's among them: an expired CA certificate may have
        left the CRL)."""
        assert compromised.parent_id is not None
        newest = self._revocations.latest_crl(compromised.parent_id, FULL)
        if newest is None:
            return False
        if newest.covers_revision >= self._revocations.revision(compromised.parent_id):
            return True
        crl = x509.load_der_x509_crl(newest.der)
        listed = crl.get_revoked_certificate_by_serial_number(parse_serial(compromised.serial))
        return listed is not None

    def _close(
        self, incident: IncidentRecord, compromised: AuthorityRecord, revoked_now: int
    ) -> IncidentRecord:
        now = self._clock.now()
        mttr = (now - incident.declared_at).total_seconds()
        spki = _spki(compromised)
        block = None
        events = self._ceremony_revocation_event(compromised)
        if not self._incidents.key_blocked(spki):  # an offline root's CRL revoked it
            block = (spki, incident.reason, f"CA {compromised.name}")
            events.append(
                NewEvent(
                    "key.blocked",
                    spki,
                    {"spki_sha256": spki, "serial": compromised.serial, "reason": incident.reason},
                )
            )
        progress = self.progress(incident)
        events.append(
            NewEvent(
                "incident.finished",
                str(incident.id),
                {
                    "incident": incident.id,
                    "ca": compromised.name,
                    "replacement": incident.replacement,
                    "reason": incident.reason,
                    "mttr_seconds": round(mttr, 3),
                    "declared_at": incident.declared_at.isoformat(),
                    "certificates": progress.total,
                    "replaced": progress.replaced,
                    "revoked_unreplaced": progress.revoked,
                    "expired_unreplaced": progress.expired,
                },
            )
        )
        return self._incidents.finish(
            incident.id,
            at=now.replace(microsecond=0),
            mttr_seconds=round(mttr, 3),
            block_key=block,
            new_events=events,
        )


    def _ceremony_revocation_event(self, compromised: AuthorityRecord) -> list[NewEvent]:
        """The CA certificate's ``certificate.revoked`` when an imported ceremony CRL revoked it
        without one (the audit log must hold an entry for every revocation)."""
        assert compromised.parent_id is not None
        root = self._store.authority_by_id(compromised.parent_id)
        if self._incidents.revocation_logged(root.name, compromised.serial):
            return []
        [row] = self._store.certificates(
            CertificateQuery(authority=root.name, serial=compromised.serial)
        )
        if row.revoked_at is None:
            return []
        return [
            NewEvent(
                "certificate.revoked",
                row.serial,
                {
                    "ca": root.name,
                    "serial": row.serial,
                    "reason": row.revocation_reason,
                    "revoked_at": row.revoked_at.isoformat(),
                    "invalidity_date": None,
                    "source": "root CRL imported from a ceremony",
                },
            )
        ]


def _incident_reason(reason: str) -> str:
    by_lower = {r.lower(): r for r in INCIDENT_REASONS}
    found = by_lower.get(reason.lower())
    if found is None:
        raise BadInput(
            f"an incident is declared for keyCompromise or cACompromise, not {reason!r}",
            hint="for a planned change of CA use vouch ca rollover",
        )
    return found


def _switch_events(
    old: AuthorityRecord, new: AuthorityRecord | None, *, incident: int | None = None
) -> list[NewEvent]:
    """The same events ``vouch ca activate NEW --replaces OLD`` records."""
    if new is None:
        return []
    extra: dict[str, object] = {} if incident is None else {"incident": incident}
    events = [
        NewEvent("ca.activated", new.name, {"name": new.name, "serial": new.serial, **extra}),
        NewEvent(
            "ca.rolled-over",
            old.name,
            {
                "old": old.name,
                "old_serial": old.serial,
                "new": new.name,
                "new_serial": new.serial,
                "old_not_after": old.not_after.isoformat(),
                **extra,
            },
        ),
    ]
    if old.key_backend != new.key_backend:
        events.append(
            NewEvent(
                "ca.key-backend-changed",
                new.name,
                {
                    "old": old.name,
                    "new": new.name,
                    "old_backend": old.key_backend,
                    "new_backend": new.key_backend,
                    "new_key_ref": new.key_ref,
                },
            )
        )
    return events


def _check_transcript_revokes(data: bytes, compromised: AuthorityRecord) -> None:
    """Refuse, before anything is imported, a ceremony transcript whose root CRL does not list
    the CA (a malformed transcript is left to the importer, which explains what is wrong)."""
    try:
        transcript = json.loads(data)
        crls = [
            x509.load_der_x509_crl(base64.b64decode(a["der"], validate=True))
            for a in transcript["artifacts"]
            if a.get("type") == "crl"
        ]
    except (ValueError, KeyError, TypeError, AttributeError, binascii.Error):
        return
    serial = parse_serial(compromised.serial)
    if not any(crl.get_revoked_certificate_by_serial_number(serial) for crl in crls):
        raise BadInput(
            f"that transcript's root CRL does not list CA {compromised.name} "
            f"(serial {compromised.serial}); nothing was imported",
            hint=f"sign the root CRL with --revoke {compromised.serial}:keyCompromise",
        )


def _spki(record: AuthorityRecord) -> str:
    return spki_sha256(x509.load_der_x509_certificate(record.certificate).public_key())


def _iso(at: dt.datetime | None) -> str | None:
    return None if at is None else at.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")

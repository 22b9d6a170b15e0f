"""ACME state: accounts, used nonces (shared by every node), orders, authorizations, challenges,
EAB keys, renewal overrides and rate-limit counts."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, delete, func, insert, or_, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from vouch.errors import Conflict, NotFound
from vouch.store.engine import Database
from vouch.store.records import NewEvent
from vouch.store.repository import append_events
from vouch.store.tables import (
    acme_accounts,
    acme_authzs,
    acme_challenges,
    acme_domain_issuance,
    acme_eab_keys,
    acme_nonces,
    acme_orders,
    acme_renewal_overrides,
    acme_secrets,
)

# The statements every request runs, built once: SQLAlchemy then finds them in its compiled
# cache without building and hashing a new statement object per request.
_INSERT_NONCE = insert(acme_nonces).values(
    nonce=bindparam("nonce"), expires_at=bindparam("expires_at")
)
_ACCOUNT = select(acme_accounts).where(acme_accounts.c.id == bindparam("id"))
_ORDER = select(acme_orders).where(acme_orders.c.id == bindparam("id"))
_ORDER_AUTHZ_IDS = (
    select(acme_authzs.c.id)
    .where(acme_authzs.c.order_id == bindparam("id"))
    .order_by(acme_authzs.c.id)
)
_ORDER_ACCOUNT = select(acme_orders.c.account_id).where(acme_orders.c.id == bindparam("id"))
_AUTHZ = select(acme_authzs).where(acme_authzs.c.id == bindparam("id"))
_AUTHZ_CHALLENGES = (
    select(acme_challenges)
    .where(acme_challenges.c.authz_id == bindparam("id"))
    .order_by(acme_challenges.c.id)
)
_CHALLENGE = select(acme_challenges).where(acme_challenges.c.id == bindparam("id"))
_INSERT_ORDER = (
    insert(acme_orders)
    .values(
        account_id=bindparam("account"),
        status="pending",
        identifiers=bindparam("identifiers"),
        expires=bindparam("expires"),
        replaces=bindparam("replaces"),
        created_at=bindparam("at"),
    )
    .returning(acme_orders.c.id)
)
_INSERT_AUTHZ = (
    insert(acme_authzs)
    .values(
        order_id=bindparam("order"),
        type=bindparam("kind"),
        value=bindparam("name"),
        wildcard=bindparam("wildcard"),
        status="pending",
        expires=bindparam("expires"),
    )
    .returning(acme_authzs.c.id)
)
_INSERT_CHALLENGE = insert(acme_challenges).values(
    authz_id=bindparam("authz"), type=bindparam("kind"), token=bindparam("token"), status="pending"
)
_COMPLETE_ORDER = (
    update(acme_orders)
    .where(acme_orders.c.id == bindparam("order"))
    .values(status="valid", certificate_id=bindparam("certificate"))
)
_FINISH_AUTHZ = (
    update(acme_authzs)
    .where(acme_authzs.c.id == bindparam("authz"), acme_authzs.c.status == "pending")
    .values(status=bindparam("outcome"), validated_at=bindparam("at"))
)
_ORDER_INVALID_IF_PENDING = (
    update(acme_orders)
    .where(acme_orders.c.id == bindparam("order"), acme_orders.c.status == "pending")
    .values(status="invalid", error=bindparam("problem"))
)
_OTHER_AUTHZ_NOT_VALID = (
    select(acme_authzs.c.id)
    .where(acme_authzs.c.order_id == acme_orders.c.id, acme_authzs.c.status != "valid")
    .exists()
)
_DEACTIVATED = {
    "type": "urn:ietf:params:acme:error:unauthorized",
    "detail": "an authorization of this order was deactivated",
}
_ORDER_READY_IF_ALL_VALID = (
    update(acme_orders)
    .where(
        acme_orders.c.id == bindparam("order"),
        acme_orders.c.status == "pending",
        ~_OTHER_AUTHZ_NOT_VALID,
    )
    .values(status="ready")
)


@dataclass(frozen=True)
class Account:
    id: int
    thumbprint: str
    jwk: dict[str, Any]
    status: str
    contact: list[str]
    created_at: dt.datetime


@dataclass(frozen=True)
class Challenge:
    id: int
    authz_id: int
    type: str
    token: str
    status: str
    validated_at: dt.datetime | None
    error: dict[str, Any] | None
    # When the validation now processing was claimed (the claim's fencing token; None for a
    # claim made before vouch stamped them); None unless processing.
    processing_started: dt.datetime | None = None


@dataclass(frozen=True)
class Authz:
    id: int
    order_id: int
    type: str
    value: str
    wildcard: bool
    status: str
    expires: dt.datetime
    validated_at: dt.datetime | None
    challenges: tuple[Challenge, ...] = ()


@dataclass(frozen=True)
class Order:
    id: int
    account_id: int
    status: str
    identifiers: list[dict[str, str]]
    expires: dt.datetime
    certificate_id: int | None
    error: dict[str, Any] | None
    replaces: str | None
    created_at: dt.datetime
    authz_ids: tuple[int, ...] = ()
    finalize_started: dt.datetime | None = None


@dataclass(frozen=True)
class EabKey:
    key_id: str
    sealed: bytes | None  # None once bound (the key is single-use) or revoked
    note: str
    created_at: dt.datetime
    revoked_at: dt.datetime | None
    account_id: int | None
    bound_at: dt.datetime | None

    @property
    def status(self) -> str:
        if self.revoked_at is not None:
            return "revoked"
        return "bound" if self.account_id is not None else "unused"


class AcmeStore:
    def __init__(self, db: Database) -> None:
        self.db = db
        # An insert that skips a nonce already there (returning no row) instead of failing the
        # transaction, so many requests' nonces can be used in one transaction.
        self._insert_nonce_once: Any = None
        if db.dialect in ("sqlite", "postgresql"):
            dialect_insert = sqlite_insert if db.dialect == "sqlite" else postgresql_insert
            self._insert_nonce_once = (
                dialect_insert(acme_nonces)
                .values(nonce=bindparam("nonce"), expires_at=bindparam("expires_at"))
                .on_conflict_do_nothing(index_elements=[acme_nonces.c.nonce])
                .returning(acme_nonces.c.nonce)
            )

    # -- nonces ----------------------------------------------------------------------------------

    def secret(self, name: str, make: Callable[[], bytes]) -> bytes:
        """A secret every node shares (made once, by whichever node asks first)."""
        with self.db.read() as conn:
            value = conn.execute(
                select(acme_secrets.c.value).where(acme_secrets.c.name == name)
            ).scalar()
        if value is None:
            # Conflict: another node made it first, and that one is read below.
            with contextlib.suppress(Conflict), self.db.begin() as conn:
                conn.execute(insert(acme_secrets).values(name=name, value=make()))
            with self.db.read() as conn:
                value = conn.execute(
                    select(acme_secrets.c.value).where(acme_secrets.c.name == name)
                ).scalar_one()
        return bytes(value)

    def use_nonce(self, nonce: str, expires: dt.datetime) -> bool:
        """True the first time any node sees this nonce (kept until it expires)."""
        try:
            # Not waiting for the disk: a power loss may forget that a nonce was used (the
            # JWS it protected still needs the account's key), never that an order was issued.
            with self.db.begin(durable=False) as conn:
                conn.execute(_INSERT_NONCE, {"nonce": nonce, "expires_at": expires})
        except Conflict:
            return False
        return True

    def use_nonce_reading_account(
        self, nonce: str, expires: dt.datetime, account_id: int
    ) -> tuple[bool, Account | None]:
        """``use_nonce`` and ``account`` in one transaction: (first use, the account or None)."""
        try:
            with self.db.begin(durable=False) as conn:
                conn.execute(_INSERT_NONCE, {"nonce": nonce, "expires_at": expires})
                row = conn.execute(_ACCOUNT, {"id": account_id}).first()
        except Conflict:
            return False, None
        return True, None if row is None else _account(row)

    def use_nonces_reading_accounts(
        self, uses: Sequence[tuple[str, dt.datetime, int]]
    ) -> list[tuple[bool, Account | None]]:
        """``use_nonce_reading_account`` for many (nonce, expiry, account id) at once, in one
        transaction (one commit for the requests that arrived together)."""
        if self._insert_nonce_once is None:
            return [self.use_nonce_reading_account(*use) for use in uses]
        found: list[tuple[bool, Account | None]] = []
        with self.db.begin(durable=False) as conn:
            for nonce, expires, account_id in uses:
                inserted = conn.execute(
                    self._insert_nonce_once, {"nonce": nonce, "expires_at": expires}
                ).first()
                fresh = inserted is not None
                row = conn.execute(_ACCOUNT, {"id": account_id}).first() if fresh else None
                found.append((fresh, None if row is None else _account(row)))
        return found

    def drop_expired_nonces(self, now: dt.datetime) -> int:
        with self.db.begin() as conn:
            return int(
                conn.execute(delete(acme_nonces).where(acme_nonces.c.expires_at <= now)).rowcount
            )

    # -- accounts --------------------------------------------------------------------------------

    def add_account(
        self,
        thumbprint: str,
        jwk: dict[str, Any],
        contact: list[str],
        at: dt.datetime,
        *,
        eab_key_id: str | None = None,
    ) -> Account:
        """A new account; with ``eab_key_id`` the key is bound to it in the same transaction
        (and its sealed copy erased), or nothing happens if another account took it first."""
        with self.db.begin() as conn:
            account_id = conn.execute(
                insert(acme_accounts)
                .values(
                    thumbprint=thumbprint,
                    jwk=json.dumps(jwk, sort_keys=True),
                    status="valid",
                    contact=json.dumps(contact),
                    created_at=at,
                )
                .returning(acme_accounts.c.id)
            ).scalar_one()
            if eab_key_id is not None:
                bound = conn.execute(
                    update(acme_eab_keys)
                    .where(
                        acme_eab_keys.c.key_id == eab_key_id,
                        acme_eab_keys.c.account_id.is_(None),
                        acme_eab_keys.c.revoked_at.is_(None),
                    )
                    .values(account_id=account_id, bound_at=at, hmac_sealed=None)
                ).rowcount
                if bound != 1:
                    raise Conflict(f"the EAB key {eab_key_id} is already bound or revoked")
            data: dict[str, object] = {"thumbprint": thumbprint}
            if eab_key_id is not None:
                data["eab_key_id"] = eab_key_id
            append_events(conn, at, [NewEvent("acme.account-created", str(account_id), data)])
        return self.account(int(account_id))

    def account(self, account_id: int) -> Account:
        with self.db.read() as conn:
            row = conn.execute(_ACCOUNT, {"id": account_id}).first()
        if row is None:
            raise NotFound(f"no ACME account {account_id}")
        return _account(row)

    def account_by_thumbprint(self, thumbprint: str) -> Account | None:
        with self.db.read() as conn:
            row = conn.execute(
                select(acme_accounts).where(acme_accounts.c.thumbprint == thumbprint)
            ).first()
        return None if row is None else _account(row)

    def update_account(self, account_id: int, **values: Any) -> Account:
        if "contact" in values:
            values["contact"] = json.dumps(values["contact"])
        if "jwk" in values:
            values["jwk"] = json.dumps(values["jwk"], sort_keys=True)
        with self.db.begin() as conn:
            conn.execute(
                update(acme_accounts).where(acme_accounts.c.id == account_id).values(**values)
            )
        return self.account(account_id)

    def change_key(
        self, account_id: int, thumbprint: str, jwk: dict[str, Any], at: dt.datetime
    ) -> None:
        with self.db.begin() as conn:
            taken = conn.execute(
                select(acme_accounts.c.id).where(acme_accounts.c.thumbprint == thumbprint)
            ).first()
            if taken is not None:
                raise Conflict(f"another account uses this key (account {taken.id})")
            conn.execute(
                update(acme_accounts)
                .where(acme_accounts.c.id == account_id)
                .values(thumbprint=thumbprint, jwk=json.dumps(jwk, sort_keys=True))
            )
            append_events(
                conn,
                at,
                [NewEvent("acme.key-changed", str(account_id), {"thumbprint": thumbprint})],
            )

    # -- orders ----------------------------------------------------------------------------------

    def add_order(
        self,
        *,
        account_id: int,
        identifiers: list[dict[str, str]],
        expires: dt.datetime,
        replaces: str | None,
        at: dt.datetime,
        challenge_types: list[str],
        tokens: list[list[str]],
    ) -> Order:
        # A power loss may forget a new order (the client makes another), so no disk wait.
        expires, at = expires.astimezone(dt.UTC), at.astimezone(dt.UTC)
        authz_ids: list[int] = []
        with self.db.begin(durable=False) as conn:
            order_id = conn.execute(
                _INSERT_ORDER,
                {"account": account_id, "identifiers": json.dumps(identifiers),
                 "expires": expires, "replaces": replaces, "at": at},
            ).scalar_one()  # fmt: skip
            challenges: list[dict[str, Any]] = []
            for identifier, authz_tokens in zip(identifiers, tokens, strict=True):
                value = identifier["value"]
                wildcard = value.startswith("*.")
                authz_id = conn.execute(
                    _INSERT_AUTHZ,
                    {"order": order_id, "kind": identifier["type"],
                     "name": value.removeprefix("*."), "wildcard": int(wildcard),
                     "expires": expires},
                ).scalar_one()  # fmt: skip
                authz_ids.append(int(authz_id))
                # A wildcard is proven by DNS only (RFC 8555 8.4); an IP address never by DNS
                # (RFC 8738 7: a TXT record says nothing about who holds the address).
                if wildcard:
                    kinds = ["dns-01"]
                elif identifier["type"] == "ip":
                    kinds = [k for k in challenge_types if k != "dns-01"]
                else:
                    kinds = list(challenge_types)
                challenges.extend(
                    {"authz": authz_id, "kind": kind, "token": token}
                    for kind, token in zip(kinds, authz_tokens, strict=False)
                )
            conn.execute(_INSERT_CHALLENGE, challenges)
        # What was just written, without reading it back.
        return Order(
            id=int(order_id),
            account_id=account_id,
            status="pending",
            identifiers=identifiers,
            expires=expires,
            certificate_id=None,
            error=None,
            replaces=replaces,
            created_at=at,
            authz_ids=tuple(authz_ids),
        )

    def order(self, order_id: int) -> Order:
        with self.db.read() as conn:
            row = conn.execute(_ORDER, {"id": order_id}).first()
            if row is None:
                raise NotFound(f"no ACME order {order_id}")
            authz_ids = tuple(int(r[0]) for r in conn.execute(_ORDER_AUTHZ_IDS, {"id": order_id}))
        return _order(row, authz_ids)

    def order_account_id(self, order_id: int) -> int:
        """The account an order belongs to (an ownership check needs nothing else)."""
        with self.db.read() as conn:
            found = conn.execute(_ORDER_ACCOUNT, {"id": order_id}).scalar()
        if found is None:
            raise NotFound(f"no ACME order {order_id}")
        return int(found)

    def orders_of(self, account_id: int) -> list[int]:
        with self.db.read() as conn:
            return [
                int(r[0])
                for r in conn.execute(
                    select(acme_orders.c.id)
                    .where(acme_orders.c.account_id == account_id)
                    .order_by(acme_orders.c.id)
                )
            ]

    def set_order(self, order_id: int, **values: Any) -> None:
        if "error" in values and values["error"] is not None:
            values["error"] = json.dumps(values["error"])
        with self.db.begin() as conn:
            conn.execute(update(acme_orders).where(acme_orders.c.id == order_id).values(**values))

    def claim_finalize(self, order_id: int, at: dt.datetime) -> bool:
        """Move an order from ready to processing, once (a second finalize loses). Issuance
        commits durably right after, which makes this durable too; lost alone, the order is
        simply ready again."""
        with self.db.begin(durable=False) as conn:
            return (
                conn.execute(
                    update(acme_orders)
                    .where(
                        acme_orders.c.id == order_id,
                        acme_orders.c.status == "ready",
                        ~_OTHER_AUTHZ_NOT_VALID,  # every authorization still valid
                    )
                    .values(status="processing", finalize_started=at)
                ).rowcount
                == 1
            )

    def release_stale_finalize(self, order_id: int, started_before: dt.datetime) -> bool:
        """An order left processing by a finalization that began before ``started_before``
        (its node died, or the store failed before the order was set back) is ready again."""
        with self.db.begin() as conn:
            return (
                conn.execute(
                    update(acme_orders)
                    .where(
                        acme_orders.c.id == order_id,
                        acme_orders.c.status == "processing",
                        or_(
                            acme_orders.c.finalize_started.is_(None),
                            acme_orders.c.finalize_started < started_before,
                        ),
                    )
                    .values(status="ready", finalize_started=None)
                ).rowcount
                == 1
            )

    # -- authorizations and challenges -------------------------------------------------------------

    def authz(self, authz_id: int) -> Authz:
        with self.db.read() as conn:
            row = conn.execute(_AUTHZ, {"id": authz_id}).first()
            if row is None:
                raise NotFound(f"no ACME authorization {authz_id}")
            challenges = tuple(
                _challenge(c) for c in conn.execute(_AUTHZ_CHALLENGES, {"id": authz_id})
            )
        return _authz(row, challenges)

    def challenge(self, challenge_id: int) -> Challenge:
        with self.db.read() as conn:
            row = conn.execute(_CHALLENGE, {"id": challenge_id}).first()
        if row is None:
            raise NotFound(f"no ACME challenge {challenge_id}")
        return _challenge(row)

    # A challenge's validated_at is when it was validated once valid, and when its validation
    # was claimed while it is processing (a column the schema already had, empty until then).
    def start_challenge(
        self, challenge_id: int, at: dt.datetime, *, stale_before: dt.datetime | None = None
    ) -> bool:
        """pending -> processing, claimed at ``at``; with ``stale_before``, also a challenge
        whose validation was claimed before then and never finished (its node died). One
        caller wins: the others' conditional update finds the row claimed anew. Lost in a power
        loss, the challenge is as it was and the client asks again."""
        claimable = acme_challenges.c.status == "pending"
        if stale_before is not None:
            claimable = or_(
                claimable,
                (acme_challenges.c.status == "processing")
                & or_(
                    acme_challenges.c.validated_at.is_(None),
                    acme_challenges.c.validated_at < stale_before,
                ),
            )
        with self.db.begin(durable=False) as conn:
            return (
                conn.execute(
                    update(acme_challenges)
                    .where(acme_challenges.c.id == challenge_id, claimable)
                    .values(status="processing", validated_at=at)
                ).rowcount
                == 1
            )

    def finish_challenge(
        self,
        challenge_id: int,
        *,
        started: dt.datetime | None,
        ok: bool,
        at: dt.datetime,
        error: dict[str, Any] | None,
    ) -> Challenge | None:
        """Record a validation: the challenge, its authorization, and the order's readiness;
        return the challenge as recorded. Only for the claim made at ``started`` (None: a claim
        from before claims were stamped): None, and nothing recorded, if the challenge was
        claimed again since (this validation outlived its bound and another node took over) or
        is no longer processing.

        The commit does not wait for the disk: a validation a power loss forgets leaves the
        challenge to be asked again, and nothing is issued on it before a durable commit (the
        certificate's), which, the log being sequential, makes this one durable too."""
        claim = (
            acme_challenges.c.validated_at.is_(None)
            if started is None
            else acme_challenges.c.validated_at == started
        )
        document = None if error is None else json.dumps(error)
        with self.db.begin(durable=False) as conn:
            challenge = conn.execute(
                update(acme_challenges)
                .where(
                    acme_challenges.c.id == challenge_id,
                    acme_challenges.c.status == "processing",
                    claim,
                )
                .values(
                    status="valid" if ok else "invalid",
                    validated_at=at if ok else None,
                    error=document,
                )
                .returning(*acme_challenges.c)
            ).first()
            if challenge is None:
                return None
            authz = conn.execute(_AUTHZ, {"id": challenge.authz_id}).first()
            assert authz is not None
            if authz.status == "pending":
                conn.execute(
                    _FINISH_AUTHZ,
                    {"authz": authz.id, "outcome": "valid" if ok else "invalid",
                     "at": at if ok else None},
                )  # fmt: skip
            if not ok:
                conn.execute(
                    _ORDER_INVALID_IF_PENDING, {"order": authz.order_id, "problem": document}
                )
            else:
                # Ready once no other authorization of the order is left unvalidated.
                conn.execute(_ORDER_READY_IF_ALL_VALID, {"order": authz.order_id})
            append_events(
                conn,
                at,
                [
                    NewEvent(
                        "acme.validation",
                        f"{authz.type}:{authz.value}",
                        {
                            "challenge": challenge.type,
                            "order": int(authz.order_id),
                            "valid": ok,
                            "error": None if error is None else error.get("detail"),
                        },
                    )
                ],
            )
        return _challenge(challenge)

    def deactivate_authz(self, authz_id: int) -> None:
        """Deactivate an authorization; its order, if not yet finalized, becomes invalid in the
        same transaction: a deactivated authorization never suffices for issuance (RFC 8555
        7.5.2)."""
        with self.db.begin() as conn:
            order_id = conn.execute(
                update(acme_authzs)
                .where(acme_authzs.c.id == authz_id, acme_authzs.c.status.in_(["pending", "valid"]))
                .values(status="deactivated")
                .returning(acme_authzs.c.order_id)
            ).scalar()
            if order_id is not None:
                conn.execute(
                    update(acme_orders)
                    .where(
                        acme_orders.c.id == order_id,
                        acme_orders.c.status.in_(["pending", "ready"]),
                    )
                    .values(status="invalid", error=json.dumps(_DEACTIVATED))
                )

    def valid_names_of(self, account_id: int, now: dt.datetime) -> set[tuple[str, str]]:
        """Identifiers the account holds a valid, unexpired authorization for (revocation)."""
        statement = (
            select(acme_authzs.c.type, acme_authzs.c.value)
            .join(acme_orders, acme_authzs.c.order_id == acme_orders.c.id)
            .where(
                acme_orders.c.account_id == account_id,
                acme_authzs.c.status == "valid",
                acme_authzs.c.expires > now,
            )
        )
        with self.db.read() as conn:
            return {(str(t), str(v)) for t, v in conn.execute(statement)}

    def order_for_certificate(self, certificate_id: int) -> Order | None:
        with self.db.read() as conn:
            row = conn.execute(
                select(acme_orders.c.id).where(acme_orders.c.certificate_id == certificate_id)
            ).first()
        return None if row is None else self.order(int(row[0]))

    # -- external account binding keys -------------------------------------------------------------

    def add_eab_key(self, key_id: str, sealed: bytes, note: str, at: dt.datetime) -> None:
        with self.db.begin() as conn:
            conn.execute(
                insert(acme_eab_keys).values(
                    key_id=key_id, hmac_sealed=sealed, note=note, created_at=at
                )
            )
            append_events(
                conn, at, [NewEvent("acme.eab-key-created", key_id, {"note": note})]
            )

    def eab_key(self, key_id: str) -> EabKey | None:
        with self.db.read() as conn:
            row = conn.execute(
                select(acme_eab_keys).where(acme_eab_keys.c.key_id == key_id)
            ).first()
        return None if row is None else _eab(row)

    def eab_keys(self) -> list[EabKey]:
        with self.db.read() as conn:
            rows = conn.execute(select(acme_eab_keys).order_by(acme_eab_keys.c.created_at))
            return [_eab(r) for r in rows]

    def revoke_eab_key(self, key_id: str, at: dt.datetime) -> EabKey:
        """An unused key can no longer be bound; a bound key's account stays as it is."""
        with self.db.begin() as conn:
            row = conn.execute(
                select(acme_eab_keys).where(acme_eab_keys.c.key_id == key_id)
            ).first()
            if row is None:
                raise NotFound(f"no EAB key {key_id}")
            if row.revoked_at is not None:
                raise Conflict(f"the EAB key {key_id} is already revoked")
            conn.execute(
                update(acme_eab_keys)
                .where(acme_eab_keys.c.key_id == key_id)
                .values(revoked_at=at, hmac_sealed=None)
            )
            append_events(conn, at, [NewEvent("acme.eab-key-revoked", key_id, {})])
        found = self.eab_key(key_id)
        assert found is not None
        return found

    # -- rate limits (counted from the store, so every node sees the same counts) -------------------

    def orders_since(self, account_id: int, since: dt.datetime) -> tuple[int, dt.datetime | None]:
        """How many orders the account created since ``since``, and the oldest of them."""
        with self.db.read() as conn:
            row = conn.execute(
                select(func.count(), func.min(acme_orders.c.created_at)).where(
                    acme_orders.c.account_id == account_id, acme_orders.c.created_at > since
                )
            ).one()
        return int(row[0]), row[1]

    def issued_for_domain_since(
        self, domain: str, since: dt.datetime
    ) -> tuple[int, dt.datetime | None]:
        with self.db.read() as conn:
            row = conn.execute(
                select(func.count(), func.min(acme_domain_issuance.c.at)).where(
                    acme_domain_issuance.c.domain == domain, acme_domain_issuance.c.at > since
                )
            ).one()
        oldest = row[1]
        if oldest is not None and oldest.tzinfo is None:
            oldest = oldest.replace(tzinfo=dt.UTC)  # min() loses the column type on SQLite
        return int(row[0]), oldest

    def complete_order(
        self, order_id: int, certificate_id: int, domains: set[str], at: dt.datetime
    ) -> None:
        """The order is valid with its certificate; the issuance counts for its domains."""
        self.complete_orders([(order_id, certificate_id, domains)], at)

    def complete_orders(
        self, completed: list[tuple[int, int, set[str]]], at: dt.datetime
    ) -> None:
        """``complete_order`` for many (order id, certificate id, domains) in one transaction."""
        if not completed:
            return
        with self.db.begin() as conn:
            conn.execute(
                _COMPLETE_ORDER,
                [{"order": o, "certificate": c} for o, c, _ in completed],
            )
            counted = [
                {"domain": d, "certificate_id": certificate_id, "at": at}
                for _, certificate_id, domains in completed
                for d in domains
            ]
            if counted:
                conn.execute(insert(acme_domain_issuance), counted)

    # -- renewal information (RFC 9773) ------------------------------------------------------------

    def orders_replacing(self, cert_id: str) -> list[tuple[int, str]]:
        """(order id, status) of the orders whose ``replaces`` names this certificate."""
        with self.db.read() as conn:
            return [
                (int(r.id), str(r.status))
                for r in conn.execute(
                    select(acme_orders.c.id, acme_orders.c.status).where(
                        acme_orders.c.replaces == cert_id
                    )
                )
            ]

    def add_renewal_override(
        self,
        *,
        certificate_id: int | None,
        authority_id: int | None,
        issued_before: dt.datetime,
        window: tuple[dt.datetime, dt.datetime],
        at: dt.datetime,
        subject: str,
    ) -> None:
        with self.db.begin() as conn:
            conn.execute(
                insert(acme_renewal_overrides).values(
                    certificate_id=certificate_id,
                    authority_id=authority_id,
                    issued_before=issued_before,
                    window_start=window[0],
                    window_end=window[1],
                    created_at=at,
                )
            )
            append_events(
                conn,
                at,
                [
                    NewEvent(
                        "acme.renew-now",
                        subject,
                        {"certificate_id": certificate_id, "authority_id": authority_id},
                    )
                ],
            )

    def renewal_override(
        self, certificate_id: int, authority_id: int, not_before: dt.datetime
    ) -> tuple[dt.datetime, dt.datetime] | None:
        """The latest window forced on this certificate, by itself or through its issuer."""
        with self.db.read() as conn:
            row = conn.execute(
                select(acme_renewal_overrides.c.window_start, acme_renewal_overrides.c.window_end)
                .where(
                    or_(
                        acme_renewal_overrides.c.certificate_id == certificate_id,
                        (acme_renewal_overrides.c.authority_id == authority_id)
                        & (acme_renewal_overrides.c.issued_before >= not_before),
                    )
                )
                .order_by(acme_renewal_overrides.c.id.desc())
                .limit(1)
            ).first()
        return None if row is None else (row[0], row[1])


def _eab(row: Any) -> EabKey:
    m = row._mapping
    sealed = m["hmac_sealed"]
    return EabKey(
        key_id=m["key_id"],
        sealed=None if sealed is None else bytes(sealed),
        note=m["note"],
        created_at=m["created_at"],
        revoked_at=m["revoked_at"],
        account_id=m["account_id"],
        bound_at=m["bound_at"],
    )


def _account(row: Any) -> Account:
    m = row._mapping
    return Account(
        id=int(m["id"]),
        thumbprint=m["thumbprint"],
        jwk=json.loads(m["jwk"]),
        status=m["status"],
        contact=json.loads(m["contact"]),
        created_at=m["created_at"],
    )


def _order(row: Any, authz_ids: tuple[int, ...]) -> Order:
    m = row._mapping
    return Order(
        id=int(m["id"]),
        account_id=int(m["account_id"]),
        status=m["status"],
        identifiers=json.loads(m["identifiers"]),
        expires=m["expires"],
        certificate_id=m["certificate_id"],
        error=json.loads(m["error"]) if m["error"] else None,
        replaces=m["replaces"],
        created_at=m["created_at"],
        authz_ids=authz_ids,
        finalize_started=m["finalize_started"],
    )


def _authz(row: Any, challenges: tuple[Challenge, ...]) -> Authz:
    m = row._mapping
    return Authz(
        id=int(m["id"]),
        order_id=int(m["order_id"]),
        type=m["type"],
        value=m["value"],
        wildcard=bool(m["wildcard"]),
        status=m["status"],
        expires=m["expires"],
        validated_at=m["validated_at"],
        challenges=challenges,
    )


def _challenge(row: Any) -> Challenge:
    m = row._mapping
    processing = m["status"] == "processing"
    return Challenge(
        id=int(m["id"]),
        authz_id=int(m["authz_id"]),
        type=m["type"],
        token=m["token"],
        status=m["status"],
        validated_at=None if processing else m["validated_at"],
        error=json.loads(m["error"]) if m["error"] else None,
        processing_started=m["validated_at"] if processing else None,
    )

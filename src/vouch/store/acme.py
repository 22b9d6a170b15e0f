"""ACME state: accounts, nonces (shared by every node), orders, authorizations, challenges."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, insert, select, update

from vouch.errors import Conflict, NotFound
from vouch.store.engine import Database
from vouch.store.records import NewEvent
from vouch.store.repository import append_events
from vouch.store.tables import (
    acme_accounts,
    acme_authzs,
    acme_challenges,
    acme_nonces,
    acme_orders,
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


class AcmeStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    # -- nonces ----------------------------------------------------------------------------------

    def add_nonce(self, nonce: str, expires: dt.datetime) -> None:
        with self.db.begin() as conn:
            conn.execute(insert(acme_nonces).values(nonce=nonce, expires_at=expires))

    def use_nonce(self, nonce: str, now: dt.datetime) -> bool:
        """True once for a nonce this CA (any node) handed out and that has not expired."""
        with self.db.begin() as conn:
            used = conn.execute(
                delete(acme_nonces).where(
                    acme_nonces.c.nonce == nonce, acme_nonces.c.expires_at > now
                )
            ).rowcount
        return used == 1

    def drop_expired_nonces(self, now: dt.datetime) -> int:
        with self.db.begin() as conn:
            return int(
                conn.execute(delete(acme_nonces).where(acme_nonces.c.expires_at <= now)).rowcount
            )

    # -- accounts --------------------------------------------------------------------------------

    def add_account(
        self, thumbprint: str, jwk: dict[str, Any], contact: list[str], at: dt.datetime
    ) -> Account:
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
            append_events(
                conn,
                at,
                [NewEvent("acme.account-created", str(account_id), {"thumbprint": thumbprint})],
            )
        return self.account(int(account_id))

    def account(self, account_id: int) -> Account:
        with self.db.read() as conn:
            row = conn.execute(
                select(acme_accounts).where(acme_accounts.c.id == account_id)
            ).first()
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
        with self.db.begin() as conn:
            order_id = conn.execute(
                insert(acme_orders)
                .values(
                    account_id=account_id,
                    status="pending",
                    identifiers=json.dumps(identifiers),
                    expires=expires,
                    replaces=replaces,
                    created_at=at,
                )
                .returning(acme_orders.c.id)
            ).scalar_one()
            for identifier, authz_tokens in zip(identifiers, tokens, strict=True):
                value = identifier["value"]
                wildcard = value.startswith("*.")
                authz_id = conn.execute(
                    insert(acme_authzs)
                    .values(
                        order_id=order_id,
                        type=identifier["type"],
                        value=value.removeprefix("*."),
                        wildcard=int(wildcard),
                        status="pending",
                        expires=expires,
                    )
                    .returning(acme_authzs.c.id)
                ).scalar_one()
                # A wildcard is proven by DNS only (RFC 8555 8.4).
                kinds = ["dns-01"] if wildcard else challenge_types
                for kind, token in zip(kinds, authz_tokens, strict=False):
                    conn.execute(
                        insert(acme_challenges).values(
                            authz_id=authz_id, type=kind, token=token, status="pending"
                        )
                    )
        return self.order(int(order_id))

    def order(self, order_id: int) -> Order:
        with self.db.read() as conn:
            row = conn.execute(select(acme_orders).where(acme_orders.c.id == order_id)).first()
            if row is None:
                raise NotFound(f"no ACME order {order_id}")
            authz_ids = tuple(
                int(r[0])
                for r in conn.execute(
                    select(acme_authzs.c.id)
                    .where(acme_authzs.c.order_id == order_id)
                    .order_by(acme_authzs.c.id)
                )
            )
        return _order(row, authz_ids)

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

    def claim_finalize(self, order_id: int) -> bool:
        """Move an order from ready to processing, once (a second finalize loses)."""
        with self.db.begin() as conn:
            return (
                conn.execute(
                    update(acme_orders)
                    .where(acme_orders.c.id == order_id, acme_orders.c.status == "ready")
                    .values(status="processing")
                ).rowcount
                == 1
            )

    # -- authorizations and challenges -------------------------------------------------------------

    def authz(self, authz_id: int) -> Authz:
        with self.db.read() as conn:
            row = conn.execute(select(acme_authzs).where(acme_authzs.c.id == authz_id)).first()
            if row is None:
                raise NotFound(f"no ACME authorization {authz_id}")
            challenges = tuple(
                _challenge(c)
                for c in conn.execute(
                    select(acme_challenges)
                    .where(acme_challenges.c.authz_id == authz_id)
                    .order_by(acme_challenges.c.id)
                )
            )
        return _authz(row, challenges)

    def challenge(self, challenge_id: int) -> Challenge:
        with self.db.read() as conn:
            row = conn.execute(
                select(acme_challenges).where(acme_challenges.c.id == challenge_id)
            ).first()
        if row is None:
            raise NotFound(f"no ACME challenge {challenge_id}")
        return _challenge(row)

    def start_challenge(self, challenge_id: int) -> bool:
        """pending -> processing, once; False if it was already started or finished."""
        with self.db.begin() as conn:
            return (
                conn.execute(
                    update(acme_challenges)
                    .where(
                        acme_challenges.c.id == challenge_id, acme_challenges.c.status == "pending"
                    )
                    .values(status="processing")
                ).rowcount
                == 1
            )

    def finish_challenge(
        self, challenge_id: int, *, ok: bool, at: dt.datetime, error: dict[str, Any] | None
    ) -> None:
        """Record a validation: the challenge, its authorization, and the order's readiness."""
        with self.db.begin() as conn:
            challenge = conn.execute(
                select(acme_challenges).where(acme_challenges.c.id == challenge_id)
            ).first()
            if challenge is None:
                return
            conn.execute(
                update(acme_challenges)
                .where(acme_challenges.c.id == challenge_id)
                .values(
                    status="valid" if ok else "invalid",
                    validated_at=at if ok else None,
                    error=None if error is None else json.dumps(error),
                )
            )
            authz = conn.execute(
                select(acme_authzs).where(acme_authzs.c.id == challenge.authz_id)
            ).first()
            assert authz is not None
            conn.execute(
                update(acme_authzs)
                .where(acme_authzs.c.id == authz.id, acme_authzs.c.status == "pending")
                .values(status="valid" if ok else "invalid", validated_at=at if ok else None)
            )
            statuses = [
                r[0]
                for r in conn.execute(
                    select(acme_authzs.c.status).where(acme_authzs.c.order_id == authz.order_id)
                )
            ]
            if not ok:
                conn.execute(
                    update(acme_orders)
                    .where(acme_orders.c.id == authz.order_id, acme_orders.c.status == "pending")
                    .values(status="invalid", error=json.dumps(error) if error else None)
                )
            elif all(s == "valid" for s in statuses):
                conn.execute(
                    update(acme_orders)
                    .where(acme_orders.c.id == authz.order_id, acme_orders.c.status == "pending")
                    .values(status="ready")
                )
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

    def deactivate_authz(self, authz_id: int) -> None:
        with self.db.begin() as conn:
            conn.execute(
                update(acme_authzs)
                .where(acme_authzs.c.id == authz_id, acme_authzs.c.status.in_(["pending", "valid"]))
                .values(status="deactivated")
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
    return Challenge(
        id=int(m["id"]),
        authz_id=int(m["authz_id"]),
        type=m["type"],
        token=m["token"],
        status=m["status"],
        validated_at=m["validated_at"],
        error=json.loads(m["error"]) if m["error"] else None,
    )

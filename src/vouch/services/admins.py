"""Administrators of the API: tokens shown once and kept as hashes, roles, failed-login limits.

A token reads ``vat_<id>_<secret>``: the id finds the row, the secret's SHA-256 is compared in
constant time. Roles: ``admin`` does everything; ``operator`` issues and revokes (and reads);
``auditor`` reads everything and changes nothing.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from vouch.clock import Clock
from vouch.errors import AuthenticationFailed, BadInput, VouchError
from vouch.store.api import AdminTokenRecord, ApiStore, Redemption
from vouch.store.records import NewEvent

Role = Literal["admin", "operator", "auditor"]
Permission = Literal["read", "issue", "revoke", "admin"]
ROLES: tuple[Role, ...] = ("admin", "operator", "auditor")
PERMISSIONS: dict[str, frozenset[str]] = {
    "admin": frozenset({"read", "issue", "revoke", "admin"}),
    "operator": frozenset({"read", "issue", "revoke"}),
    "auditor": frozenset({"read"}),
}
_TOKEN = re.compile(r"^vat_([0-9]{1,12})_([A-Za-z0-9_-]{43})$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._@-]{0,63}$")
# Compared against when the id is unknown, so a miss takes as long as a wrong secret.
_DUMMY = hashlib.sha256(b"no such token").digest()


class PermissionDenied(VouchError):
    """Authenticated, but not allowed to do this."""

    category = "permission"

    def __init__(self, message: str, *, permission: str = "") -> None:
        super().__init__(message)
        self.permission = permission  # what the role lacked, for the audit log


class RateLimited(VouchError):
    category = "rate-limited"

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message, hint=f"retry in {retry_after} s")
        self.retry_after = retry_after


@dataclass(frozen=True)
class Admin:
    """Who an API request is from."""

    id: int
    name: str
    role: str

    def require(self, permission: Permission) -> None:
        if permission not in PERMISSIONS.get(self.role, frozenset()):
            raise PermissionDenied(
                f"the {self.role} role may not do this (it needs {permission} permission)",
                permission=permission,
            )


@dataclass(frozen=True)
class NewAdminToken:
    record: AdminTokenRecord
    token: str  # shown once, never stored


class AdminTokens:
    def __init__(self, *, store: ApiStore, clock: Clock) -> None:
        self._store = store
        self._clock = clock

    def create(
        self, name: str, role: str, *, ttl: dt.timedelta | None = None, by: Admin | None = None
    ) -> NewAdminToken:
        if role not in ROLES:
            raise BadInput(f"unknown role {role!r}", hint=f"one of: {', '.join(ROLES)}")
        if not _NAME.match(name):
            raise BadInput(
                "a token name is 1-64 letters, digits, spaces and ._@- (e.g. alice@example.com)"
            )
        now = self._clock.now().replace(microsecond=0)
        secret = secrets.token_urlsafe(32)
        expires = now + ttl if ttl is not None else None
        token_id = self._store.add_admin_token(
            name=name,
            role=role,
            secret_sha256=hashlib.sha256(secret.encode("ascii")).digest(),
            at=now,
            expires_at=expires,
            event=NewEvent(
                "api.admin-token-created",
                "",
                {
                    "name": name,
                    "role": role,
                    "expires_at": expires.isoformat() if expires else None,
                    "by": who(by),
                },
            ),
        )
        record = self._store.admin_token(token_id)
        assert record is not None  # just written in a committed transaction
        return NewAdminToken(record, f"vat_{token_id}_{secret}")

    def authenticate(self, token: str) -> Admin:
        """The administrator a token belongs to; ``AuthenticationFailed`` (saying nothing about
        which part was wrong) otherwise."""
        match = _TOKEN.match(token)
        record = self._store.admin_token(int(match.group(1))) if match else None
        offered = hashlib.sha256((match.group(2) if match else token).encode()).digest()
        good = hmac.compare_digest(offered, record.secret_sha256 if record else _DUMMY)
        if not good or record is None or not _live(record, self._clock.now()):
            raise AuthenticationFailed("the API token is not valid", hint="ask an admin for one")
        return Admin(record.id, record.name, record.role)

    def list(self) -> list[AdminTokenRecord]:
        return self._store.admin_tokens()

    def revoke(self, token_id: int, *, by: Admin | None = None) -> None:
        self._store.revoke_admin_token(
            token_id,
            self._clock.now().replace(microsecond=0),
            NewEvent("api.admin-token-revoked", str(token_id), {"id": token_id, "by": who(by)}),
        )


def _live(record: AdminTokenRecord, now: dt.datetime) -> bool:
    """Neither revoked nor expired."""
    return record.revoked_at is None and (record.expires_at is None or record.expires_at > now)


def who(admin: Admin | None) -> dict[str, object]:
    """Who acted, as the audit log records it: an administrator, or the local CLI (None)."""
    if admin is None:
        return {"cli": True}
    return {"id": admin.id, "name": admin.name, "role": admin.role}


class FailureLimiter:
    """Failed logins per source: after ``limit`` within ``window``, the source is refused until
    the window has passed. In memory, per node; bounded to ``capacity`` sources."""

    def __init__(
        self, *, limit: int, window: dt.timedelta, clock: Clock, capacity: int = 100_000
    ) -> None:
        self._limit = limit
        self._window = window
        self._clock = clock
        self._capacity = capacity
        self._failures: OrderedDict[str, list[dt.datetime]] = OrderedDict()
        self._lock = threading.Lock()

    def check(self, source: str) -> None:
        now = self._clock.now()
        with self._lock:
            recent = self._recent(source, now)
            if len(recent) >= self._limit:
                retry = int((recent[0] + self._window - now).total_seconds()) + 1
                raise RateLimited(
                    f"too many failed logins from {source}", retry_after=max(1, retry)
                )

    def failed(self, source: str) -> None:
        now = self._clock.now()
        with self._lock:
            recent = self._recent(source, now)
            recent.append(now)
            self._failures[source] = recent[-self._limit :]
            self._failures.move_to_end(source)
            while len(self._failures) > self._capacity:
                self._failures.popitem(last=False)

    def _recent(self, source: str, now: dt.datetime) -> list[dt.datetime]:
        return [t for t in self._failures.get(source, []) if now - t < self._window]


class LoginGuard:
    """Failed logins (rate-limited per source, and recorded) and administrators' actions
    (recorded): the audit log shows who did what through the API, and who tried."""

    def __init__(self, *, limiter: FailureLimiter, store: ApiStore, clock: Clock) -> None:
        self._limiter = limiter
        self._store = store
        self._clock = clock

    def check(self, source: str) -> None:
        self._limiter.check(source)

    def failed(self, source: str, *, credential: str, reason: str) -> None:
        """Count and record a refused credential (never the credential itself)."""
        self._limiter.failed(source)
        self._store.record_events(
            [
                NewEvent(
                    "api.login-failed",
                    source[:128],
                    {"source": source, "credential": credential, "reason": reason},
                )
            ],
            self._clock.now().replace(microsecond=0),
        )

    def denied(self, admin: Admin, action: str, source: str, permission: str) -> None:
        """Record an action refused for the administrator's role: attempts to go beyond one's
        role show in the audit log as plainly as the actions themselves."""
        self._store.record_events(
            [
                NewEvent(
                    "api.permission-denied",
                    str(admin.id),
                    {"admin": who(admin), "action": action[:512], "source": source,
                     "needs": permission},
                )
            ],
            self._clock.now().replace(microsecond=0),
        )  # fmt: skip

    def admin_action(self, admin: Admin, action: str, source: str) -> None:
        self._store.record_events(
            [
                NewEvent(
                    "api.admin-action",
                    str(admin.id),
                    {"admin": who(admin), "action": action[:512], "source": source},
                )
            ],
            self._clock.now().replace(microsecond=0),
        )


SESSION_TTL = dt.timedelta(hours=8)
_SESSION = re.compile(r"^s1\.([0-9]{1,12})\.([0-9]{1,12})\.([A-Za-z0-9_-]{22})\.([0-9a-f]{64})$")


class Sessions:
    """Signed-in browser sessions (the dashboard). A session is a ticket signed with a key every
    node shares, naming the API token it was opened with and when it ends: never the token
    itself, so a cookie is no API credential. It lasts ``SESSION_TTL`` at most, ends with the
    token (revoked or expired), and at sign-out on every node (its id is recorded as spent,
    as a one-time token's is)."""

    def __init__(self, *, store: ApiStore, clock: Clock, key: Callable[[], bytes]) -> None:
        self._store = store
        self._clock = clock
        self._read_key = key
        self._key: bytes | None = None

    def _mac(self, body: str) -> str:
        if self._key is None:
            self._key = self._read_key()
        return hmac.new(self._key, body.encode("ascii"), hashlib.sha256).hexdigest()

    def open(self, admin: Admin) -> str:
        ends = int((self._clock.now() + SESSION_TTL).timestamp())
        body = f"s1.{admin.id}.{ends}.{secrets.token_urlsafe(16)}"
        return f"{body}.{self._mac(body)}"

    def check(self, ticket: str) -> Admin:
        """The administrator of a live session; ``AuthenticationFailed`` otherwise."""
        match = _SESSION.match(ticket)
        body = ticket.rpartition(".")[0] if match else "s1.0.0.x"
        good = hmac.compare_digest(self._mac(body), match.group(4) if match else "0" * 64)
        ended = AuthenticationFailed("the session has ended", hint="sign in again")
        if not good or match is None:
            raise ended
        now = self._clock.now()
        if int(match.group(2)) <= now.timestamp() or self._store.spent([match.group(3)]):
            raise ended
        record = self._store.admin_token(int(match.group(1)))
        if record is None or not _live(record, now):
            raise ended
        return Admin(record.id, record.name, record.role)

    def end(self, ticket: str) -> None:
        """Sign out: the session ends on every node (a ticket that is no session: nothing)."""
        match = _SESSION.match(ticket)
        if match is None:
            return
        try:
            admin = self.check(ticket)
        except AuthenticationFailed:
            return
        ends = dt.datetime.fromtimestamp(int(match.group(2)), dt.UTC)
        event = NewEvent("dashboard.signed-out", str(admin.id), {"admin": who(admin)})
        self._store.redeem(
            [Redemption(jti=match.group(3), provisioner="dashboard-session", expires_at=ends,
                        event=event)],
            self._clock.now().replace(microsecond=0),
        )  # fmt: skip


"""ACME challenges whose validating node died (issue 6), on SQLite and PostgreSQL.

A node that takes a challenge (``processing``) and dies before recording the outcome must not
leave the client polling forever: once the take is older than ``CHALLENGE_TIMEOUT``, the next
request of the account for the challenge or its authorization takes it again and validates it
anew. Taking is one conditional update (one winner among nodes), and an outcome is recorded only
for the take it belongs to. The dead node is a real ``vouch serve`` killed at the crash point
``acme.validating``, or a take written straight into the store with an old start time.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import update
from tests.acme_client import Client, Responder, http01_responder
from tests.cluster import ACME_CONFIG, FaultyServer
from tests.conftest import PASSPHRASE, make_home
from tests.servers import VouchServer, free_port

from vouch.acme.jws import jwk_of, thumbprint
from vouch.acme.problems import AcmeProblem
from vouch.clock import FixedClock
from vouch.services.acme import CHALLENGE_TIMEOUT, VALIDATION_TIMEOUT
from vouch.store.acme import Account, Authz
from vouch.store.tables import acme_challenges
from vouch.wiring import DEFAULT_LINT_ALLOW, Vouch

IP = "127.0.0.1"  # http-01 for an IP identifier needs no DNS


class CountingTokens(dict[str, str]):
    """The responder's tokens, counting the fetches of each (the responder looks each up)."""

    def __init__(self) -> None:
        super().__init__()
        self.fetches: dict[str, int] = {}

    def get(self, key: str, default: Any = None) -> Any:
        self.fetches[key] = self.fetches.get(key, 0) + 1
        return super().get(key, default)


class Site:
    """A vouch home for ACME on one store, an http-01 responder, and a way to start nodes."""

    def __init__(self, base: Path, store_url: str, responder: Responder, http01: int) -> None:
        self.home = base / "home"
        self.http_port = free_port()
        make_home(
            self.home,
            store_url=store_url,
            public_url=f"http://127.0.0.1:{self.http_port}",
            lint_allow=list(DEFAULT_LINT_ALLOW),
        ).close()
        with (self.home / "vouch.toml").open("a", encoding="utf-8") as config:
            config.write(ACME_CONFIG.format(http01=http01))
        self.https_port = free_port()
        self.responder = responder
        self.tokens = CountingTokens()
        responder.tokens = self.tokens
        self.vouch = Vouch(self.home, passphrase=lambda _: PASSPHRASE)

    def node(self, fault: str | None = None) -> VouchServer:
        """A node on the site's ports (so the node that replaces a dead one keeps its clients'
        URLs), with the crash point ``fault`` armed if given."""
        node = VouchServer(self.home) if fault is None else FaultyServer(self.home, fault)
        node.http_port, node.https_port = self.http_port, self.https_port
        return node

    def client(self) -> Client:
        client = Client(
            f"https://localhost:{self.https_port}/acme/directory", str(self.home / "root.pem")
        )
        reply = client.register()
        assert reply.status == 201, reply.content
        return client

    def challenge_of_new_order(self, client: Client) -> tuple[str, str, dict[str, Any]]:
        """(order URL, authorization URL, http-01 challenge) of a new order for ``IP``, its
        key authorization already served by the responder."""
        reply = client.post(
            client.directory["newOrder"], {"identifiers": [{"type": "ip", "value": IP}]}
        )
        assert reply.status == 201, reply.content
        authz_url = reply.json["authorizations"][0]
        authz = client.post(authz_url, None).json
        challenge = next(c for c in authz["challenges"] if c["type"] == "http-01")
        self.tokens[challenge["token"]] = client.key_authorization(challenge["token"])
        return reply.headers["location"], authz_url, challenge

    def taken_at(self, challenge: dict[str, Any], at: dt.datetime | None) -> None:
        """Write a take of the challenge at ``at`` straight into the store, as a node that then
        died left it (None: a take from before takes carried their time)."""
        with self.vouch.db.begin() as conn:
            conn.execute(
                update(acme_challenges)
                .where(acme_challenges.c.id == _id(challenge))
                .values(status="processing", validated_at=at)
            )

    def close(self) -> None:
        self.vouch.close()


def _id(challenge: dict[str, Any]) -> int:
    return int(str(challenge["url"]).rsplit("/", 1)[1])


def _poll(client: Client, url: str, timeout: float = 30) -> dict[str, Any]:
    """Read (POST-as-GET only, as a client polling its authorization does) until not pending."""
    return client.poll(url, ("valid", "invalid", "deactivated"), timeout=timeout)


@pytest.fixture(params=["sqlite", "postgres"])
def site(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Site]:
    url = "sqlite:///vouch.db"
    if request.param == "postgres":
        url = request.getfixturevalue("pg_schema_url")
    http01 = free_port()
    with http01_responder(http01) as responder:
        made = Site(tmp_path, url, responder, http01)
        try:
            yield made
        finally:
            made.close()


# -- through real nodes ---------------------------------------------------------------------------


def test_a_polling_client_gets_an_answer_after_its_node_died(site: Site) -> None:
    """The take a dead node left is older than the bound: the client, only reading its
    authorization, sees it validated (before the fix it read ``pending`` for ever)."""
    with site.node():
        client = site.client()
        order_url, authz_url, challenge = site.challenge_of_new_order(client)
        now = dt.datetime.now(dt.UTC)
        site.taken_at(challenge, now - CHALLENGE_TIMEOUT - dt.timedelta(seconds=5))
        authz = _poll(client, authz_url)
        assert authz["status"] == "valid", authz
        validated = next(c for c in authz["challenges"] if c["url"] == challenge["url"])
        assert validated["status"] == "valid" and "validated" in validated
        assert site.tokens.fetches.get(challenge["token"], 0) >= 1
        assert client.poll(order_url, ("ready", "invalid"))["status"] == "ready"

        # A take from before takes carried their time counts as abandoned too; here the
        # client polls the challenge itself.
        _, _, legacy = site.challenge_of_new_order(client)
        site.taken_at(legacy, None)
        assert _poll(client, legacy["url"])["status"] == "valid"
        client.close()


def test_a_recent_take_is_left_to_its_node_and_a_stale_one_is_retried(site: Site) -> None:
    """Within the bound a node may still be validating: reads and a second POST change
    nothing and fetch nothing. Past it, the client's POST to the challenge validates anew;
    a target that no longer answers makes the challenge invalid (an answer, not a hang)."""
    with site.node():
        client = site.client()
        _, authz_url, challenge = site.challenge_of_new_order(client)
        token = challenge["token"]
        site.taken_at(challenge, dt.datetime.now(dt.UTC) - CHALLENGE_TIMEOUT / 2)
        assert client.post(authz_url, None).json["status"] == "pending"
        assert client.post(challenge["url"], None).json["status"] == "processing"
        again = client.post(challenge["url"], {})
        assert again.status == 200 and again.json["status"] == "processing"
        assert "validated" not in again.json
        assert site.tokens.fetches.get(token, 0) == 0

        site.taken_at(challenge, dt.datetime.now(dt.UTC) - CHALLENGE_TIMEOUT * 2)
        assert client.post(challenge["url"], {}).json["status"] in ("processing", "valid")
        assert _poll(client, authz_url)["status"] == "valid"
        assert site.tokens.fetches[token] == 1  # validated once, by one node

        _, authz_url, gone = site.challenge_of_new_order(client)
        del site.tokens[gone["token"]]  # the client cleaned up meanwhile
        site.taken_at(gone, dt.datetime.now(dt.UTC) - CHALLENGE_TIMEOUT * 2)
        authz = _poll(client, authz_url)
        assert authz["status"] == "invalid", authz
        failed = next(c for c in authz["challenges"] if c["url"] == gone["url"])
        assert failed["status"] == "invalid" and failed["error"]["type"].endswith("unauthorized")
        client.close()


def test_a_node_killed_while_validating(site: Site) -> None:
    """A real node dies (SIGKILL) as it starts validating; the node that replaces it leaves
    the fresh take alone, and validates once the take is past the bound (its age written
    into the store rather than waited for)."""
    dying = site.node("acme.validating")
    dying.start()
    try:
        client = site.client()
        _, authz_url, challenge = site.challenge_of_new_order(client)
        # The node may die before its answer is written (the client would then ask again).
        with contextlib.suppress(httpx.RemoteProtocolError):
            reply = client.post(challenge["url"], {})
            assert reply.status == 200 and reply.json["status"] == "processing"
        assert dying.process is not None
        assert dying.process.wait(timeout=30) == -9
    finally:
        dying.kill()
    taken = site.vouch.acme.store.challenge(_id(challenge))
    assert taken.status == "processing" and taken.processing_started is not None
    with site.node():
        assert client.post(authz_url, None).json["status"] == "pending"
        assert client.post(challenge["url"], {}).json["status"] == "processing"  # asks again
        assert site.tokens.fetches.get(challenge["token"], 0) == 0
        site.taken_at(challenge, taken.processing_started - CHALLENGE_TIMEOUT)
        authz = _poll(client, authz_url)
        assert authz["status"] == "valid", authz
        client.close()


# -- the service and the store --------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgres"])
def clocked(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Vouch, FixedClock]]:
    url = "sqlite:///vouch.db"
    if request.param == "postgres":
        url = request.getfixturevalue("pg_schema_url")
    make_home(tmp_path / "home", store_url=url).close()
    clock = FixedClock(dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    vouch = Vouch(tmp_path / "home", passphrase=lambda _: PASSPHRASE, clock=clock)
    try:
        yield vouch, clock
    finally:
        vouch.close()


def _pending_authz(vouch: Vouch, clock: FixedClock) -> tuple[Account, Authz]:
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    store = vouch.acme.store
    account = store.add_account(thumbprint(key), jwk_of(key), [], clock.now())
    order = vouch.acme.new_order(account, {"identifiers": [{"type": "ip", "value": IP}]})
    return account, store.authz(order.authz_ids[0])


def test_the_bound_follows_the_validation_timeout(clocked: tuple[Vouch, FixedClock]) -> None:
    """A take is left alone until CHALLENGE_TIMEOUT (twice the time a node lets a validation
    run), then claimed again, by reading or by POST; the earlier take can no longer record."""
    vouch, clock = clocked
    service, store = vouch.acme, vouch.acme.store
    assert CHALLENGE_TIMEOUT >= 2 * VALIDATION_TIMEOUT
    account, authz = _pending_authz(vouch, clock)
    challenge_id = authz.challenges[0].id
    first, _, started = service.start_challenge(account, challenge_id)
    assert started and first.processing_started == clock.now() and first.validated_at is None
    assert not service.start_challenge(account, challenge_id)[2]  # one validation at a time
    clock.advance(CHALLENGE_TIMEOUT)
    assert service.resume_abandoned(store.authz(authz.id))[1] == []  # not past the bound
    assert not service.start_challenge(account, challenge_id)[2]
    clock.advance(dt.timedelta(seconds=1))
    now_authz, resumed = service.resume_abandoned(store.authz(authz.id))
    assert [c.id for c in resumed] == [challenge_id]
    assert resumed[0].processing_started == clock.now()
    assert service.resume_abandoned(now_authz)[1] == []  # taken once
    # The dead node's take, were it to finish now, records nothing; the new take does.
    assert not service.record_validation(first, AcmeProblem("connection", "late"))
    assert store.challenge(challenge_id).status == "processing"
    assert service.record_validation(resumed[0], None)
    assert store.challenge(challenge_id).status == "valid"
    assert store.authz(authz.id).status == "valid"
    assert not service.record_validation(resumed[0], None)  # recorded once

    # By POST: the next request for an abandoned challenge takes it.
    account, authz = _pending_authz(vouch, clock)
    challenge_id = authz.challenges[0].id
    assert service.start_challenge(account, challenge_id)[2]
    clock.advance(CHALLENGE_TIMEOUT + dt.timedelta(seconds=1))
    again, _, started = service.start_challenge(account, challenge_id)
    assert started and again.processing_started == clock.now()


def test_one_node_takes_an_abandoned_challenge(store_home: Vouch) -> None:
    """Many takers at once (several nodes' requests): exactly one wins each challenge."""
    store = store_home.acme.store
    clock = FixedClock(dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    ids = []
    for _ in range(5):
        _, authz = _pending_authz(store_home, clock)
        ids.append(authz.challenges[0].id)
        assert store.start_challenge(ids[-1], clock.now() - CHALLENGE_TIMEOUT * 2)
    now = clock.now()
    wins: list[int] = []
    barrier = threading.Barrier(8)

    def take() -> None:
        barrier.wait()
        for challenge_id in ids:
            if store.start_challenge(challenge_id, now, stale_before=now - CHALLENGE_TIMEOUT):
                wins.append(challenge_id)

    threads = [threading.Thread(target=take) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(wins) == sorted(ids)
    assert all(store.challenge(i).processing_started == now for i in ids)

"""ACME building blocks without a server: CAA decisions, renewal-information identifiers and
windows, EAB sealing and MACs, nonces, and the account rules of the service on a real store."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from tests.acme_client import eab_binding, sign

from vouch.acme import eab
from vouch.acme.ari import CertId, cert_id_of, default_window, parse_cert_id
from vouch.acme.caa import CaaRecord, evaluate, relevant_set
from vouch.acme.jws import b64url, jwk_of, parse
from vouch.acme.problems import AcmeProblem
from vouch.clock import FixedClock
from vouch.wiring import Vouch

ME = ["ca.example"]


def issue(value: str, flags: int = 0) -> CaaRecord:
    return CaaRecord(flags, "issue", value)


# -- CAA (RFC 8659) ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("records", "wildcard", "allowed"),
    [
        ([], False, True),  # no CAA: anyone
        ([issue("ca.example")], False, True),
        ([issue("CA.Example.; account=1")], False, True),  # case, trailing dot, parameters
        ([issue("other.example")], False, False),
        ([issue(";")], False, False),  # the empty issuer: nobody
        ([issue("other.example"), issue("ca.example")], False, True),
        ([CaaRecord(0, "iodef", "mailto:x@example.com")], False, True),  # no issue property
        ([CaaRecord(128, "future", "x"), issue("ca.example")], False, False),  # critical unknown
        ([CaaRecord(0, "future", "x"), issue("ca.example")], False, True),  # non-critical unknown
        ([issue("ca.example"), CaaRecord(0, "issuewild", "other.example")], True, False),
        ([issue("ca.example"), CaaRecord(0, "issuewild", "other.example")], False, True),
        ([issue("other.example"), CaaRecord(0, "issuewild", "ca.example")], True, True),
        ([issue("ca.example")], True, True),  # no issuewild: issue governs wildcards too
    ],
)
def test_caa_evaluation(records: list[CaaRecord], wildcard: bool, allowed: bool) -> None:
    assert (evaluate(records, ME, wildcard=wildcard) is None) == allowed


def test_caa_climbs_to_the_closest_rrset() -> None:
    zone = {"example.com": [issue("ca.example")], "sub.example.com": []}
    asked: list[str] = []

    def lookup(name: str) -> list[CaaRecord]:
        asked.append(name)
        return zone.get(name, [])

    assert relevant_set("a.sub.example.com", lookup) == ("example.com", [issue("ca.example")])
    assert asked == ["a.sub.example.com", "sub.example.com", "example.com"]
    asked.clear()
    assert relevant_set("www.nothing.test.", lookup) == ("", [])
    assert asked == ["www.nothing.test", "nothing.test", "test"]  # never the root


# -- renewal information (RFC 9773) ------------------------------------------------------------------


def _certificate(serial: int) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")])
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    return (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(serial)
        .not_valid_before(now).not_valid_after(now + dt.timedelta(days=90))
        .add_extension(x509.AuthorityKeyIdentifier(b"\x01" * 20, None, None), False)
        .sign(key, hashes.SHA256())
    )  # fmt: skip


def test_cert_id_round_trip_and_rfc_example() -> None:
    # RFC 9773 4.1's example: keyIdentifier 69:88:5B:6B:87:46:40:41:E1:B3:7B:84:7B:A0:AE:2C:DE:
    # 01:C8:D4 and serial 00:87:65:43:21 give "aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE".
    example = CertId(bytes.fromhex("69885B6B87464041E1B37B847BA0AE2CDE01C8D4"), 0x87654321)
    assert example.text() == "aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE"
    assert parse_cert_id(example.text()) == example
    for serial in (1, 0x7F, 0x80, 2**126 + 5):
        found = cert_id_of(_certificate(serial))
        assert found == CertId(b"\x01" * 20, serial)
        assert parse_cert_id(found.text()) == found


@pytest.mark.parametrize("text", ["", "abc", "a.b.c", "AQ.gA", "AQ.AAE", "=.AQ", ".AQ"])
def test_cert_id_malformed(text: str) -> None:
    with pytest.raises(AcmeProblem) as caught:
        parse_cert_id(text)
    assert caught.value.kind == "malformed"


def test_default_window_is_in_the_last_third() -> None:
    start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    begin, end = default_window(start, start + dt.timedelta(days=90))
    assert begin == start + dt.timedelta(days=60)
    assert start + dt.timedelta(days=60) < end <= start + dt.timedelta(days=90)


# -- external account binding ------------------------------------------------------------------------


def test_eab_seal_and_mac() -> None:
    wrapping = b"k" * 32
    made = eab.new_key(wrapping)
    raw = eab.unseal(wrapping, made.key_id, made.sealed)
    assert b64url(raw) == made.hmac_key
    with pytest.raises(AcmeProblem):
        eab.unseal(b"j" * 32, made.key_id, made.sealed)  # another node's wrapping key
    with pytest.raises(AcmeProblem):
        eab.unseal(wrapping, "eab-other", made.sealed)  # sealed for another key id
    account = ec.generate_private_key(ec.SECP256R1()).public_key()
    url = "https://ca.example/acme/new-account"
    value = eab_binding(made.key_id, made.hmac_key, account, url)
    binding = eab.parse_binding(value, outer_url=url, outer_jwk=jwk_of(account))
    eab.verify_binding(binding, raw)
    with pytest.raises(AcmeProblem) as caught:
        eab.verify_binding(binding, b"x" * 32)
    assert caught.value.kind == "unauthorized"
    with pytest.raises(AcmeProblem) as caught:
        eab.parse_binding(value, outer_url=url + "x", outer_jwk=jwk_of(account))
    assert caught.value.kind == "unauthorized"
    other = jwk_of(ec.generate_private_key(ec.SECP256R1()).public_key())
    with pytest.raises(AcmeProblem) as caught:
        eab.parse_binding(value, outer_url=url, outer_jwk=other)
    assert caught.value.kind == "malformed"


# -- the service on a real store ---------------------------------------------------------------------


def _new_account_jws(key: ec.EllipticCurvePrivateKey, nonce: str, payload: dict[str, object]):  # type: ignore[no-untyped-def]
    url = "https://ca.example/acme/new-account"
    protected = {"alg": "ES256", "nonce": nonce, "url": url, "jwk": jwk_of(key.public_key())}
    return parse(json.dumps(sign(key, protected, payload)).encode())


def test_accounts_without_eab_and_nonces(store_home: Vouch) -> None:
    """On SQLite and PostgreSQL: used nonces are recorded without waiting for the disk."""
    service = store_home.acme
    assert service.settings.eab_required is False
    key = ec.generate_private_key(ec.SECP256R1())
    nonce = service.new_nonce()
    service.use_nonce(nonce)
    with pytest.raises(AcmeProblem) as caught:
        service.use_nonce(nonce)  # replayed
    assert caught.value.kind == "badNonce"
    tampered = service.new_nonce()
    tampered = tampered[:-2] + ("AA" if not tampered.endswith("AA") else "BB")
    for bad in (tampered, "", "not base64!", b64url(b"x" * 37)):
        with pytest.raises(AcmeProblem):
            service.use_nonce(bad)
    account, created = service.new_account(_new_account_jws(key, "n", {}))
    assert created and account.status == "valid"
    again, created = service.new_account(_new_account_jws(key, "n", {}))
    assert again.id == account.id and not created


def test_registrations_that_race_with_one_key_and_one_eab_key_get_the_same_account(
    store_home: Vouch, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two registrations at once with the same account key and the same single-use EAB key:
    the one that looked up the key before the other stored its account must get that account
    (RFC 8555 7.3), not "EAB key used". A second account under a used EAB key is still
    refused."""
    service, store = store_home.acme, store_home.acme.store
    url = "https://ca.example/acme/new-account"
    made = service.new_eab_key("caddy")
    key = ec.generate_private_key(ec.SECP256R1())

    def request(account_key: ec.EllipticCurvePrivateKey):  # type: ignore[no-untyped-def]
        binding = eab_binding(made.key_id, made.hmac_key, account_key.public_key(), url)
        return _new_account_jws(account_key, "n", {"externalAccountBinding": binding})

    first, created = service.new_account(request(key))
    assert created
    # The second request's lookup ran before the first request's account was stored.
    lookup = store.account_by_thumbprint
    calls: list[str] = []

    def stale_then_fresh(value: str):  # type: ignore[no-untyped-def]
        calls.append(value)
        return None if len(calls) == 1 else lookup(value)

    monkeypatch.setattr(store, "account_by_thumbprint", stale_then_fresh)
    second, created = service.new_account(request(key))
    assert (second.id, created) == (first.id, False)
    monkeypatch.setattr(store, "account_by_thumbprint", lookup)
    with pytest.raises(AcmeProblem) as caught:  # another key may not reuse the EAB key
        service.new_account(request(ec.generate_private_key(ec.SECP256R1())))
    assert caught.value.kind == "unauthorized"

    # Without EAB the race ends in the store: the second insert of the same key conflicts.
    plain = ec.generate_private_key(ec.SECP256R1())
    third, created = service.new_account(_new_account_jws(plain, "n", {}))
    assert created
    calls.clear()
    monkeypatch.setattr(store, "account_by_thumbprint", stale_then_fresh)
    again, created = service.new_account(_new_account_jws(plain, "n", {}))
    assert (again.id, created) == (third.id, False)
    # An account deactivated meanwhile is named as such, not as a conflict.
    store.update_account(third.id, status="deactivated")
    calls.clear()
    with pytest.raises(AcmeProblem) as caught:
        service.new_account(_new_account_jws(plain, "n", {}))
    assert caught.value.kind == "unauthorized" and "deactivated" in caught.value.detail


def test_nonces_expire(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from tests.conftest import make_home

    clock = FixedClock(dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    vouch = make_home(tmp_path / "home")
    vouch.close()
    vouch = Vouch(tmp_path / "home", passphrase=lambda _: b"test-passphrase-1", clock=clock)
    try:
        nonce = vouch.acme.new_nonce()
        clock.advance(dt.timedelta(hours=2))
        with pytest.raises(AcmeProblem) as caught:
            vouch.acme.use_nonce(nonce)
        assert caught.value.kind == "badNonce"
    finally:
        vouch.close()


def test_a_finalization_cut_short_can_be_taken_up_again(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A node that dies mid-finalize leaves the order processing; after FINALIZE_TIMEOUT the
    order is ready again (so the client finalizes again), and not before."""
    from tests.conftest import make_home

    from vouch.services.acme import FINALIZE_TIMEOUT

    clock = FixedClock(dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    make_home(tmp_path / "home").close()
    vouch = Vouch(tmp_path / "home", passphrase=lambda _: b"test-passphrase-1", clock=clock)
    try:
        service, store = vouch.acme, vouch.acme.store
        key = ec.generate_private_key(ec.SECP256R1()).public_key()
        account = store.add_account("t" * 43, jwk_of(key), [], clock.now())
        order = service.new_order(account, {"identifiers": [{"type": "dns", "value": "a.test"}]})
        # Marked ready while its authorization is not valid: not finalized (RFC 8555 7.5.2).
        store.set_order(order.id, status="ready")
        assert not store.claim_finalize(order.id, clock.now())
        [authz_id] = order.authz_ids
        challenge = store.authz(authz_id).challenges[0]
        assert store.start_challenge(challenge.id, clock.now(), stale_before=clock.now())
        started = store.challenge(challenge.id).processing_started
        store.finish_challenge(challenge.id, started=started, ok=True, at=clock.now(), error=None)
        assert store.order(order.id).status == "ready"
        assert store.claim_finalize(order.id, clock.now())
        assert not store.claim_finalize(order.id, clock.now())  # one finalization at a time
        clock.advance(FINALIZE_TIMEOUT / 2)
        assert service.order_of(account, order.id).status == "processing"
        clock.advance(FINALIZE_TIMEOUT)
        service._in_flight.add(order.id)  # still issuing on this node: slow, not dead
        assert service.order_of(account, order.id).status == "processing"
        service._in_flight.discard(order.id)
        assert service.order_of(account, order.id).status == "ready"
        assert store.claim_finalize(order.id, clock.now())
    finally:
        vouch.close()


def test_nonce_and_account_in_one_transaction(store_home: Vouch) -> None:
    """The hot path (use the nonce, read the kid's account) keeps every rule of the two steps."""
    service, store = store_home.acme, store_home.acme.store
    key = ec.generate_private_key(ec.SECP256R1())
    account, _ = service.new_account(_new_account_jws(key, "n", {}))
    kid = f"https://ca.example/acme/acct/{account.id}"
    nonce = service.new_nonce()
    found, account_key = service.use_nonce_for_kid(nonce, kid, account.id)
    assert found.id == account.id and jwk_of(account_key) == account.jwk
    with pytest.raises(AcmeProblem) as caught:
        service.use_nonce_for_kid(nonce, kid, account.id)  # replayed
    assert caught.value.kind == "badNonce"
    with pytest.raises(AcmeProblem) as caught:
        service.use_nonce_for_kid(service.new_nonce(), kid, account.id + 1000)
    assert caught.value.kind == "accountDoesNotExist"
    store.update_account(account.id, status="deactivated")
    with pytest.raises(AcmeProblem) as caught:
        service.use_nonce_for_kid(service.new_nonce(), kid, account.id)
    assert caught.value.kind == "unauthorized"


def test_group_work_batches_concurrent_callers_and_hands_each_its_outcome() -> None:
    import threading

    from vouch.acme.group import GroupWork

    batches: list[list[int]] = []
    entered = threading.Event()
    release = threading.Event()

    def work(items: Sequence[int]) -> list[int | BaseException]:
        batches.append(list(items))
        if len(batches) == 1:  # hold the first batch so the others queue up behind it
            entered.set()
            release.wait(10)
        return [ValueError(f"odd {i}") if i % 2 else i * 10 for i in items]

    group: GroupWork[int, int] = GroupWork(work)
    outcomes: dict[int, object] = {}

    def call(item: int) -> None:
        try:
            outcomes[item] = group.submit(item)
        except ValueError as exc:
            outcomes[item] = str(exc)

    first = threading.Thread(target=call, args=(0,))
    first.start()
    assert entered.wait(10)
    others = [threading.Thread(target=call, args=(i,)) for i in range(1, 7)]
    for thread in others:
        thread.start()
    for _ in range(1000):  # until all six wait behind the held batch
        if len(group._queue) == 6:
            break
        threading.Event().wait(0.01)
    release.set()
    for thread in [first, *others]:
        thread.join(10)
    assert outcomes == {i: (f"odd {i}" if i % 2 else i * 10) for i in range(7)}
    assert batches[0] == [0] and sorted(i for b in batches[1:] for i in b) == [1, 2, 3, 4, 5, 6]
    assert len(batches) == 2  # the six that waited went together

    def broken(items: Sequence[int]) -> list[int | BaseException]:
        raise RuntimeError("the store is down")

    failing: GroupWork[int, int] = GroupWork(broken)
    with pytest.raises(RuntimeError, match="the store is down"):
        failing.submit(1)
    with pytest.raises(RuntimeError, match="the store is down"):  # and the next caller leads
        failing.submit(2)


def test_nonces_used_together_each_count_once(store_home: Vouch) -> None:
    """On SQLite and PostgreSQL: a batch of nonce uses in one transaction tells each use apart
    (fresh, already stored, repeated within the batch) and reads only fresh uses' accounts."""
    service, store = store_home.acme, store_home.acme.store
    key = ec.generate_private_key(ec.SECP256R1())
    account, _ = service.new_account(_new_account_jws(key, "n", {}))
    expires = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5)
    used_before = service.new_nonce()
    store.use_nonce(used_before, expires)
    fresh, other = service.new_nonce(), service.new_nonce()
    found = store.use_nonces_reading_accounts(
        [
            (fresh, expires, account.id),
            (used_before, expires, account.id),
            (fresh, expires, account.id),  # the same nonce twice in one batch: once only
            (other, expires, account.id + 1000),  # fresh, but no such account
        ]
    )
    assert [used for used, _ in found] == [True, False, False, True]
    assert found[0][1] is not None and found[0][1].id == account.id
    assert found[1][1] is None and found[2][1] is None and found[3][1] is None
    assert not store.use_nonce(fresh, expires) and not store.use_nonce(other, expires)

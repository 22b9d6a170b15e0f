"""OCSP answers never stay "good" (or signed by a revoked responder) longer than they should:
nodes with different clocks on one store, a revoked responder certificate, and refreshes no
later than four days after thisUpdate (RFC 6960 2.2, CA/B BR 4.9.10)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from tests.conftest import make_home, passphrase

from vouch.clock import Clock, FixedClock, SystemClock
from vouch.server.ocsp_cache import OcspCache
from vouch.server.state import ServerState
from vouch.services.authority import IssuanceRequest, IssuedCertificate
from vouch.services.ocsp import KnownIssuer, Responder
from vouch.store.records import OcspRow
from vouch.wiring import DEFAULT_LINT_ALLOW, Vouch
from vouch.x509.names import parse_name
from vouch.x509.serials import format_serial

START = dt.datetime(2026, 11, 1, 12, 0, tzinfo=dt.UTC)


def _issue(vouch: Vouch, name: str) -> IssuedCertificate:
    key = ec.generate_private_key(ec.SECP256R1())
    return vouch.authority().issue(
        IssuanceRequest(key.public_key(), (parse_name(name),), "tls-server")
    )


def _request(issued: IssuedCertificate) -> bytes:
    builder = ocsp.OCSPRequestBuilder().add_certificate(
        issued.certificate, issued.chain[0], hashes.SHA1()
    )
    return builder.build().public_bytes(serialization.Encoding.DER)


def _node(vouch: Vouch, clock: Clock) -> Vouch:
    """Another node on the same home and store, whose clock says what ``clock`` says."""
    return Vouch(vouch.home, passphrase=passphrase, clock=clock)


def _responder(vouch: Vouch) -> tuple[KnownIssuer, Responder]:
    producer = vouch.ocsp_producer
    authority = vouch.store.get_authority("issuing")
    responder = producer.responder(authority, ca_key=vouch.ca_key(authority))
    assert responder is not None
    [issuer] = producer.issuers()
    return issuer, responder


def _cached(state: ServerState, request: bytes) -> ocsp.OCSPResponse | None:
    cached, _ = state.cache.lookup(request)
    return None if cached is None else ocsp.load_der_ocsp_response(cached.der)


# -- nodes whose clocks differ ---------------------------------------------------------------------


@pytest.mark.parametrize("ahead", [dt.timedelta(seconds=45), dt.timedelta(hours=2)])
def test_a_revocation_signed_by_a_node_whose_clock_is_behind_is_served(
    store_home: Vouch, ahead: dt.timedelta
) -> None:
    """Node A's clock is ahead: it signed the last "good". Node C, whose clock is right,
    revokes and signs "revoked" with an earlier thisUpdate. The servers' caches serve it."""
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    fast = _node(store_home, FixedClock(now + ahead))
    right = _node(store_home, FixedClock(now))
    try:
        issued = _issue(right, "skew.example.com")
        request = _request(issued)
        state = ServerState(right)
        issuer, responder = _responder(fast)
        [record] = fast.revocations.find_issued(issued.serial, "issuing")
        fast.ocsp_producer.refresh_one(issuer, responder, record)  # the leader's refresh
        state.sync()
        good = _cached(state, request)
        assert good is not None and good.certificate_status == ocsp.OCSPCertStatus.GOOD

        right.revoker().revoke(issued.serial, "keyCompromise")  # and publishes it, signed
        state.sync()
        revoked = _cached(state, request)
        assert revoked is not None, "a revoked certificate must not be served from the cache"
        assert revoked.certificate_status == ocsp.OCSPCertStatus.REVOKED
        assert revoked.this_update_utc < good.this_update_utc
        row = right.ocsp_store.get(issuer.record.id, issued.serial)
        assert row is not None and row.status == "revoked"
    finally:
        right.close()
        fast.close()


def _cache_row(status: str, produced: int, version: int) -> OcspRow:
    at = START + dt.timedelta(seconds=produced)
    return OcspRow(
        authority_id=1,
        serial="0A",
        status=status,
        this_update=at,
        next_update=at + dt.timedelta(days=4),
        der=f"{status} {produced} {version}".encode(),
        version=version,
    )


def _cache_after(*rows: OcspRow) -> bytes:
    cache = OcspCache()
    for row in rows:
        cache.load([row])
    return cache._responses[(1, 10)].der


def test_cache_a_revocation_never_loses_to_an_older_looking_good() -> None:
    # A newer version wins though its thisUpdate is earlier (its signer's clock is behind).
    assert _cache_after(_cache_row("good", 60, 1), _cache_row("revoked", 0, 2)) == b"revoked 0 2"
    assert _cache_after(_cache_row("revoked", 60, 1), _cache_row("revoked", 0, 2)) == (
        b"revoked 0 2"
    )
    # Not "good" replaces "good" even when it looks older in every way.
    assert _cache_after(_cache_row("good", 60, 5), _cache_row("revoked", 0, 2)) == b"revoked 0 2"
    # Otherwise an older version read again in the poll overlap is ignored.
    assert _cache_after(_cache_row("good", 60, 5), _cache_row("good", 0, 2)) == b"good 60 5"
    assert _cache_after(_cache_row("revoked", 0, 5), _cache_row("good", 60, 2)) == b"revoked 0 5"
    assert _cache_after(_cache_row("good", 0, 2), _cache_row("good", 60, 5)) == b"good 60 5"


# -- a revoked responder certificate ---------------------------------------------------------------


def _signer(der: bytes | None) -> x509.Certificate:
    [certificate] = ocsp.load_der_ocsp_response(der or b"").certificates
    return certificate


@pytest.mark.parametrize("publish", [True, False])
def test_a_revoked_responder_signs_no_more_and_its_responses_are_signed_again(
    store_home: Vouch, publish: bool
) -> None:
    vouch = store_home
    producer = vouch.ocsp_producer
    authority = vouch.store.get_authority("issuing")
    key = vouch.ca_key(authority)
    issuer, first = _responder(vouch)
    leaves = [_issue(vouch, f"r{i}.example.com") for i in range(3)]
    while producer.presign(issuer, first) == 2000:
        pass
    state = ServerState(vouch)
    state.sync()
    request = _request(leaves[0])
    cached = _cached(state, request)
    assert cached is not None and cached.certificates == [first.certificate]

    serial = format_serial(first.certificate.serial_number)
    vouch.revoker(publish=publish).revoke(serial, "keyCompromise")
    if publish:
        # The revoking node retired it: what it signed is to be signed again (the stale mark
        # drops it from the servers' caches), its own "revoked" is signed by a new responder.
        for leaf in leaves:
            row = vouch.ocsp_store.get(authority.id, leaf.serial)
            assert row is not None and row.status == "stale", leaf.serial
        state.sync()
        assert _cached(state, request) is None  # answered on the signing path until re-signed
    # The lease holder's next pass.
    current = producer.responder(authority, ca_key=key)
    assert current is not None and current.certificate != first.certificate
    assert producer.presign(issuer, current) >= (len(leaves) if publish else len(leaves) + 1)
    second = producer.responder(authority)
    assert second is not None and second.certificate == current.certificate
    own = vouch.ocsp_store.get(authority.id, serial)
    assert own is not None and own.status == "revoked"
    assert _signer(own.der) == second.certificate
    for leaf in leaves:
        row = vouch.ocsp_store.get(authority.id, leaf.serial)
        assert row is not None and row.status == "good"
        assert _signer(row.der) == second.certificate
    state.sync()
    cached = _cached(state, request)
    assert cached is not None and cached.certificates == [second.certificate]


def test_another_node_stops_using_a_responder_revoked_elsewhere(
    store_home: Vouch, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Node 2 shares the responder keys (keys/ocsp on shared storage); node 1 revokes the
    responder both use. Node 2 notices at its next check, without a restart."""
    from vouch.services import ocsp as ocsp_service

    other = _node(store_home, SystemClock())
    try:
        authority = store_home.store.get_authority("issuing")
        _, first = _responder(store_home)
        issued = _issue(store_home, "elsewhere.example.com")
        used = other.ocsp_producer.responder(authority)
        assert used is not None and used.certificate == first.certificate
        [other_issuer] = other.ocsp_producer.issuers()
        [record] = other.revocations.find_issued(issued.serial, "issuing")
        other.ocsp_producer.refresh_one(other_issuer, used, record)

        store_home.revoker().revoke(format_serial(first.certificate.serial_number), "superseded")
        row = other.ocsp_store.get(authority.id, issued.serial)
        assert row is not None and row.status == "stale"  # marked by the revoking node
        # Checked at most every RESPONDER_CHECK seconds on the request path: not yet.
        monkeypatch.setattr(ocsp_service, "RESPONDER_CHECK", 3600.0)
        again = other.ocsp_producer.responder(authority)
        assert again is not None and again.certificate == first.certificate
        monkeypatch.setattr(ocsp_service, "RESPONDER_CHECK", 0.0)
        current = other.ocsp_producer.responder(authority)
        assert current is not None and current.certificate != first.certificate
        newest = store_home.ocsp_producer.responder(authority)
        assert newest is not None and current.certificate == newest.certificate
    finally:
        other.close()


# -- refresh: at half-life, and no later than four days after thisUpdate -----------------------


def _home_with(tmp_path: Path, ocsp_validity: str) -> tuple[Vouch, FixedClock]:
    clock = FixedClock(START)
    make_home(tmp_path / "home", clock=clock, lint_allow=list(DEFAULT_LINT_ALLOW)).close()
    config = tmp_path / "home" / "vouch.toml"
    text = config.read_text(encoding="utf-8")
    assert 'ocsp_validity = "4d"' in text
    config.write_text(
        text.replace('ocsp_validity = "4d"', f'ocsp_validity = "{ocsp_validity}"'), "utf-8"
    )
    return Vouch(tmp_path / "home", passphrase=passphrase, clock=clock), clock


@pytest.mark.parametrize(
    ("validity", "due"),
    [
        ("10d", dt.timedelta(days=4)),  # BR 4.9.10: four days, before half-life (5 days)
        ("9d", dt.timedelta(days=4)),
        ("8d", dt.timedelta(days=4)),
        ("4d", dt.timedelta(days=2)),  # half-life
        ("12h", dt.timedelta(hours=6)),  # under 16 hours: half-life
    ],
)
def test_responses_are_refreshed_no_later_than_four_days_after_this_update(
    tmp_path: Path, validity: str, due: dt.timedelta
) -> None:
    vouch, clock = _home_with(tmp_path, validity)
    try:
        producer = vouch.ocsp_producer
        issuer, responder = _responder(vouch)
        issued = _issue(vouch, "refresh.example.com")
        while producer.presign(issuer, responder) == 2000:
            pass
        authority = issuer.record
        signed = vouch.ocsp_store.get(authority.id, issued.serial)
        assert signed is not None
        assert signed.next_update - signed.this_update == dt.timedelta(seconds=_seconds(validity))
        clock.advance(due - dt.timedelta(minutes=1))
        assert producer.presign(issuer, responder) == 0  # not due yet
        clock.advance(dt.timedelta(minutes=2))
        assert producer.presign(issuer, responder) >= 1
        fresh = vouch.ocsp_store.get(authority.id, issued.serial)
        assert fresh is not None
        assert fresh.this_update == signed.this_update + due + dt.timedelta(minutes=1)
    finally:
        vouch.close()


def _seconds(duration: str) -> int:
    unit = {"d": 86_400, "h": 3_600}[duration[-1]]
    return int(duration[:-1]) * unit

"""OCSP production in process: responders renewed on their own, responses that never outlive
them, pre-signing, and on-demand answers (unknown, nonce, SHA-256 CertID)."""

from __future__ import annotations

import datetime as dt
import logging
import shutil
import sqlite3
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from tests.conftest import PASSPHRASE, make_home, passphrase

from vouch.clock import FixedClock
from vouch.server.tls import TlsFiles, issue_tls_certificate, needs_renewal
from vouch.services.authority import IssuanceRequest, IssuedCertificate
from vouch.services.ocsp import KnownIssuer, Responder
from vouch.store.records import AuthorityRecord
from vouch.wiring import DEFAULT_LINT_ALLOW, Vouch
from vouch.x509.names import parse_name
from vouch.x509.ocsp import parse_request
from vouch.x509.serials import format_serial

START = dt.datetime(2026, 11, 1, 12, 0, tzinfo=dt.UTC)


def _vouch(tmp_path: Path) -> tuple[Vouch, FixedClock]:
    clock = FixedClock(START)
    make_home(tmp_path / "home", clock=clock, lint_allow=list(DEFAULT_LINT_ALLOW)).close()
    return Vouch(tmp_path / "home", passphrase=passphrase, clock=clock), clock


def _issue(vouch: Vouch, name: str) -> IssuedCertificate:
    key = ec.generate_private_key(ec.SECP256R1())
    return vouch.authority().issue(
        IssuanceRequest(key.public_key(), (parse_name(name),), "tls-server")
    )


def _request(
    issued: IssuedCertificate, algorithm: hashes.HashAlgorithm, nonce: bytes | None = None
) -> bytes:
    builder = ocsp.OCSPRequestBuilder().add_certificate(
        issued.certificate, issued.chain[0], algorithm
    )
    if nonce is not None:
        builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
    from cryptography.hazmat.primitives import serialization

    return builder.build().public_bytes(serialization.Encoding.DER)


def test_responder_is_renewed_at_half_life_and_bounds_responses(tmp_path: Path) -> None:
    vouch, clock = _vouch(tmp_path)
    try:
        producer = vouch.ocsp_producer
        authority = vouch.store.get_authority("issuing")
        key = vouch.ca_key(authority)
        first = producer.responder(authority, ca_key=key)
        assert first is not None
        assert producer.responder(authority, ca_key=key) is first
        eku = first.certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert x509.oid.ExtendedKeyUsageOID.OCSP_SIGNING in eku
        first.certificate.extensions.get_extension_for_class(x509.OCSPNoCheck)
        assert first.certificate.not_valid_after_utc - START <= dt.timedelta(days=14)
        clock.advance(dt.timedelta(days=8))  # past half of the 14-day validity
        second = producer.responder(authority, ca_key=key)
        assert (
            second is not None
            and second.certificate.serial_number != first.certificate.serial_number
        )
        issued = _issue(vouch, "bounded.example.com")
        [issuer] = producer.issuers()
        assert producer.presign(issuer, second) >= 1
        row = vouch.ocsp_store.get(authority.id, issued.serial)
        assert row is not None and row.status == "good"
        assert row.next_update <= second.not_after
        response = ocsp.load_der_ocsp_response(row.der or b"")
        assert response.certificates[0] == second.certificate
    finally:
        vouch.close()


def test_on_demand_answers(tmp_path: Path) -> None:
    vouch, _ = _vouch(tmp_path)
    try:
        producer = vouch.ocsp_producer
        authority = vouch.store.get_authority("issuing")
        producer.responder(authority, ca_key=vouch.ca_key(authority))
        issued = _issue(vouch, "demand.example.com")
        parsed = parse_request(_request(issued, hashes.SHA256(), nonce=b"0123456789abcdef"))
        assert parsed is not None
        response = ocsp.load_der_ocsp_response(producer.answer(parsed))
        assert response.certificate_status == ocsp.OCSPCertStatus.GOOD
        assert response.hash_algorithm.name == "sha256"
        assert (
            response.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce
            == b"0123456789abcdef"
        )
        vouch.revoker(publish=False).revoke(issued.serial, "keyCompromise")
        revoked = ocsp.load_der_ocsp_response(producer.answer(parsed))
        assert revoked.certificate_status == ocsp.OCSPCertStatus.REVOKED
        assert revoked.revocation_reason == x509.ReasonFlags.key_compromise
        # A serial vouch never issued is never "good".
        unknown_request = (
            ocsp.OCSPRequestBuilder()
            .add_certificate_by_hash(parsed.name_hash, parsed.key_hash, 0x5EED, hashes.SHA256())
            .build()
        )
        from cryptography.hazmat.primitives import serialization

        unknown = parse_request(unknown_request.public_bytes(serialization.Encoding.DER))
        assert unknown is not None
        answer = ocsp.load_der_ocsp_response(producer.answer(unknown))
        assert answer.certificate_status == ocsp.OCSPCertStatus.UNKNOWN
        # An issuer vouch does not run gets "unauthorized".
        stranger = parse_request(
            ocsp.OCSPRequestBuilder()
            .add_certificate_by_hash(b"\x01" * 32, b"\x02" * 32, 5, hashes.SHA256())
            .build()
            .public_bytes(serialization.Encoding.DER)
        )
        assert stranger is not None
        refused = ocsp.load_der_ocsp_response(producer.answer(stranger))
        assert refused.response_status == ocsp.OCSPResponseStatus.UNAUTHORIZED
    finally:
        vouch.close()


def test_server_tls_certificate_renews_on_its_own(tmp_path: Path) -> None:
    vouch, clock = _vouch(tmp_path)
    try:
        files = TlsFiles.under(vouch.home)
        names = ["localhost", "127.0.0.1"]
        assert needs_renewal(files, names, clock.now())
        issue_tls_certificate(vouch, names, files)
        assert (files.key.stat().st_mode & 0o077) == 0
        assert not needs_renewal(files, names, clock.now())
        assert needs_renewal(files, ["localhost"], clock.now())  # other names: a new one
        # Its CA no longer issues (retired in a rollover or an incident): a new one at once.
        issuing = x509.load_der_x509_certificate(vouch.authority().ca.record.certificate)
        root = x509.load_pem_x509_certificate((vouch.home / "root.pem").read_bytes())
        assert not needs_renewal(files, names, clock.now(), [issuing])
        assert needs_renewal(files, names, clock.now(), [root])
        clock.advance(dt.timedelta(days=21))  # two thirds of the 30-day default
        assert needs_renewal(files, names, clock.now())
    finally:
        vouch.close()


def _presigned(vouch: Vouch) -> tuple[AuthorityRecord, KnownIssuer, Responder]:
    """The issuing CA, its issuer entry and responder, with what make_home issued pre-signed."""
    producer = vouch.ocsp_producer
    authority = vouch.store.get_authority("issuing")
    responder = producer.responder(authority, ca_key=vouch.ca_key(authority))
    assert responder is not None
    [issuer] = producer.issuers()
    while producer.presign(issuer, responder) == 2000:
        pass
    return authority, issuer, responder


def test_first_responses_can_wait_but_revocations_cannot(tmp_path: Path) -> None:
    vouch, _ = _vouch(tmp_path)
    try:
        producer = vouch.ocsp_producer
        authority, issuer, responder = _presigned(vouch)
        issued = [_issue(vouch, f"n{i}.example.com") for i in range(3)]
        assert producer.presign(issuer, responder, first_limit=0) == 0
        assert producer.presign(issuer, responder, first_limit=1) == 1
        assert vouch.ocsp_store.get(authority.id, issued[0].serial) is not None  # oldest first
        assert producer.presign(issuer, responder) == 2
        vouch.revoker(publish=False).revoke(issued[1].serial, "keyCompromise")
        newer = _issue(vouch, "n3.example.com")
        # The revocation is signed even while first responses wait; the new one waits.
        assert producer.presign(issuer, responder, first_limit=0) == 1
        row = vouch.ocsp_store.get(authority.id, issued[1].serial)
        assert row is not None and row.status == "revoked"
        assert vouch.ocsp_store.get(authority.id, newer.serial) is None
        # Until it is pre-signed, the new certificate is answered on demand, and kept.
        parsed = parse_request(_request(newer, hashes.SHA1()))
        assert parsed is not None
        answer = ocsp.load_der_ocsp_response(producer.answer(parsed))
        assert answer.certificate_status == ocsp.OCSPCertStatus.GOOD
        assert vouch.ocsp_store.get(authority.id, newer.serial) is not None
        # Not past the limit: a stale and a missing one in one pass of limit 1 take the stale.
        vouch.revoker(publish=False).revoke(issued[2].serial, "superseded")
        last = _issue(vouch, "n4.example.com")
        assert producer.presign(issuer, responder, limit=1) == 1
        assert vouch.ocsp_store.get(authority.id, last.serial) is None
        assert producer.presign(issuer, responder, limit=1) == 1
        assert vouch.ocsp_store.get(authority.id, last.serial) is not None
    finally:
        vouch.close()


def test_a_busy_server_presigns_a_bounded_share_of_new_certificates(tmp_path: Path) -> None:
    from vouch.server import state as server_state

    vouch, _ = _vouch(tmp_path)
    try:
        authority, _, _ = _presigned(vouch)
        key = ec.generate_private_key(ec.SECP256R1()).public_key()
        wanted = server_state.FIRST_WHILE_ISSUING + 40
        requests = [
            IssuanceRequest(key, (parse_name(f"b{i}.example.com"),), "tls-server")
            for i in range(wanted)
        ]
        issued = vouch.authority().issue_batch(requests)
        serials = [r.serial for r in issued if isinstance(r, IssuedCertificate)]
        assert len(serials) == wanted
        state = server_state.ServerState(vouch)

        def signed() -> int:
            return sum(vouch.ocsp_store.get(authority.id, s) is not None for s in serials)

        state.note_issuance()
        assert state.issuing()
        state.produce()
        assert signed() == server_state.FIRST_WHILE_ISSUING
        state._issued_at -= server_state.ISSUING_QUIET  # quiet again: the rest at once
        assert not state.issuing()
        state.produce()
        assert signed() == wanted
    finally:
        vouch.close()


def test_held_back_responses_are_caught_up_once_issuance_pauses(tmp_path: Path) -> None:
    import asyncio
    import time

    from vouch.server import state as server_state

    vouch, _ = _vouch(tmp_path)
    try:
        state = server_state.ServerState(vouch)

        def waited(interval: float) -> float:
            began = time.monotonic()
            asyncio.run(state._until_next_pass(asyncio.Event(), interval))
            return time.monotonic() - began

        assert waited(0.3) >= 0.29  # nothing held back: the whole interval
        state._held_back = True
        state._issued_at = time.monotonic() - server_state.ISSUING_QUIET + 0.2
        assert waited(30) < 2  # issuance paused within the interval: the pass comes then
        state._held_back = False
        state.note_issuance()
        assert waited(0.5) >= 0.49
    finally:
        vouch.close()


def _second_node(vouch: Vouch, home: Path, *, keys: bool = True) -> Vouch:
    """Another node on the same store, with its own keys/ocsp (no shared storage); ``keys``:
    with a copy of the CA keys, or none."""
    ignore = shutil.ignore_patterns("ocsp", "*.db*", "serve") if keys else None
    shutil.copytree(vouch.home, home, ignore=ignore or shutil.ignore_patterns("keys", "*.db*"))
    if not keys:
        (home / "keys").mkdir(mode=0o700)
    config = home / "vouch.toml"
    text = config.read_text(encoding="utf-8")
    shared = f"sqlite:///{vouch.home / 'vouch.db'}"
    assert 'url = "sqlite:///vouch.db"' in text
    config.write_text(text.replace('url = "sqlite:///vouch.db"', f'url = "{shared}"'), "utf-8")
    return Vouch(home, passphrase=passphrase, clock=vouch.clock)


def test_a_node_without_the_responder_key_makes_its_own(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    vouch, _ = _vouch(tmp_path)
    other = _second_node(vouch, tmp_path / "node2")
    keyless = _second_node(vouch, tmp_path / "node3", keys=False)
    try:
        authority = vouch.store.get_authority("issuing")
        first = vouch.ocsp_producer.responder(authority, ca_key=vouch.ca_key(authority))
        assert first is not None
        issued = _issue(vouch, "node.example.com")
        parsed = parse_request(_request(issued, hashes.SHA256(), nonce=b"fedcba9876543210"))
        assert parsed is not None
        # Node 2 cannot load node 1's responder key: it makes and records a responder of its own.
        answer = ocsp.load_der_ocsp_response(other.ocsp_producer.answer(parsed))
        assert answer.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL
        assert answer.certificate_status == ocsp.OCSPCertStatus.GOOD
        [signer] = answer.certificates
        assert signer.serial_number != first.certificate.serial_number
        assert len(list((other.home / "keys" / "ocsp").iterdir())) == 1
        assert len(list((vouch.home / "keys" / "ocsp").iterdir())) == 1
        [recorded] = vouch.revocations.find_issued(format_serial(signer.serial_number), "issuing")
        assert recorded.profile == "ocsp-responder"
        # Node 1 keeps its own (it cannot load node 2's, which is newer), and node 2 its own.
        again = vouch.ocsp_producer.responder(authority)
        assert again is not None and again.certificate == first.certificate
        again_other = other.ocsp_producer.responder(authority)
        assert again_other is not None and again_other.certificate == signer
        # A node that holds neither a responder key nor the CA key says "try later", and goes on.
        with caplog.at_level(logging.WARNING, logger="vouch.services.ocsp"):
            for _ in range(3):
                refused = ocsp.load_der_ocsp_response(keyless.ocsp_producer.answer(parsed))
                assert refused.response_status == ocsp.OCSPResponseStatus.TRY_LATER
        # Said once, with the reason, not on every request; no secret in it.
        [warning] = [r.getMessage() for r in caplog.records if "can be made here" in r.message]
        assert "issuing" in warning and "does not exist" in warning, warning
        assert PASSPHRASE.decode() not in warning
        assert not (keyless.home / "keys" / "ocsp").exists()
    finally:
        keyless.close()
        other.close()
        vouch.close()


def test_a_responder_that_cannot_be_recorded_leaves_no_key_and_is_tried_again_later(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store refuses the write (another writer holds SQLite's lock): the new responder key
    is taken back, the request gets tryLater, and the next requests do not try again at once."""
    from vouch.services import ocsp as ocsp_service
    from vouch.store import engine

    monkeypatch.setattr(engine, "SQLITE_BUSY_TIMEOUT_MS", 200)  # fail fast, not after 10 s
    monkeypatch.setattr(ocsp_service, "RESPONDER_RETRY", 1.0)
    vouch, _ = _vouch(tmp_path)
    other = _second_node(vouch, tmp_path / "node2")
    try:
        issued = _issue(vouch, "locked.example.com")
        parsed = parse_request(_request(issued, hashes.SHA256(), nonce=b"lockedlockedlock"))
        assert parsed is not None
        writer = sqlite3.connect(vouch.home / "vouch.db", isolation_level=None)
        writer.execute("BEGIN IMMEDIATE")
        try:
            with caplog.at_level(logging.WARNING, logger="vouch.services.ocsp"):
                for _ in range(3):
                    answer = ocsp.load_der_ocsp_response(other.ocsp_producer.answer(parsed))
                    assert answer.response_status == ocsp.OCSPResponseStatus.TRY_LATER
        finally:
            writer.execute("ROLLBACK")
            writer.close()
        failed = [r.getMessage() for r in caplog.records if "could be made here" in r.message]
        assert len(failed) == 1, [r.getMessage() for r in caplog.records]  # once, not per request
        assert list((other.home / "keys" / "ocsp").glob("*")) == []  # the key was taken back
        time.sleep(1.1)
        answer = ocsp.load_der_ocsp_response(other.ocsp_producer.answer(parsed))
        assert answer.certificate_status == ocsp.OCSPCertStatus.GOOD
        assert len(list((other.home / "keys" / "ocsp").glob("*.key.pem"))) == 1
    finally:
        other.close()
        vouch.close()

"""Provisioners from vouch.toml and from the store (made through the API): how they combine,
what a node does with a stored one that does not build or whose name vouch.toml also declares,
and that a reload that fails changes nothing. On SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import os
import threading
import time

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from vouch.config import ProvisionerSettings
from vouch.errors import BadInput, Conflict, NotFound
from vouch.services.admins import Admin
from vouch.store.api import StoredProvisioner
from vouch.store.records import NewEvent
from vouch.wiring import Vouch


def _pem() -> str:
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def _declare(vouch: Vouch, name: str) -> None:
    """A vouch.toml entry, as an operator would write it."""
    (vouch.home / "provisioners").mkdir(exist_ok=True)
    (vouch.home / "provisioners" / f"{name}.pub.pem").write_text(_pem())
    with (vouch.home / "vouch.toml").open("a") as config:
        config.write(
            f'\n[[provisioners]]\nname = "{name}"\npublic_key = "provisioners/{name}.pub.pem"\n'
        )


def test_made_through_the_api_then_removed(store_home: Vouch) -> None:
    vouch = store_home
    admin = vouch.api_provisioners()
    made = admin.create(
        ProvisionerSettings(name="bot", policy={"allowed_dns_suffixes": ["bots.example.com"]}),
        _pem(),
        by=Admin(1, "alice", "admin"),
    )
    assert made.name == "bot" and made.key_ref is None
    assert [p.name for p in vouch.provisioners.all()] == ["bot"]  # adopted at once
    with pytest.raises(Conflict):
        admin.create(ProvisionerSettings(name="bot"), _pem())
    for settings, pem in (
        (
            ProvisionerSettings(name="rsa"),
            "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----",
        ),
        (ProvisionerSettings(name="prof", profiles=["nope"]), _pem()),
        (ProvisionerSettings(name="acme", type="acme"), _pem()),
        (ProvisionerSettings(name="pol", policy={"allowed_ip_ranges": ["10.0.0.0/99"]}), _pem()),
        (ProvisionerSettings(name="uni"), "caf\u00e9"),
    ):
        with pytest.raises(BadInput):
            admin.create(settings, pem)
    assert [r.name for r in vouch.api_store.provisioners()] == ["bot"]
    admin.remove("bot")
    assert vouch.provisioners.all() == []
    with pytest.raises(NotFound):
        admin.remove("bot")


def test_a_stored_one_that_does_not_build_or_clashes_is_left_out(store_home: Vouch) -> None:
    vouch = store_home
    _declare(vouch, "ci")
    vouch.api_provisioners().create(ProvisionerSettings(name="good"), _pem())
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    # Rows a later version might not read, or one named like a vouch.toml entry (another
    # node's file may declare what this one made): none may stop a node.
    bad_policy = ProvisionerSettings(
        name="bad", public_key="api:bad", policy={"allowed_ip_ranges": ["x"]}
    )
    for row in (
        StoredProvisioner("bad", bad_policy.model_dump_json(), _pem(), now),
        StoredProvisioner("junk", "{not json", _pem(), now),
        StoredProvisioner(
            "ci", ProvisionerSettings(name="ci", public_key="api:ci").model_dump_json(), _pem(), now
        ),
    ):
        vouch.api_store.add_provisioner(row, NewEvent("provisioner.created", row.name, {}))
    assert vouch.reload_provisioners(read_config=True)
    in_force = {p.name: p for p in vouch.provisioners.all()}
    assert sorted(in_force) == ["ci", "good"]
    assert in_force["ci"].settings is not None
    assert in_force["ci"].settings["public_key"] == "provisioners/ci.pub.pem"  # vouch.toml's
    problems = " | ".join(vouch.provisioner_problems)
    assert "bad in the store is left out" in problems
    assert "junk in the store is left out" in problems
    assert "vouch.toml declares one of that name" in problems
    # A fresh node starts with the same set.
    again = Vouch(vouch.home, passphrase=vouch.passphrase)
    try:
        assert sorted(p.name for p in again.provisioners.all()) == ["ci", "good"]
    finally:
        again.close()


def test_a_reload_that_fails_changes_nothing(store_home: Vouch) -> None:
    vouch = store_home
    _declare(vouch, "ci")
    assert vouch.reload_provisioners(read_config=True)
    before = vouch.provisioners.all()
    # A vouch.toml entry whose public key file is gone: the reload is refused as a whole.
    with (vouch.home / "vouch.toml").open("a") as config:
        config.write('\n[[provisioners]]\nname = "lost"\npublic_key = "provisioners/lost.pem"\n')
    with pytest.raises(Exception, match="cannot read the provisioner public key"):
        vouch.reload_provisioners(read_config=True)
    assert vouch.provisioners.all() == before
    # A change in the store is still adopted, on top of the entries that last loaded.
    vouch.api_provisioners().create(ProvisionerSettings(name="bot"), _pem())
    assert sorted(p.name for p in vouch.provisioners.all()) == ["bot", "ci"]
    assert not vouch.reload_provisioners(read_config=False)  # nothing new since


def test_a_store_reload_racing_a_config_reload_keeps_what_the_config_removed(
    store_home: Vouch,
) -> None:
    """An API change adopted while vouch.toml's reload is under way builds on what that reload
    adopted: a provisioner removed from vouch.toml (a leaked key) does not come back."""
    vouch = store_home
    _declare(vouch, "ci")
    assert vouch.reload_provisioners(read_config=True)
    vouch.api_store.add_provisioner(
        StoredProvisioner(
            "bot", ProvisionerSettings(name="bot", public_key="api:bot").model_dump_json(),
            _pem(), dt.datetime.now(dt.UTC).replace(microsecond=0),
        ),
        NewEvent("provisioner.created", "bot", {}),
    )  # fmt: skip
    api_reload = threading.Thread(target=lambda: vouch.reload_provisioners(read_config=False))
    with vouch._provisioners_lock:  # the config reload holds it: the API's waits
        api_reload.start()
        time.sleep(0.3)
        vouch._declared_provisioners = []  # what that reload adopts: ci removed from the file
    api_reload.join(10)
    assert [p.name for p in vouch.provisioners.all()] == ["bot"]


def test_a_vouch_toml_changed_just_now_is_adopted_once_it_has_rested(store_home: Vouch) -> None:
    """A file caught mid-write could hold a [[provisioners]] entry without its limits: a
    running server adopts a changed vouch.toml only once it has stayed unchanged a moment."""
    from vouch.server.state import CONFIG_SETTLE, ServerState

    vouch = store_home
    state = ServerState(vouch)
    state._watch_config()  # the file as it was at start
    _declare(vouch, "ci")
    state._watch_config()
    assert [p.name for p in vouch.provisioners.all()] == []  # just written: not yet
    config = vouch.home / "vouch.toml"
    rested = time.time() - CONFIG_SETTLE - 1
    os.utime(config, (rested, rested))
    state._watch_config()
    assert [p.name for p in vouch.provisioners.all()] == ["ci"]

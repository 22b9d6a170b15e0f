"""Key references for new CA keys, activation and rollover of intermediates (both stores)."""

from __future__ import annotations

import datetime as dt

import pytest

from vouch.errors import ConfigError, Conflict
from vouch.keys.base import KeyRef, new_key_ref
from vouch.services.key_health import ca_keys, check_key
from vouch.wiring import Vouch


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("file", "file:keys/issuing-2.key.pem"),
        ("file:", "file:keys/issuing-2.key.pem"),
        ("file:/srv/keys/x.pem", "file:/srv/keys/x.pem"),
        ("pkcs11:token=hsm", "pkcs11:token=hsm;object=issuing-2"),
        ("pkcs11:token=hsm;", "pkcs11:token=hsm;object=issuing-2"),
        ("pkcs11:token=hsm;object=k7", "pkcs11:token=hsm;object=k7"),
        ("pkcs11:token=hsm;id=0a", "pkcs11:token=hsm;id=0a"),
    ],
)
def test_new_key_refs(spec: str, expected: str) -> None:
    assert str(new_key_ref(spec, "issuing-2")) == expected


@pytest.mark.parametrize("spec", ["pkcs11", "pkcs11:", "nonsense", ""])
def test_bad_key_backends(spec: str) -> None:
    with pytest.raises(ConfigError):
        new_key_ref(spec, "x")


def test_rollover_switches_default_issuance(store_home: Vouch) -> None:
    vouch = store_home
    created = vouch.rollover_intermediate(
        "issuing",
        new_name="issuing-2",
        key_type="ec-p256",
        validity=dt.timedelta(days=365),
        root_key_dir=None,
    )
    assert created.record.status == "active"
    assert vouch.store.get_authority("issuing").status == "retired"
    assert vouch.issuing_ca().record.name == "issuing-2"  # the default follows the rollover
    with pytest.raises(Conflict, match="retired"):
        vouch.issuing_ca("issuing")
    with pytest.raises(Conflict):
        vouch.ca_admin().activate("issuing-2", replaces="issuing")  # not a standby any more
    [event] = [data for _, _, _, data in vouch.store.list_events("ca.rolled-over")]
    assert event["old"] == "issuing" and event["new"] == "issuing-2"
    assert not vouch.store.list_events("ca.key-backend-changed")  # file to file

    # A standby activated in place of the new one: the chain goes on.
    vouch.create_intermediate(
        "issuing-3",
        key_type="ec-p256",
        validity=dt.timedelta(days=30),
        root_key_dir=None,
        status="standby",
    )
    vouch.ca_admin().activate("issuing-3", replaces="issuing-2")
    assert vouch.issuing_ca().record.name == "issuing-3"


def test_key_checks(home: Vouch) -> None:
    keys = {k.ca: k for k in ca_keys(home.store.list_authorities())}
    assert (
        keys["issuing"].ref == "file:keys/issuing.key.pem" and len(keys["root"].spki_sha256) == 64
    )
    issuing = home.store.get_authority("issuing")
    assert check_key(issuing, home.keys).ok
    # A key reference that points at another CA's key signs, but is caught.
    swapped = type(issuing)(**{**vars(issuing), "key_ref": "file:keys/root.key.pem"})
    check = check_key(swapped, home.keys)
    assert not check.ok and check.error is not None and "not as the key" in check.error.message
    missing = type(issuing)(**{**vars(issuing), "key_ref": str(KeyRef("file", "keys/nope.pem"))})
    result = check_key(missing, home.keys)
    assert not result.ok and result.error is not None and result.error.category == "unavailable"

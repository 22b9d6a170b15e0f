"""pkilint's internal-name checks still fire when its validators share one Public Suffix List."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from pathlib import Path

import publicsuffixlist
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from pkilint.common import alternative_name

from vouch.x509.lint import LintProfile, PkilintLinter


def _leaf(name: str) -> bytes:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    issuer = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Test CA")])
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=True)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    )
    return builder.sign(ca_key, hashes.SHA256()).public_bytes(Encoding.DER)


def test_internal_names_are_found_and_public_ones_are_not() -> None:
    linter = PkilintLinter()
    internal = {f.code for f in linter.lint(_leaf("printer.corp"), LintProfile.CABF_SERVERAUTH)}
    public = {f.code for f in linter.lint(_leaf("www.example.com"), LintProfile.CABF_SERVERAUTH)}
    assert "cabf.internal_domain_name" in internal
    assert "cabf.internal_domain_name" not in public
    # The library's module is left as it was found.
    assert alternative_name.publicsuffixlist is publicsuffixlist


def test_iso639_is_loaded_only_when_used() -> None:
    """Linting a certificate does not load iso639's language table (most of a second per
    process); pkilint's ETSI validator still gets the real module when it asks for it."""
    script = """
import sys
from tests.unit.test_lint_psl import _leaf
from vouch.x509.lint import LintProfile, PkilintLinter
codes = {f.code for f in PkilintLinter().lint(_leaf("printer.corp"), LintProfile.CABF_SERVERAUTH)}
assert "cabf.internal_domain_name" in codes, codes
assert "iso639.language" not in sys.modules, "iso639 was loaded"
from pkilint.etsi import en_319_412_5
assert en_319_412_5.iso639.Language.from_part1("de").name == "German"
assert "iso639.language" in sys.modules
print("ok")
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr

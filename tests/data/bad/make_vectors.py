#!/usr/bin/env python3
"""Regenerate the bad-input corpus: CSR files that vouch must refuse, each with one defect.

    python tests/data/bad/make_vectors.py            # (re)writes the files next to this script
    python tests/data/bad/make_vectors.py --out DIR  # writes them to DIR instead

Needs only the standard library and ``cryptography``; ``openssl`` is used, when on PATH, to
cross-check a few vectors. Every key comes from a seeded PRNG (RSA primes by our own Miller-Rabin,
EC keys by ``derive_private_key``) and every signature is deterministic (RSA PKCS#1 v1.5, ECDSA
per RFC 6979), so a rerun rewrites byte-identical files. ``README.md`` says what each file is.

The huge inputs (a CSR with 10,000 names, a 5 MB file) are not committed: the tests build them
at run time with ``many_names_csr`` and ``five_megabytes`` below.
"""

from __future__ import annotations

import argparse
import math
import random
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import ExtensionOID, NameOID

HERE = Path(__file__).resolve().parent
SUBJECT_ORG = "vouch bad-input corpus"
PLACEHOLDER = "aaaa.example.com"
NUL_NAME = "aa\x00a.example.com"  # same length as PLACEHOLDER: patched into the TBS bytes
# 2.5.29.99 (unassigned) encodes to as many bytes as 2.5.29.17 (subjectAltName).
SPARE_EXTENSION_OID = x509.ObjectIdentifier("2.5.29.99")


def _small_primes(limit: int) -> list[int]:
    sieve = bytearray([1]) * (limit + 1)
    sieve[0:2] = b"\x00\x00"
    for i in range(2, math.isqrt(limit) + 1):
        if sieve[i]:
            sieve[i * i :: i] = bytearray(len(sieve[i * i :: i]))
    return [i for i, flag in enumerate(sieve) if flag]


SMALL_PRIMES = _small_primes(2000)
# The primes of the ROCA fingerprint, as in vouch.x509.keypolicy._ROCA_PRIMES: 3 .. 167.
ROCA_PRIMES = [p for p in SMALL_PRIMES if 3 <= p <= 167]
ROCA_GENERATOR = 65537


# -- primes and RSA keys -------------------------------------------------------------------------


def is_probable_prime(n: int, rng: random.Random, rounds: int = 40) -> bool:
    """Trial division, then Miller-Rabin with ``rounds`` bases drawn from ``rng``."""
    if n < 2:
        return False
    for p in SMALL_PRIMES:
        if n % p == 0:
            return n == p
    d, s = n - 1, 0
    while d % 2 == 0:
        d //= 2
        s += 1
    for _ in range(rounds):
        x = pow(rng.randrange(2, n - 1), d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = pow(x, 2, n)
            if x == n - 1:
                break
        else:
            return False
    return True


def random_prime(rng: random.Random, bits: int, e: int) -> int:
    """A ``bits``-bit prime with its top two bits set (so p*q has 2*bits bits), gcd(e, p-1) = 1."""
    while True:
        candidate = rng.getrandbits(bits) | (3 << (bits - 2)) | 1
        if math.gcd(e, candidate - 1) == 1 and is_probable_prime(candidate, rng):
            return candidate


def next_prime(n: int, rng: random.Random, e: int) -> int:
    """The smallest prime >= n with gcd(e, p-1) = 1."""
    candidate = n | 1
    while not (math.gcd(e, candidate - 1) == 1 and is_probable_prime(candidate, rng)):
        candidate += 2
    return candidate


def rsa_key(p: int, q: int, e: int = 65537) -> rsa.RSAPrivateKey:
    """The RSA key of primes p, q and exponent e, with d and the CRT values computed here."""
    if p == q or math.gcd(e, (p - 1) * (q - 1)) != 1:
        raise ValueError("e must be invertible modulo (p-1)(q-1), and p != q")
    n = p * q
    d = pow(e, -1, math.lcm(p - 1, q - 1))
    numbers = rsa.RSAPrivateNumbers(
        p=p,
        q=q,
        d=d,
        dmp1=d % (p - 1),
        dmq1=d % (q - 1),
        iqmp=pow(q, -1, p),
        public_numbers=rsa.RSAPublicNumbers(e, n),
    )
    return numbers.private_key()


def seeded_rsa_key(seed: str, bits: int, e: int = 65537) -> rsa.RSAPrivateKey:
    rng = random.Random(seed)
    p = random_prime(rng, bits // 2, e)
    q = random_prime(rng, bits // 2, e)
    while q == p:
        q = random_prime(rng, bits // 2, e)
    return rsa_key(p, q, e)


def roca_key(seed: str, bits: int = 2048) -> rsa.RSAPrivateKey:
    """An RSA key with the ROCA (CVE-2017-15361) structure: p, q = k*M + (65537^a mod M).

    M is the product of ROCA_PRIMES, so modulo each of them the modulus is a power of 65537:
    the fingerprint that vouch tests for.
    """
    rng = random.Random(seed)
    m = math.prod(ROCA_PRIMES)
    half = bits // 2
    low, high = 3 << (half - 2), (1 << half) - 1

    def prime() -> int:
        while True:
            k = rng.randrange(-(-low // m), high // m)
            candidate = k * m + pow(ROCA_GENERATOR, rng.getrandbits(64), m)
            if (
                low <= candidate <= high
                and math.gcd(65537, candidate - 1) == 1
                and is_probable_prime(candidate, rng)
            ):
                return candidate

    p = prime()
    q = prime()
    while q == p:
        q = prime()
    return rsa_key(p, q)


def fermat_key(seed: str, bits: int = 2048) -> rsa.RSAPrivateKey:
    """An RSA key whose primes differ by less than 2^100: Fermat's method factors it at once."""
    rng = random.Random(seed)
    half = bits // 2
    p = next_prime(rng.getrandbits(half) | (3 << (half - 2)), rng, 65537)
    q = next_prime(p + 2 + rng.getrandbits(90), rng, 65537)
    return rsa_key(p, q)


def is_roca_fingerprint(n: int) -> bool:
    for p in ROCA_PRIMES:
        powers, value = {1}, ROCA_GENERATOR % p
        while value not in powers:
            powers.add(value)
            value = value * ROCA_GENERATOR % p
        if n % p not in powers:
            return False
    return True


def seeded_ec_key(seed: str, curve: ec.EllipticCurve) -> ec.EllipticCurvePrivateKey:
    # 200 random bits are below the order of every curve used here.
    return ec.derive_private_key(random.Random(seed).getrandbits(200) + 1, curve)


# -- a tiny DER reader/writer, enough to take a CSR apart and put it back together -----------------


def der_length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def der_tlv(tag: int, content: bytes) -> bytes:
    return bytes([tag]) + der_length(len(content)) + content


def der_header(data: bytes, offset: int) -> tuple[int, int, int]:
    """(tag, start of contents, end of the element) of the DER element at ``offset``."""
    tag = data[offset]
    first = data[offset + 1]
    if first < 0x80:
        return tag, offset + 2, offset + 2 + first
    count = first & 0x7F
    length = int.from_bytes(data[offset + 2 : offset + 2 + count], "big")
    start = offset + 2 + count
    return tag, start, start + length


def csr_parts(der: bytes) -> tuple[bytes, bytes, tuple[int, int]]:
    """(CertificationRequestInfo, AlgorithmIdentifier, (start, end) of the signature bits)."""
    tag, start, end = der_header(der, 0)
    if tag != 0x30 or end != len(der):
        raise ValueError("not a DER SEQUENCE")
    _, _, tbs_end = der_header(der, start)
    _, _, alg_end = der_header(der, tbs_end)
    tag, bits_start, bits_end = der_header(der, alg_end)
    if tag != 0x03:
        raise ValueError("no signature BIT STRING")
    # The first content byte of a BIT STRING counts the unused bits; the signature follows it.
    return der[start:tbs_end], der[tbs_end:alg_end], (bits_start + 1, bits_end)


# AlgorithmIdentifier sha1WithRSAEncryption (1.2.840.113549.1.1.5) with NULL parameters.
SHA1_WITH_RSA = bytes.fromhex("300d06092a864886f70d0101050500")


def sign(
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey,
    data: bytes,
    digest: hashes.HashAlgorithm,
) -> bytes:
    if isinstance(key, rsa.RSAPrivateKey):
        return key.sign(data, padding.PKCS1v15(), digest)
    return key.sign(data, ec.ECDSA(digest, deterministic_signing=True))


def resign(
    template: bytes,
    tbs: bytes,
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey,
    *,
    digest: hashes.HashAlgorithm | None = None,
    algorithm: bytes | None = None,
) -> bytes:
    """A CSR of ``tbs`` signed by ``key``: SHA-256 and the ``template``'s algorithm unless told."""
    if algorithm is None:
        _, algorithm, _ = csr_parts(template)
    signature = sign(key, tbs, digest or hashes.SHA256())
    return der_tlv(0x30, tbs + algorithm + der_tlv(0x03, b"\x00" + signature))


def patch_tbs(
    csr_der: bytes,
    old: bytes,
    new: bytes,
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey,
) -> bytes:
    """Replace ``old`` by ``new`` (same length, found exactly once) in the TBS and re-sign it."""
    if len(old) != len(new):
        raise ValueError("a patch must keep the length")
    tbs, _, _ = csr_parts(csr_der)
    if tbs.count(old) != 1:
        raise ValueError(f"{old!r} occurs {tbs.count(old)} times in the TBS")
    return resign(csr_der, tbs.replace(old, new), key)


# -- CSRs ------------------------------------------------------------------------------------------


def make_csr(
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey,
    names: list[str],
    *,
    extra: list[x509.ExtensionType] | None = None,
) -> x509.CertificateSigningRequest:
    """A CSR for DNS ``names`` (SAN only, no CN), signed deterministically with SHA-256."""
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, SUBJECT_ORG)])
    )
    if names:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False
        )
    for extension in extra or []:
        builder = builder.add_extension(extension, critical=False)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return builder.sign(key, hashes.SHA256(), ecdsa_deterministic=True)
    return builder.sign(key, hashes.SHA256())


def pem(csr: x509.CertificateSigningRequest) -> bytes:
    return csr.public_bytes(serialization.Encoding.PEM)


def der(csr: x509.CertificateSigningRequest) -> bytes:
    return csr.public_bytes(serialization.Encoding.DER)


def ec_key() -> ec.EllipticCurvePrivateKey:
    return seeded_ec_key("vouch-bad/ec-p256", ec.SECP256R1())


def rsa_2048() -> rsa.RSAPrivateKey:
    return seeded_rsa_key("vouch-bad/rsa-2048", 2048)


def good_csr() -> x509.CertificateSigningRequest:
    """The valid CSR the broken ones are cut from."""
    return make_csr(ec_key(), ["good.example.com"])


def many_names_csr(count: int = 10_000) -> bytes:
    """A PEM CSR asking for ``count`` DNS names (generated at test time, not committed)."""
    names = [f"host{i}.example.com" for i in range(count)]
    return pem(make_csr(ec_key(), names))


def five_megabytes() -> bytes:
    """A valid CSR padded with comment lines to 5 MB (generated at test time, not committed)."""
    head = pem(good_csr())
    line = b"# padding: a CSR file is at most 1 MiB\n"
    return head + line * ((5_000_000 - len(head)) // len(line) + 1)


# -- the corpus --------------------------------------------------------------------------------


def v_malformed_pem() -> bytes:
    return (
        b"-----BEGIN CERTIFICATE REQUEST-----\n"
        b"This is not base64 at all: @@@ ### !!! ???\n"
        b"MIIBnot*really*DER==garbage==between==the==armour\n"
        b"-----END CERTIFICATE REQUEST-----\n"
    )


def v_truncated_pem() -> bytes:
    whole = pem(good_csr())
    return whole[: len(whole) // 2]


def v_truncated_der() -> bytes:
    whole = der(good_csr())
    return whole[: len(whole) // 2]


def v_random_bin() -> bytes:
    return random.Random("vouch-bad/random").randbytes(1024)


def v_empty() -> bytes:
    return b""


def v_bad_signature() -> bytes:
    whole = bytearray(der(make_csr(rsa_2048(), ["badsig.example.com"])))
    start, end = csr_parts(bytes(whole))[2]
    whole[(start + end) // 2] ^= 0x01
    return bytes(whole)


def v_rsa_1024() -> bytes:
    return pem(make_csr(seeded_rsa_key("vouch-bad/rsa-1024", 1024), ["rsa1024.example.com"]))


def v_rsa_e3() -> bytes:
    return pem(make_csr(seeded_rsa_key("vouch-bad/rsa-e3", 2048, e=3), ["rsa-e3.example.com"]))


def v_secp256k1() -> bytes:
    key = seeded_ec_key("vouch-bad/secp256k1", ec.SECP256K1())
    return pem(make_csr(key, ["secp256k1.example.com"]))


def v_sha1() -> bytes:
    # cryptography no longer signs CSRs with SHA-1; sign the TBS ourselves, as openssl req -sha1.
    key = rsa_2048()
    template = der(make_csr(key, ["sha1.example.com"]))
    tbs, _, _ = csr_parts(template)
    resigned = resign(template, tbs, key, digest=hashes.SHA1(), algorithm=SHA1_WITH_RSA)
    return pem(x509.load_der_x509_csr(resigned))


def v_wildcard_inner() -> bytes:
    return pem(make_csr(ec_key(), ["www.*.example.com"]))


def v_wildcard_partial() -> bytes:
    return pem(make_csr(ec_key(), ["w*.example.com"]))


def v_denied_name() -> bytes:
    return pem(make_csr(ec_key(), ["bad.denied.example"]))


def v_nul_in_dns() -> bytes:
    key = ec_key()
    template = der(make_csr(key, [PLACEHOLDER]))
    return patch_tbs(template, PLACEHOLDER.encode(), NUL_NAME.encode(), key)


def v_idna_invalid() -> bytes:
    return pem(make_csr(ec_key(), ["xn--zz.example.com"]))


def v_two_csrs() -> bytes:
    return pem(make_csr(ec_key(), ["one.example.com"])) + pem(
        make_csr(ec_key(), ["two.example.com"])
    )


def v_roca() -> bytes:
    return pem(make_csr(roca_key("vouch-bad/roca"), ["roca.example.com"]))


def v_fermat() -> bytes:
    return pem(make_csr(fermat_key("vouch-bad/fermat"), ["fermat.example.com"]))


def v_duplicate_san() -> bytes:
    """Two subjectAltName extensions: the second starts as 2.5.29.99 and is patched to .17."""
    key = ec_key()
    second = x509.UnrecognizedExtension(
        SPARE_EXTENSION_OID,
        x509.SubjectAlternativeName([x509.DNSName("dup2.example.com")]).public_bytes(),
    )
    template = der(make_csr(key, ["dup1.example.com"], extra=[second]))
    return patch_tbs(template, b"\x06\x03\x55\x1d\x63", b"\x06\x03\x55\x1d\x11", key)


def v_edi_party_san() -> bytes:
    """A subjectAltName holding an ediPartyName [5], a GeneralName type few parsers support."""
    edi_party = der_tlv(0xA5, der_tlv(0xA1, der_tlv(0x0C, b"edi.example.com")))
    san = x509.UnrecognizedExtension(
        ExtensionOID.SUBJECT_ALTERNATIVE_NAME, der_tlv(0x30, edi_party)
    )
    return der(make_csr(ec_key(), [], extra=[san]))


def v_version_2() -> bytes:
    """A CSR whose version field is 1 (v2); PKCS#10 knows only version 0 (v1). Re-signed."""
    key = ec_key()
    template = der(make_csr(key, ["version.example.com"]))
    tbs, _, _ = csr_parts(template)
    _, start, _ = der_header(tbs, 0)
    if tbs[start : start + 3] != b"\x02\x01\x00":
        raise ValueError("the CertificationRequestInfo does not start with version 0")
    patched = tbs[:start] + b"\x02\x01\x01" + tbs[start + 3 :]
    return resign(template, patched, key)


def v_uri_bracket() -> bytes:
    """A URI subjectAltName with an unbalanced '[' in its authority."""
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, SUBJECT_ORG)])
    )
    builder = builder.add_extension(
        x509.SubjectAlternativeName([x509.UniformResourceIdentifier("spiffe://example.co[/web")]),
        critical=False,
    )
    return pem(builder.sign(ec_key(), hashes.SHA256(), ecdsa_deterministic=True))


VECTORS: dict[str, Callable[[], bytes]] = {
    "malformed.pem": v_malformed_pem,
    "truncated.pem": v_truncated_pem,
    "truncated.der": v_truncated_der,
    "random.bin": v_random_bin,
    "empty.csr": v_empty,
    "bad-signature.der": v_bad_signature,
    "rsa-1024.pem": v_rsa_1024,
    "rsa-e3.pem": v_rsa_e3,
    "secp256k1.pem": v_secp256k1,
    "sha1.pem": v_sha1,
    "wildcard-inner-label.pem": v_wildcard_inner,
    "wildcard-partial.pem": v_wildcard_partial,
    "denied-name.pem": v_denied_name,
    "nul-in-dns.der": v_nul_in_dns,
    "idna-invalid.pem": v_idna_invalid,
    "two-csrs.pem": v_two_csrs,
    "roca.pem": v_roca,
    "fermat.pem": v_fermat,
    "duplicate-san.der": v_duplicate_san,
    "edi-party-san.der": v_edi_party_san,
    "version-2.der": v_version_2,
    "uri-bracket.pem": v_uri_bracket,
}


# -- self-checks: each file carries the defect it is named for, and only that one ------------------


def _load(data: bytes) -> x509.CertificateSigningRequest:
    if data.startswith(b"-----BEGIN"):
        return x509.load_pem_x509_csr(data)
    return x509.load_der_x509_csr(data)


def _refused_by_parser(data: bytes) -> bool:
    try:
        _load(data)
    except ValueError:
        return True
    return False


def _rsa_numbers(data: bytes) -> rsa.RSAPublicNumbers:
    key = _load(data).public_key()
    assert isinstance(key, rsa.RSAPublicKey)
    return key.public_numbers()


def _san_values(
    data: bytes, kind: type[x509.DNSName | x509.UniformResourceIdentifier]
) -> list[str]:
    san = _load(data).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return san.get_values_for_type(kind)


def _signature_ok(data: bytes) -> bool:
    """Whether the CSR's signature verifies, checked by hand (cryptography refuses SHA-1 CSRs)."""
    csr = _load(data)
    key = csr.public_key()
    digest = csr.signature_hash_algorithm
    assert digest is not None
    try:
        if isinstance(key, rsa.RSAPublicKey):
            key.verify(csr.signature, csr.tbs_certrequest_bytes, padding.PKCS1v15(), digest)
        else:
            assert isinstance(key, ec.EllipticCurvePublicKey)
            key.verify(csr.signature, csr.tbs_certrequest_bytes, ec.ECDSA(digest))
    except InvalidSignature:
        return False
    return True


def check(files: dict[str, bytes]) -> None:
    unparsable = ("malformed.pem", "truncated.pem", "truncated.der", "random.bin")
    for name in unparsable:
        assert _refused_by_parser(files[name]), name
    assert b"-----BEGIN" not in files["random.bin"]
    assert files["empty.csr"] == b""
    end = b"-----END CERTIFICATE REQUEST-----\n"
    blocks = files["two-csrs.pem"].split(end)
    assert len(blocks) == 3 and not blocks[2]
    assert all(_signature_ok(block + end) for block in blocks[:2])
    # Every other file is a well-formed CSR whose signature verifies, but the flipped one.
    for name in files.keys() - {*unparsable, "empty.csr", "two-csrs.pem", "version-2.der"}:
        assert _signature_ok(files[name]) == (name != "bad-signature.der"), name
    assert _rsa_numbers(files["rsa-1024.pem"]).n.bit_length() == 1024
    assert _rsa_numbers(files["rsa-e3.pem"]).e == 3
    secp = _load(files["secp256k1.pem"]).public_key()
    assert isinstance(secp, ec.EllipticCurvePublicKey) and secp.curve.name == "secp256k1"
    assert isinstance(_load(files["sha1.pem"]).signature_hash_algorithm, hashes.SHA1)
    assert _san_values(files["nul-in-dns.der"], x509.DNSName) == [NUL_NAME]
    assert b"\x00" in csr_parts(files["nul-in-dns.der"])[0]
    roca = _rsa_numbers(files["roca.pem"])
    assert roca.n.bit_length() == 2048 and is_roca_fingerprint(roca.n)
    fermat = _rsa_numbers(files["fermat.pem"])
    assert fermat.n.bit_length() == 2048 and not is_roca_fingerprint(fermat.n)
    a = math.isqrt(fermat.n) + 1
    b = math.isqrt(a * a - fermat.n)
    assert b * b == a * a - fermat.n and 2 * b < 1 << 100, "Fermat's method must factor it at once"
    tbs = csr_parts(files["duplicate-san.der"])[0]
    assert tbs.count(b"\x06\x03\x55\x1d\x11") == 2
    # cryptography will not load a version-2 CSR at all: check its signature from the raw DER.
    version_2 = files["version-2.der"]
    tbs, _, (start, end) = csr_parts(version_2)
    assert tbs[der_header(tbs, 0)[1] :].startswith(b"\x02\x01\x01")
    ec_key().public_key().verify(version_2[start:end], tbs, ec.ECDSA(hashes.SHA256()))
    uris = _san_values(files["uri-bracket.pem"], x509.UniformResourceIdentifier)
    assert uris == ["spiffe://example.co[/web"]
    try:
        import idna
    except ImportError:
        pass
    else:
        try:
            idna.decode("xn--zz")
        except idna.IDNAError:
            pass
        else:
            raise AssertionError("xn--zz must be an invalid A-label")
    _check_with_openssl(files)


def _check_with_openssl(files: dict[str, bytes]) -> None:
    """openssl agrees: the NUL and SHA-1 CSRs verify, the flipped one does not."""
    openssl = shutil.which("openssl")
    if openssl is None:
        return
    with tempfile.TemporaryDirectory() as tmp:
        for name, good in (
            ("nul-in-dns.der", True),
            ("sha1.pem", True),
            ("bad-signature.der", False),
        ):
            path = Path(tmp) / name
            path.write_bytes(files[name])
            form = "DER" if name.endswith(".der") else "PEM"
            result = subprocess.run(
                [openssl, "req", "-inform", form, "-in", str(path), "-noout", "-verify"],
                capture_output=True,
                check=False,
            )
            # (openssl 3.0 exits 0 even when verification fails: read what it says)
            verified = b"verify OK" in result.stdout + result.stderr
            assert verified == good, (name, result.stdout, result.stderr)


def build() -> dict[str, bytes]:
    return {name: make() for name, make in VECTORS.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE, help="directory (default: beside this)")
    args = parser.parse_args(argv)
    files = build()
    check(files)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (args.out / name).write_bytes(data)
        print(f"{len(data):6d}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Certificate serial numbers: 127 random bits from the OS CSPRNG, shown in hex as openssl does.

CA/B BR 7.1 asks for at least 64 bits of CSPRNG output; RFC 5280 4.1.2.2 for a positive integer
of at most 20 octets. Uniqueness per issuer is enforced by the database, not assumed.
"""

from __future__ import annotations

import secrets

from vouch.errors import BadInput

SERIAL_BITS = 127


def new_serial() -> int:
    while True:
        serial = secrets.randbits(SERIAL_BITS)
        # Keep at least 64 significant bits so the serial carries its full entropy claim.
        if serial >> 64:
            return serial


def format_serial(serial: int) -> str:
    """Upper-case hex in whole octets, as ``openssl x509 -serial`` prints it."""
    text = f"{serial:X}"
    return text if len(text) % 2 == 0 else "0" + text


def parse_serial(text: str) -> int:
    """Accept hex with or without colons, ``0x`` or leading zeros; case-insensitive."""
    cleaned = text.strip().lower().removeprefix("0x").replace(":", "")
    if not cleaned or len(cleaned) > 40:
        raise BadInput(
            f"not a serial number: {text!r}", hint="give the serial in hex, e.g. 5A3F..."
        )
    try:
        return int(cleaned, 16)
    except ValueError as exc:
        raise BadInput(f"not a hex serial number: {text!r}") from exc

"""A real BIND9 on 127.0.0.1 for ACME tests: authoritative for the zone ``test.`` (every name
answers 127.0.0.1 through a wildcard, CAA records as the tests need them), dynamic updates signed
with a TSIG key (for rfc2136 clients: lego, certbot-dns-rfc2136), and vouch's resolver."""

from __future__ import annotations

import base64
import secrets
import subprocess
import time
from pathlib import Path
from types import TracebackType

import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype
import dns.tsigkeyring
import dns.update

from tests.conftest import require_tool
from tests.servers import free_port

ZONE = "test."
KEY_NAME = "vouch-test-key."
ALGORITHM = "hmac-sha256"

# The CA's CAA identity in these tests; the zone apex allows it, so every name climbs to it.
CA_IDENTITY = "vouch.test"

ZONE_FILE = f"""$TTL 5
@          SOA   ns.test. hostmaster.test. 1 3600 600 86400 5
@          NS    ns.test.
@          CAA   0 issue "{CA_IDENTITY}"
ns         A     127.0.0.1
*          A     127.0.0.1
; CAA that forbids this CA, at the name and above it
forbidden  A     127.0.0.1
forbidden  CAA   0 issue "other-ca.example"
*.forbidden A    127.0.0.1
deny       CAA   0 issue ";"
; a critical property vouch does not know: nobody may issue
critical   A     127.0.0.1
critical   CAA   128 tbs "whatever"
; issuewild overrides issue for wildcards only
wild       A     127.0.0.1
wild       CAA   0 issue "{CA_IDENTITY}"
wild       CAA   0 issuewild "other-ca.example"
"""


class Bind:
    """``named`` in the foreground on a free port; stopped on exit."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.port = free_port()
        self.secret = base64.b64encode(secrets.token_bytes(32)).decode()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 20) -> Bind:
        named = require_tool("named")
        self.work.mkdir(parents=True, exist_ok=True)
        (self.work / "test.zone").write_text(ZONE_FILE)
        conf = self.work / "named.conf"
        conf.write_text(
            f"""options {{
    directory "{self.work}";
    pid-file "{self.work}/named.pid";
    session-keyfile "{self.work}/session.key";
    listen-on port {self.port} {{ 127.0.0.1; }};
    listen-on-v6 {{ none; }};
    recursion no;
    dnssec-validation no;
    notify no;
    allow-query {{ 127.0.0.1; }};
}};
controls {{ }};
key "{KEY_NAME}" {{ algorithm {ALGORITHM}; secret "{self.secret}"; }};
zone "{ZONE}" {{
    type primary;
    file "{self.work}/test.zone";
    allow-update {{ key "{KEY_NAME}"; }};
}};
"""
        )
        with (self.work / "named.log").open("wb") as log:  # the child keeps its own copy
            self.process = subprocess.Popen(
                [named, "-g", "-c", str(conf), "-n", "1"], stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError("named exited: " + (self.work / "named.log").read_text())
            try:
                answer = self.query(ZONE, "SOA")
                if answer.rcode() == dns.rcode.NOERROR and answer.answer:
                    return self
            except (OSError, dns.exception.DNSException):
                pass
            time.sleep(0.1)
        self.stop()
        raise AssertionError("named did not answer: " + (self.work / "named.log").read_text())

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def query(self, name: str, rdtype: str) -> dns.message.Message:
        return dns.query.udp(
            dns.message.make_query(name, rdtype), "127.0.0.1", port=self.port, timeout=2
        )

    def update(self, name: str, rdtype: str, value: str | None, *, delete: bool = False) -> None:
        """Add (or delete) a record through a TSIG-signed dynamic update (RFC 2136)."""
        keyring = dns.tsigkeyring.from_text({KEY_NAME: (ALGORITHM, self.secret)})
        update = dns.update.UpdateMessage(ZONE, keyring=keyring, keyalgorithm=ALGORITHM)
        relative = dns.name.from_text(name).relativize(dns.name.from_text(ZONE))
        if delete:
            update.delete(relative, rdtype)
        else:
            assert value is not None
            update.add(relative, 5, rdtype, value)
        response = dns.query.tcp(update, "127.0.0.1", port=self.port, timeout=5)
        assert response.rcode() == dns.rcode.NOERROR, dns.rcode.to_text(response.rcode())

    # Settings for the rfc2136 clients.

    def lego_env(self) -> dict[str, str]:
        return {
            "RFC2136_NAMESERVER": self.address,
            "RFC2136_TSIG_KEY": KEY_NAME,
            "RFC2136_TSIG_SECRET": self.secret,
            "RFC2136_TSIG_ALGORITHM": ALGORITHM + ".",
            "RFC2136_TTL": "5",
            "RFC2136_PROPAGATION_TIMEOUT": "30",
            "RFC2136_POLLING_INTERVAL": "1",
            # lego waits this long between two names' records (default 60 s)
            "RFC2136_SEQUENCE_INTERVAL": "1",
        }

    def certbot_credentials(self, path: Path) -> Path:
        path.write_text(
            f"dns_rfc2136_server = 127.0.0.1\n"
            f"dns_rfc2136_port = {self.port}\n"
            f"dns_rfc2136_name = {KEY_NAME}\n"
            f"dns_rfc2136_secret = {self.secret}\n"
            f"dns_rfc2136_algorithm = HMAC-SHA256\n"
        )
        path.chmod(0o600)
        return path

    def __enter__(self) -> Bind:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

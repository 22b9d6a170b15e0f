"""schemathesis fuzzes the API from its own OpenAPI document against a running ``vouch serve``:
no answer may be a server error, nor break the documented statuses, content types, headers or
schemas, and no protected operation may ignore a missing credential. Bounded: a few hundred
examples, well under two minutes."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from tests.conftest import REQUIRE_ALL, make_home
from tests.servers import VouchServer, free_port, run_vouch

from vouch.wiring import DEFAULT_LINT_ALLOW

CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_headers_conformance",
        "response_schema_conformance",
        "ignored_auth",
    ]
)


def _schemathesis() -> str:
    path = shutil.which("schemathesis") or str(Path(sys.executable).with_name("schemathesis"))
    if not Path(path).exists():
        if REQUIRE_ALL:
            pytest.fail("schemathesis is not installed (pip install -e .[test])")
        pytest.skip("schemathesis is not installed (pip install -e .[test])")
    return path


@pytest.mark.slow
def test_openapi_fuzzing_finds_nothing(tmp_path: Path) -> None:
    schemathesis = _schemathesis()
    port = free_port()
    home = tmp_path / "home"
    make_home(
        home, public_url=f"http://127.0.0.1:{port}", lint_allow=list(DEFAULT_LINT_ALLOW)
    ).close()
    with (home / "vouch.toml").open("a") as config:
        # Fuzzed credentials fail by the hundred; rate limiting would hide the routes behind.
        config.write("\n[api]\nmax_failures = 10000\n")
    run_vouch(home, "admin", "provisioner", "add", "ci", "--allow-suffix", "example.com")
    token = run_vouch(home, "admin", "token", "new", "--role", "admin").stdout.strip()
    with VouchServer(home, http_port=port, https=False) as server:
        result = subprocess.run(
            [
                schemathesis, "run", f"{server.url}/api/v1/openapi.json",
                "--header", f"Authorization: Bearer {token}",
                "--checks", CHECKS,
                # Revoking its own token would leave the fuzzer with nothing but 401s.
                "--exclude-method", "DELETE",
                "--max-examples", "40", "--seed", "7", "--request-timeout", "20",
                "--no-color",
            ],
            capture_output=True, text=True, timeout=170, check=False, cwd=tmp_path,
        )  # fmt: skip
        log = server.output()
    assert result.returncode == 0, result.stdout[-6000:]
    assert "generated" in result.stdout and " 0 generated" not in result.stdout
    assert "Traceback" not in log, log[-3000:]

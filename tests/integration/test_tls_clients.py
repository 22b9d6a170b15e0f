"""TLS clients trust what vouch issues, with vouch's root trusted the way an organisation would
trust its own root, and nothing else bypassed: headless Chromium (its user's NSS database) and
Java's HttpClient (a PKCS#12 trust store made by keytool, and Java's own PKIX checks).

nginx serves an ECDSA P-256 leaf and an RSA-3072 leaf, both from ``vouch cert new`` under the
issuing CA of a home made with ``--permit-dns vouch.test`` (so the clients also check the name
constraints). Each page must load. A third name, served with a certificate that does not cover
it, must be refused for the name: the checks can fail.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from tests.conftest import require_tool
from tests.integration.test_agent import Nginx
from tests.servers import free_port, run_vouch

DOMAIN = "vouch.test"
PAGE = "vouch-tls-ok"


@dataclass(frozen=True)
class Site:
    port: int
    home: Path


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    base = tmp_path_factory.mktemp("browser-tls")
    home, certs = base / "home", base / "certs"
    certs.mkdir()
    run_vouch(home, "init", "--permit-dns", DOMAIN)
    run_vouch(home, "cert", "new", f"ec.{DOMAIN}", "--out-dir", str(certs))
    run_vouch(home, "cert", "new", f"rsa.{DOMAIN}", "--key-type", "rsa-3072",
              "--out-dir", str(certs))  # fmt: skip
    port = free_port()

    def server(name: str, cert: str) -> str:
        return (
            f"    server {{\n        listen 127.0.0.1:{port} ssl;\n        server_name {name};\n"
            f"        ssl_certificate {certs / cert}.pem;\n"
            f"        ssl_certificate_key {certs / cert}.key.pem;\n"
            f"        default_type text/html;\n"
            f"        return 200 '<html><body>{PAGE}</body></html>';\n    }}\n"
        )

    # other.vouch.test is served with ec.vouch.test's certificate: a name it does not cover.
    pairs = [("ec", "ec"), ("rsa", "rsa"), ("other", "ec")]
    servers = "".join(server(f"{name}.{DOMAIN}", f"{cert}.{DOMAIN}") for name, cert in pairs)
    (base / "nginx").mkdir()
    nginx = Nginx(base / "nginx")
    try:
        nginx.start(servers, port)
        yield Site(port, home)
    finally:
        nginx.stop()


@pytest.fixture(scope="module")
def browser(site: Site, tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """Chromium whose user's NSS database trusts vouch's root for TLS servers."""
    chromium = require_tool("chromium")
    driver_path = require_tool("chromedriver")
    certutil = require_tool("certutil")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    user = tmp_path_factory.mktemp("browser-user")
    nssdb = user / ".pki" / "nssdb"
    nssdb.mkdir(parents=True)
    for command in (
        ["-N", "--empty-password"],
        ["-A", "-n", "vouch test root", "-t", "C,,", "-i", str(site.home / "root.pem")],
    ):
        subprocess.run([certutil, "-d", f"sql:{nssdb}", *command], check=True,
                       capture_output=True, timeout=30)  # fmt: skip
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    flags = [
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        f"--host-resolver-rules=MAP *.{DOMAIN} 127.0.0.1", f"--user-data-dir={user / 'profile'}",
        # nothing but the test's own pages leaves the browser
        "--disable-background-networking", "--disable-component-update",
    ]  # fmt: skip
    for flag in flags:
        options.add_argument(flag)
    service = Service(executable_path=driver_path, env={"HOME": str(user), "PATH": "/usr/bin:/bin"})
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def _load(browser: object, url: str) -> str:
    from selenium.webdriver.remote.webdriver import WebDriver

    assert isinstance(browser, WebDriver)
    browser.get(url)
    return browser.page_source


@pytest.mark.parametrize("leaf", ["ec", "rsa"])
def test_chromium_loads_the_page_without_a_warning(site: Site, browser: object, leaf: str) -> None:
    source = _load(browser, f"https://{leaf}.{DOMAIN}:{site.port}/")
    assert PAGE in source, source[:2000]


def test_chromium_refuses_a_certificate_for_another_name(site: Site, browser: object) -> None:
    source = _load(browser, f"https://other.{DOMAIN}:{site.port}/")
    assert PAGE not in source
    assert "ERR_CERT_COMMON_NAME_INVALID" in source, source[:2000]


JAVA_FETCH = """
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;

public class Fetch {
    public static void main(String[] urls) throws Exception {
        HttpClient client = HttpClient.newHttpClient();
        for (String url : urls) {
            try {
                HttpResponse<String> reply = client.send(
                    HttpRequest.newBuilder(URI.create(url)).build(),
                    HttpResponse.BodyHandlers.ofString());
                System.out.println(url + " " + reply.statusCode() + " " + reply.body());
            } catch (Exception e) {
                System.out.println(url + " REFUSED " + e);
            }
        }
    }
}
"""


def test_java_trusts_the_chains_and_checks_the_name(site: Site, tmp_path: Path) -> None:
    java, keytool = require_tool("java"), require_tool("keytool")
    store = tmp_path / "trust.p12"
    subprocess.run(
        [keytool, "-importcert", "-noprompt", "-alias", "vouch-root", "-file",
         str(site.home / "root.pem"), "-keystore", str(store), "-storetype", "PKCS12",
         "-storepass", "changeit"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    hosts = tmp_path / "hosts"
    hosts.write_text(f"127.0.0.1 ec.{DOMAIN} rsa.{DOMAIN} other.{DOMAIN}\n")
    source = tmp_path / "Fetch.java"
    source.write_text(JAVA_FETCH)
    urls = [f"https://{name}.{DOMAIN}:{site.port}/" for name in ("ec", "rsa", "other")]
    done = subprocess.run(
        [java, f"-Djavax.net.ssl.trustStore={store}", "-Djavax.net.ssl.trustStoreType=PKCS12",
         "-Djavax.net.ssl.trustStorePassword=changeit", f"-Djdk.net.hosts.file={hosts}",
         str(source), *urls],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    lines = dict(
        line.split(" ", 1) for line in done.stdout.splitlines() if line.startswith("https")
    )
    for url in urls[:2]:
        assert lines[url].startswith("200 ") and PAGE in lines[url], done.stdout
    assert lines[urls[2]].startswith("REFUSED"), done.stdout
    assert "No subject alternative DNS name matching" in lines[urls[2]], done.stdout

"""The dashboard in a real browser (headless Chromium through Selenium and chromedriver): sign
in, see the KPIs, search for a certificate, revoke it, see the change; roles, CSRF and the
route table's protection checked over plain HTTP. Screenshots of the main pages are saved
(under $VOUCH_ARTIFACTS when set, else the test's temporary directory)."""

from __future__ import annotations

import datetime as dt
import http.cookiejar
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import select
from tests.conftest import make_home, passphrase, require_tool
from tests.servers import VouchServer, free_port

from vouch.services.authority import IssuanceRequest
from vouch.store.tables import events
from vouch.wiring import DEFAULT_LINT_ALLOW, Vouch
from vouch.x509.names import parse_name


@dataclass
class Site:
    home: Path
    base: str
    operator: str
    auditor: str
    target: str  # serial of find-me.example.com
    others: list[str]


def _issue(vouch: Vouch, name: str, days: int = 30) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    request = IssuanceRequest(
        key.public_key(), (parse_name(name),), "tls-server", lifetime=dt.timedelta(days=days)
    )
    return vouch.authority().issue(request).serial


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    port = free_port()
    home = tmp_path_factory.mktemp("dashboard") / "home"
    vouch = make_home(
        home, public_url=f"http://127.0.0.1:{port}", lint_allow=list(DEFAULT_LINT_ALLOW)
    )
    target = _issue(vouch, "find-me.example.com")
    others = [_issue(vouch, f"host{i}.example.com", days=5 + i) for i in range(3)]
    operator = vouch.admin_tokens().create("olive", "operator").token
    auditor = vouch.admin_tokens().create("audrey", "auditor").token
    vouch.close()
    with VouchServer(home, http_port=port, https=False) as server:
        yield Site(home, f"{server.url}/dashboard", operator, auditor, target, others)


@pytest.fixture(scope="module")
def shots() -> Path:
    root = Path(os.environ.get("VOUCH_ARTIFACTS") or Path.cwd() / "test-artifacts")
    folder = root / "dashboard"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    chromium = require_tool("chromium")
    driver_path = require_tool("chromedriver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,1400",
                 "--disable-dev-shm-usage"):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    driver.set_page_load_timeout(30)
    # A click that submits a form returns before the next page is there: look for a while.
    driver.implicitly_wait(15)
    try:
        yield driver
    finally:
        driver.quit()


def test_sign_in_search_revoke_and_see_the_change(site: Site, browser: object, shots: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.remote.webdriver import WebDriver
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import Select, WebDriverWait

    driver: WebDriver = browser  # type: ignore[assignment]
    driver.get(site.base + "/")
    assert driver.current_url.endswith("/dashboard/login")  # no session: sent to sign in

    driver.find_element(By.ID, "token").send_keys("vat_1_" + "x" * 43)
    driver.find_element(By.ID, "sign-in").click()
    assert "That token is not valid." in driver.find_element(By.ID, "login-message").text

    driver.find_element(By.ID, "token").send_keys(site.operator)
    driver.find_element(By.ID, "sign-in").click()
    assert driver.find_element(By.ID, "kpi-valid").text.startswith("4")
    assert "issuing" in driver.find_element(By.ID, "ca-tree").text
    driver.save_screenshot(str(shots / "overview.png"))

    driver.find_element(By.ID, "nav-certificates").click()
    driver.find_element(By.ID, "q").send_keys("find-me")
    driver.find_element(By.ID, "search").click()
    WebDriverWait(driver, 20).until(expected_conditions.url_contains("q=find-me"))
    rows = driver.find_elements(By.CSS_SELECTOR, "#results tbody tr")
    assert len(rows) == 1 and "find-me.example.com" in rows[0].text
    driver.save_screenshot(str(shots / "certificates.png"))

    rows[0].find_element(By.LINK_TEXT, site.target).click()
    assert driver.find_element(By.ID, "cert-status").text == "valid"
    Select(driver.find_element(By.ID, "reason")).select_by_value("keyCompromise")
    driver.find_element(By.ID, "revoke").click()
    assert "Revoked" in driver.find_element(By.ID, "revoked-message").text
    assert driver.find_element(By.ID, "cert-status").text.startswith("revoked (keyCompromise")
    driver.save_screenshot(str(shots / "certificate-revoked.png"))

    driver.find_element(By.ID, "nav-revocations").click()
    WebDriverWait(driver, 20).until(expected_conditions.url_contains("status=revoked"))
    revoked = driver.find_elements(By.CSS_SELECTOR, "#results tbody tr")
    assert [r.find_element(By.CSS_SELECTOR, "a").text for r in revoked] == [site.target]

    driver.find_element(By.ID, "nav-audit").click()
    driver.find_element(By.ID, "verify").click()
    assert driver.find_element(By.ID, "verify-result").text.startswith("Verified:")
    driver.save_screenshot(str(shots / "audit.png"))

    driver.find_element(By.ID, "logout").click()
    WebDriverWait(driver, 20).until(expected_conditions.url_contains("/dashboard/login"))
    driver.get(site.base + "/certificates")
    assert driver.current_url.endswith("/dashboard/login")
    for name in ("overview", "certificates", "certificate-revoked", "audit"):
        assert (shots / f"{name}.png").stat().st_size > 10_000

    # The revocation is the real one: in the store and the audit log, with the reason chosen.
    vouch = Vouch(site.home, passphrase=passphrase)
    try:
        with vouch.db.engine.connect() as conn:
            kinds = [
                row.kind
                for row in conn.execute(
                    select(events.c.kind).where(events.c.subject == site.target)
                )
            ]
            failed = conn.execute(
                select(events.c.data).where(events.c.kind == "api.login-failed")
            ).all()
    finally:
        vouch.close()
    assert "certificate.revoked" in kinds
    assert any('"credential":"dashboard"' in row.data for row in failed)
    assert not any(site.operator.split("_", 2)[2] in row.data for row in failed)


class _Session:
    """A plain HTTP client with a cookie jar (no redirects followed)."""

    def __init__(self) -> None:
        class NoRedirect(urllib.request.HTTPRedirectHandler):
            def redirect_request(self, *args: object, **kwargs: object) -> None:
                return None

        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(self.jar), NoRedirect()
        )

    def call(self, url: str, form: dict[str, str] | None = None) -> tuple[int, dict[str, str], str]:
        data = urllib.parse.urlencode(form).encode() if form is not None else None
        try:
            with self.opener.open(urllib.request.Request(url, data=data), timeout=20) as r:
                return r.status, dict(r.headers), r.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers), exc.read().decode()

    def sign_in(self, base: str, token: str) -> None:
        status, headers, _ = self.call(base + "/login", {"token": token})
        assert status == 303 and headers["location"].endswith("/dashboard/")
        cookie = headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie and "path=/dashboard" in cookie


def test_every_page_needs_a_session(site: Site) -> None:
    from starlette.routing import Route

    from vouch.server.dashboard import Dashboard
    from vouch.server.state import ServerState

    vouch = Vouch(site.home, passphrase=passphrase)
    try:
        table = Dashboard(ServerState(vouch)).app().routes
    finally:
        vouch.close()
    # Every route of the real table, so a page added later without protection fails here.
    routes = [r.path for r in table if isinstance(r, Route) and not r.path.startswith("/login")]
    client = _Session()
    assert "/certificates/{ca}/{serial}/revoke" in routes
    for path in routes:
        concrete = path.replace("{ca}", "issuing").replace("{serial}", site.target)
        for form in (None, {"csrf": "x", "reason": "superseded"}):
            status, headers, _ = client.call(site.base + concrete, form)
            assert status in (303, 405), (path, status)
            if status == 303:
                assert headers["location"].endswith("/dashboard/login"), path


def test_an_auditor_reads_but_cannot_revoke_and_forms_need_their_csrf(site: Site) -> None:
    serial = site.others[0]
    page = f"{site.base}/certificates/issuing/{serial}"
    auditor = _Session()
    auditor.sign_in(site.base, site.auditor)
    status, headers, body = auditor.call(page)
    assert status == 200 and 'id="revoke"' not in body
    assert "script-src" not in headers["content-security-policy"]  # no script at all
    csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', auditor.call(site.base + "/audit")[2])
    assert csrf is not None
    status, _, body = auditor.call(
        page + "/revoke", {"csrf": csrf.group(1), "reason": "superseded"}
    )
    assert status == 403 and "may not do this" in body

    operator = _Session()
    operator.sign_in(site.base, site.operator)
    status, _, body = operator.call(page + "/revoke", {"csrf": "0" * 64, "reason": "superseded"})
    assert status == 403 and "the form expired" in body
    status, _, body = operator.call(page)
    assert 'id="cert-status">valid' in body  # nothing happened

    # Unknown certificates and odd input are clear errors, not tracebacks.
    status, _, body = operator.call(f"{site.base}/certificates/issuing/00DEAD")
    assert status == 400 and "has no certificate 00DEAD" in body
    status, _, body = operator.call(f"{site.base}/certificates?after=x&expiring=y&status=%00")
    assert status == 200 and "Traceback" not in body


def test_a_session_is_no_api_token_and_ends_at_sign_out(site: Site) -> None:
    """The cookie is a signed session, not the API token (it opens nothing on /api/v1); sign-out
    ends it on the server, not only in the browser; odd query numbers are no error."""
    client = _Session()
    client.sign_in(site.base, site.operator)
    [cookie] = [c for c in client.jar if c.name == "vouch_dashboard"]
    assert site.operator not in cookie.value and not cookie.value.startswith("vat_")
    api = site.base.replace("/dashboard", "/api/v1/admin/whoami")
    request = urllib.request.Request(api, headers={"Authorization": f"Bearer {cookie.value}"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=20)
    assert refused.value.code == 401
    refused.value.close()
    for query in ("expiring=999999999999", "after=99999999999999999999999", "expiring=-5"):
        status, _, body = client.call(f"{site.base}/certificates?{query}")
        assert status == 200 and "Traceback" not in body, query
    copied = _Session()  # the same cookie, kept by someone else
    copied.jar.set_cookie(cookie)
    assert copied.call(site.base + "/")[0] == 200
    status, _, _ = client.call(site.base + "/logout", {})
    assert status == 303
    status, headers, _ = copied.call(site.base + "/")
    assert status == 303 and "/dashboard/login" in headers["location"]
    # Forged or altered sessions open nothing.
    for forged in (cookie.value[:-1] + ("0" if cookie.value[-1] != "0" else "1"), "vat_1_x", ""):
        other = _Session()
        other.jar.set_cookie(http.cookiejar.Cookie(
            0, "vouch_dashboard", forged, None, False, cookie.domain, cookie.domain_specified,
            cookie.domain_initial_dot, "/dashboard", True, False, None, False, None, None, {},
        ))  # fmt: skip
        assert other.call(site.base + "/")[0] == 303, forged

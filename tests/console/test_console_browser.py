"""The console in a real headless Chromium (Debian's chromium and chromium-driver, driven
by Selenium, as the subscription form's test): log in, find a contact, read its journal,
replay a dead letter and see it applied, follow the deep links, refuse a forged post
from another page (issue 17 points 1 and 7).

``CRMSYNC_UPDATE_SCREENSHOTS=1`` also writes the screenshots used by the README and
docs/operations.md into docs/img/.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from crmsync.runtime import build_batch, open_side

from .conftest import PASSWORD, eventually

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
DOCS_IMG = Path(__file__).parents[2] / "docs" / "img"

pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="needs Debian's chromium and chromium-driver: apt-get install -y chromium "
           "chromium-driver")


@pytest.fixture
def browser() -> Iterator[object]:
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="crmsync-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--window-size=1280,1000",
                 "--disable-dev-shm-usage", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


class _Elsewhere(BaseHTTPRequestHandler):
    """Another web site: the ESP's console stand-in, and a page that forges a post."""

    console = ""
    dead_id = 0

    def do_GET(self) -> None:
        if self.path.startswith("/esp/recipient/"):
            body = f"<html><title>ESP recipient</title><p id=where>{self.path}</p></html>"
        else:  # a page of another site posting to the console with the operator's cookie
            body = (f"<html><title>Win a prize</title><form method=post "
                    f"action='{self.console}/admin/dead-letters/replay'>"
                    f"<input type=hidden name=one value='{self.dead_id}'>"
                    f"<button id=prize type=submit>Claim</button></form></html>")
        data = body.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def elsewhere() -> Iterator[tuple[str, type[_Elsewhere]]]:
    handler = type("Handler", (_Elsewhere,), {})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()


def _text(browser, selector: str) -> str:
    from selenium.webdriver.common.by import By

    return "\n".join(e.text for e in browser.find_elements(By.CSS_SELECTOR, selector))


def _screenshot(browser, tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    browser.save_screenshot(str(path))
    assert path.stat().st_size > 10_000
    if os.environ.get("CRMSYNC_UPDATE_SCREENSHOTS") == "1":
        DOCS_IMG.mkdir(exist_ok=True)
        shutil.copyfile(path, DOCS_IMG / name)


def test_operator_finds_a_contact_replays_a_dead_letter_and_jumps_to_the_esp(
        console_pair, browser, elsewhere, tmp_path) -> None:
    from selenium.webdriver.common.by import By

    site, handler = elsewhere
    rt = console_pair(esp_link=f"{site}/esp/recipient/{{id}}?email={{email}}")
    # a few batch runs for the Runs page and its chart: newcomers, and one the ESP refuses
    rt.service.esp.down_for.add("new-31@example.com")
    for batch in range(4):
        for n in range(batch * 2):
            rt.crm.add(f"new-{batch * 10 + n}@example.com",
                       fields={"FirstName": "New", "OptOut": "false"})
        with open_side(rt.config, "crm") as crm:
            build_batch(rt.config, crm, rt.service.esp, rt.state).run(full=batch == 0)
    rt.service.esp.down_for.clear()
    dead = rt.dead_letter("bob@example.com")
    assert rt.esp_list("bob@example.com") == "subscribed"

    # a link from the CRM lands on the login page, then on the contact
    browser.get(f"{rt.url}/go/contact?email=ann@example.com")
    assert browser.title == "Log in · crmsync console"
    browser.find_element(By.ID, "password").send_keys(PASSWORD)
    browser.find_element(By.CSS_SELECTOR, "form.login button").click()
    eventually(lambda: browser.title == "Contact · crmsync console")
    assert browser.find_element(By.ID, "contact-email").text == "ann@example.com"
    lists = _text(browser, "#lists tbody")
    assert "1 subscribed news" in lists and "2 subscribed" in lists
    journal = _text(browser, "#journal tbody")
    assert "\u2013 \u2192 subscribed esp crm:memory" in journal  # "- -> subscribed"
    _screenshot(browser, tmp_path, "console.png")

    # Bob's event died at the ESP; the outage is over: replay it from the list
    rt.service.esp.down_for.clear()
    browser.get(f"{rt.url}/admin/dead-letters")
    row = browser.find_element(By.ID, f"dead-{dead['id']}")
    assert "bob@example.com" in row.text and "gave up after 2 attempts" in row.text
    assert browser.execute_script("return typeof htmx") == "object"  # loaded under the CSP
    _screenshot(browser, tmp_path, "console-dead-letters.png")
    row.find_element(By.CSS_SELECTOR, "button.replay-one").click()
    eventually(lambda: "this server applies them now" in _text(browser, "#message"))
    eventually(lambda: rt.esp_list("bob@example.com") == "unsubscribed")
    browser.find_element(By.LINK_TEXT, "Contact").click()
    search = browser.find_element(By.ID, "q")
    search.send_keys("bob@example.com")
    search.submit()
    eventually(lambda: "bob@example.com" in _text(browser, "#contact-email"))
    assert "subscribed → unsubscribed esp" in _text(browser, "#journal tbody")
    assert "replayed" in _text(browser, "table.dead tbody")

    # another site's page posts to the console with the operator's cookie: refused
    second = rt.dead_letter("ann@example.com")
    handler.console, handler.dead_id = rt.url, second["id"]
    browser.get(f"{site}/prize")
    browser.find_element(By.ID, "prize").click()
    eventually(lambda: "not sent from this console" in _text(browser, "#error"))
    assert [d["id"] for d in rt.state.dead_letters()] == [second["id"]]

    # one click from the CRM to the ESP: the recipient's page there, by the ESP's id
    browser.get(f"{rt.url}/go/esp?email=bob@example.com")
    eventually(lambda: browser.current_url.startswith(f"{site}/esp/recipient/"))
    esp_id = rt.esp.by_email("bob@example.com")
    assert browser.current_url == f"{site}/esp/recipient/{esp_id}?email=bob@example.com"

    browser.get(f"{rt.url}/admin/health")
    assert "ok" in _text(browser, "#checks tbody")
    _screenshot(browser, tmp_path, "console-health.png")

    # the Runs page with its chart; no page broke the CSP
    browser.get(f"{rt.url}/admin/runs")
    bars = browser.find_elements(By.CSS_SELECTOR, "figure.chart rect.records")
    assert len(bars) == 5  # four batch runs and the real-time one
    rows = browser.find_elements(By.CSS_SELECTOR, "#runs-table tbody tr")
    assert [row.find_elements(By.TAG_NAME, "td")[2].text for row in rows] == [
        "partial", "succeeded", "succeeded", "succeeded", "running"]
    assert "failed records" in rows[0].text and "list 1: esp add 6" in rows[0].text
    # the running real-time period counts so far: Bob's replayed event applied, two dead
    assert rows[-1].text.startswith(f"{rt.service.worker.run_id} realtime running")
    assert rows[-1].text.endswith(" 1 2")
    _screenshot(browser, tmp_path, "console-runs.png")
    refused = [entry["message"] for entry in browser.get_log("browser")
               if "Content Security Policy" in entry["message"]]
    assert refused == []

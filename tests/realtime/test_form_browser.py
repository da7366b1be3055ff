"""The subscription form in a real headless Chromium (Debian's chromium and
chromium-driver, driven by Selenium)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")

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
                 "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _esp_status(rt, email: str, list_id: str) -> str | None:
    return rt.esp_list(email, list_id)


def _submit(browser, wait_for: str) -> str:
    """Submit the form and wait for the next page's ``wait_for`` elements; their text."""
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    old = browser.find_element(By.TAG_NAME, "html")
    browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()

    def left(_: object) -> bool:
        # the old page is gone: Chromium says so as a stale element, or, caught in the
        # middle of the navigation, as "Node ... does not belong to the document"
        try:
            old.is_enabled()
        except WebDriverException:
            return True
        return False

    WebDriverWait(browser, 15).until(left)
    found = WebDriverWait(browser, 15).until(
        expected_conditions.presence_of_all_elements_located((By.CSS_SELECTOR, wait_for)))
    return "\n".join(element.text for element in found)


def test_subscribe_to_two_lists_from_the_form(serve_pair, browser) -> None:
    from selenium.webdriver.common.by import By

    rt = serve_pair()
    browser.get(rt.url + "/subscribe")
    assert browser.title == "Subscribe"
    boxes = browser.find_elements(By.CSS_SELECTOR, "input[type=checkbox][name=list]")
    labels = [box.find_element(By.XPATH, "..").text.strip() for box in boxes]
    assert labels == ["Newsletter", "Events"]
    browser.find_element(By.ID, "email").send_keys("Zoe@Example.com")
    for box in boxes:
        box.click()
    result = _submit(browser, "#result")
    assert "confirmation email" in result and "zoe@example.com" in result
    assert _esp_status(rt, "zoe@example.com", "1") == "pending"
    assert _esp_status(rt, "zoe@example.com", "2") == "pending"
    sources = {(e["list_id"], e["new_status"], e["source"])
               for e in rt.journal("zoe@example.com")}
    assert sources == {("1", "pending", "subscription form"),
                       ("2", "pending", "subscription form")}


def test_the_form_refuses_a_post_without_its_csrf_cookie(serve_pair, browser) -> None:
    from selenium.webdriver.common.by import By

    rt = serve_pair()
    browser.get(rt.url + "/subscribe")
    browser.delete_all_cookies()  # as a cross-site page would: it cannot send our cookie
    browser.find_element(By.ID, "email").send_keys("mallory@example.com")
    browser.find_elements(By.CSS_SELECTOR, "input[name=list]")[0].click()
    assert "expired" in _submit(browser, ".error")
    assert _esp_status(rt, "mallory@example.com", "1") is None
    # the page it answered with keeps the input and carries a fresh token: sending again works
    assert browser.find_element(By.CSS_SELECTOR, "input[name=list]").is_selected()
    assert "confirmation email" in _submit(browser, "#result")
    assert _esp_status(rt, "mallory@example.com", "1") == "pending"


def test_the_server_validates_what_the_browser_let_through(serve_pair, browser) -> None:
    from selenium.webdriver.common.by import By

    rt = serve_pair()
    browser.get(rt.url + "/subscribe")
    # a browser without HTML5 validation (or a hand-edited page) sends a bad address
    browser.execute_script("const e = document.getElementById('email');"
                           "e.type = 'text'; e.required = false;")
    browser.find_element(By.ID, "email").send_keys("not an address")
    errors = _submit(browser, ".error").splitlines()
    assert "Please enter a valid email address." in errors
    assert "Please choose at least one list." in errors
    assert sorted(r["email"] for r in rt.esp.records.values()) == ["ann@example.com",
                                                                  "bob@example.com"]

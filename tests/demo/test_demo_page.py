"""The demo page in a real browser (Debian's headless chromium, driven by Selenium) against a
real server with the committed default model and a gallery of real digits: it loads without
console errors, a search shows neighbours, the budget slider changes the served depth, an
upload works, and server errors show as messages. The screenshots in docs/ are made here."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from tests.service.server import Server

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
READ = "demo-read-key"
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and DRIVER), reason="needs chromium and chromium-driver (make setup has them)"
)


@pytest.fixture(scope="module")
def demo_server(tmp_path_factory):
    """The default bundle (committed), with 60 real test digits indexed (their inputs kept:
    thumbnails)."""
    from service.lifecycle.reindex import reindex
    from tests.harness import mnist_test

    root = tmp_path_factory.mktemp("demo")
    bundle = ROOT / "bundles" / "default"
    test = mnist_test()
    for i in range(0, len(test), len(test) // 60)[:60]:  # spread over the labels
        folder = root / "gallery" / str(int(test.labels[i]))
        folder.mkdir(parents=True, exist_ok=True)
        test.image(i).save(folder / f"mnist-test-{i:05d}.png")
    reindex(bundle, root / "data", [root / "gallery"], progress=False)
    server = Server(bundle, root / "data", root / "server.log", read_key=READ,
                    api_key="demo-admin-key", threads=1).start()  # fmt: skip
    yield server, root
    server.stop()


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1180,1500", "--hide-scrollbars"):  # fmt: skip
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=opts, service=Service(DRIVER))
    yield driver
    driver.quit()


def wait(browser, condition, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = browser.execute_script(condition)
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for: {condition}")


def set_slider(browser, element_id: str, value: float) -> None:
    browser.execute_script(
        "const e = document.getElementById(arguments[0]); e.value = arguments[1];"
        "e.dispatchEvent(new Event('input'));", element_id, value,
    )  # fmt: skip


def served_depth(browser, expect: str) -> int:
    text = wait(
        browser,
        "const t = document.getElementById('depth').textContent;"
        f"return t.startsWith('{expect}') && "
        "document.querySelectorAll('#neighbours .hit img[src]').length >= 5 && t",
    )
    return int(text.split("/")[0])


def test_demo_page_in_a_real_browser(demo_server, browser) -> None:
    server, root = demo_server
    browser.get(f"{server.url}/livez")
    browser.execute_script("sessionStorage.setItem('sdssl-read-key', arguments[0])", READ)
    browser.get_log("browser")  # drained: /livez is not the page under test (its favicon 404s)
    browser.get(f"{server.url}/demo/")
    # The first gallery digit is searched on load: neighbours with thumbnails, the curve marked.
    wait(browser, "return document.querySelectorAll('#gallery .thumb img[src]').length >= 40")
    wait(browser, "return document.querySelectorAll('#neighbours .hit').length === 10")
    wait(browser, "return document.querySelectorAll('#compare .col .hit img[src]').length === 15")
    assert browser.execute_script("return document.getElementById('curve-mark') !== null")
    assert "12 exit depths" in browser.find_element("id", "model").text

    set_slider(browser, "budget", 0.5)  # nothing fits: the shallowest depth
    low = served_depth(browser, "1 /")
    time.sleep(1.0)  # thumbnails and the comparison row settle
    browser.save_screenshot(str(ROOT / "docs" / "demo-budget-0.5ms.png"))
    set_slider(browser, "budget", 100)  # everything fits: the deepest
    high = served_depth(browser, "12 /")
    assert (low, high) == (1, 12)
    time.sleep(1.0)
    browser.save_screenshot(str(ROOT / "docs" / "demo-budget-100ms.png"))

    # A fixed depth is served as asked.
    browser.find_element("id", "fixed").click()
    set_slider(browser, "depth-pick", 6)
    assert served_depth(browser, "6 /") == 6

    # An upload returns neighbours, the nearest of the same label as the query digit.
    digit = next((root / "gallery" / "7").glob("*.png"))
    browser.find_element("id", "upload").send_keys(str(digit))
    wait(
        browser,
        "return document.getElementById('query-img').src.startsWith('blob:') && "
        "document.querySelector('#neighbours .hit div').textContent === 'label 7'",
    )

    severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not severe, severe  # no console errors so far

    # A server error shows as a message: a file that is not an image, then a wrong key.
    junk = root / "not-an-image.png"
    junk.write_text("hello")
    browser.find_element("id", "upload").send_keys(str(junk))
    message = wait(browser, "const e = document.getElementById('error');"
                            "return !e.hidden && e.textContent")  # fmt: skip
    assert "not_an_image" in message
    key = browser.find_element("id", "key")
    key.clear()
    key.send_keys("wrong-key\n")
    browser.execute_script("document.getElementById('key').dispatchEvent(new Event('change'))")
    wait(browser, "const e = document.getElementById('error');"
                  "return !e.hidden && e.textContent.includes('unauthorized')")  # fmt: skip

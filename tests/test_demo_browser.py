"""The demo page in a real browser: `pegasus demo` on a free port, Debian's headless Chromium driven
by Selenium through Debian's chromedriver (`apt-get install -y chromium chromium-driver`).

Without the browser these tests skip, saying what is missing; with PEGASUS_REQUIRE_BROWSER=1 (set
by .ci/run, which installs it) they fail instead, so CI cannot pass without running them.
The slider-to-grid times are printed and written to the test's temp dir (latency.json), beside a
screenshot of the page (demo.png).
"""
from __future__ import annotations

import json
import os
import re
import select
import shutil
import statistics
import subprocess
import sys
import urllib.request

import pytest

import pegasus

_CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
_DRIVER = shutil.which("chromedriver")


def _missing() -> str | None:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    if _CHROMIUM is None:
        return "no chromium on PATH (apt-get install -y chromium chromium-driver)"
    if _DRIVER is None:
        return "no chromedriver on PATH (apt-get install -y chromium-driver)"
    return None


@pytest.fixture(scope="module")
def demo_url():
    """The URL of `python -m pegasus demo --port 0` (the shipped run), stopped after the module."""
    server = subprocess.Popen([sys.executable, "-m", "pegasus", "demo", "--port", "0"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        ready, _, _ = select.select([server.stdout], [], [], 120)
        line = server.stdout.readline() if ready else ""
        url = re.search(r"http://\S+/", line)
        assert url, f"pegasus demo printed {line!r}; stderr: {server.stderr.read() if server.poll() is not None else ''}"
        yield url.group(0)
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.fixture
def browser():
    missing = _missing()
    if missing:
        if os.environ.get("PEGASUS_REQUIRE_BROWSER") == "1":
            pytest.fail(f"PEGASUS_REQUIRE_BROWSER=1 but {missing}")
        pytest.skip(f"browser tests need headless Chromium: {missing}")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = _CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1000,900"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # Service(path): Debian's chromedriver, so Selenium Manager never looks for one on the network.
    driver = webdriver.Chrome(options=options, service=Service(executable_path=_DRIVER))
    driver.set_script_timeout(60)
    yield driver
    driver.quit()


def _wait(driver, condition, what, timeout=60):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.02).until(lambda d: condition(d), message=f"waiting for {what}")


def _version(driver, element_id: str) -> int:
    return int(driver.find_element("id", element_id).get_attribute("data-version"))


def _new_grid(driver, before: int) -> None:
    _wait(driver, lambda d: _version(d, "grid") > before, "a new grid")


def _open(driver, url: str) -> None:
    driver.get(url)
    _wait(driver, lambda d: _version(d, "grid") >= 1 and _version(d, "strip") >= 1, "the first grid and strip")


def test_slider_changes_the_grid_and_shows_the_time(browser, demo_url, tmp_path):
    from selenium.webdriver.common.keys import Keys

    _open(browser, demo_url)
    grid, alpha = browser.find_element("id", "grid"), browser.find_element("id", "alpha")
    assert browser.find_element("id", "n").get_attribute("value") == "16"
    assert browser.find_element("id", "backend").get_attribute("value") == "cpu"
    # The temperature starts at the run's own (its sampling.json), not at a constant of the page.
    assert float(browser.find_element("id", "temperature").get_attribute("value")) == pegasus.pretrained().temperature
    # Slider to the horse end and back to the bird end, by keyboard as a user would: each move
    # fires the slider's change event, which samples a new grid of 16 at 8x8.
    latencies = []
    for key, value in [(Keys.END, "1"), (Keys.HOME, "0")] * 3:
        before, src = _version(browser, "grid"), grid.get_attribute("src")
        alpha.send_keys(key)
        assert alpha.get_attribute("value") == value
        _new_grid(browser, before)
        assert grid.get_attribute("src") != src, "the grid did not change"
        latencies.append(int(grid.get_attribute("data-latency-ms")))
    timing = browser.find_element("id", "timing").text
    assert re.search(r"16 samples of 8x8 codes \(cpu\): \d+ ms of sampling, [\d.]+ ms per image; on screen \d+ ms", timing), timing
    # Generate with another seed: a new grid and a new strip.
    seed = browser.find_element("id", "seed")
    seed.clear()
    seed.send_keys("7")
    before, strip_before, src = _version(browser, "grid"), _version(browser, "strip"), grid.get_attribute("src")
    browser.find_element("id", "generate").click()
    _new_grid(browser, before)
    _wait(browser, lambda d: _version(d, "strip") > strip_before, "a new strip")
    _wait(browser, lambda d: not d.find_element("id", "progress").is_displayed(), "the progress bar to go")
    assert grid.get_attribute("src") != src
    download = browser.find_element("id", "download")
    assert download.get_attribute("href") == grid.get_attribute("src") and download.get_attribute("download").endswith(".png")
    assert browser.find_element("id", "message").text == ""
    severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not severe, severe  # no script error, nothing blocked by the page's Content-Security-Policy
    browser.save_screenshot(str(tmp_path / "demo.png"))
    record = {"what": "slider change to new grid on screen, 16 samples at 8x8, shipped run, cpu backend",
              "ms": latencies, "median_ms": statistics.median(latencies), "timing_line": timing}
    (tmp_path / "latency.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"\nslider -> grid on screen (16 samples, 8x8): {latencies} ms, median {record['median_ms']} ms; {tmp_path}")


def test_a_bad_value_shows_the_message_and_the_server_goes_on(browser, demo_url, tmp_path):
    _open(browser, demo_url)
    temperature, message = browser.find_element("id", "temperature"), browser.find_element("id", "message")
    temperature.clear()
    temperature.send_keys("0")
    browser.find_element("id", "generate").click()
    _wait(browser, lambda d: message.text != "", "the error message")
    assert message.text == "temperature should be a finite number > 0, got 0"
    browser.save_screenshot(str(tmp_path / "demo-error.png"))
    with urllib.request.urlopen(demo_url + "api/info", timeout=30) as reply:
        assert reply.status == 200
    # The page goes on too: a good value samples again and clears the message.
    temperature.clear()
    temperature.send_keys("0.8")
    before = _version(browser, "grid")
    browser.find_element("id", "generate").click()
    _new_grid(browser, before)
    _wait(browser, lambda d: message.text == "", "the message to clear")


def test_two_tabs_sampling_at_once_both_get_their_images(browser, demo_url):
    _open(browser, demo_url)
    first = browser.current_window_handle
    browser.switch_to.new_window("tab")
    _open(browser, demo_url)
    second = browser.current_window_handle
    before = {}
    for tab, seed in ((first, "11"), (second, "12")):  # both requests leave within milliseconds
        browser.switch_to.window(tab)
        before[tab] = _version(browser, "grid")
        browser.execute_script(f"document.getElementById('seed').value = '{seed}';"
                               "document.getElementById('generate').click();")
    srcs = set()
    for tab in (first, second):
        browser.switch_to.window(tab)
        _new_grid(browser, before[tab])
        assert browser.find_element("id", "message").text == ""
        srcs.add(browser.find_element("id", "grid").get_attribute("src"))
    assert len(srcs) == 2


def test_dragging_the_slider_ends_on_the_grid_of_where_it_stopped(browser, demo_url):
    from selenium.webdriver.common.action_chains import ActionChains

    _open(browser, demo_url)
    alpha = browser.find_element("id", "alpha")
    drag = ActionChains(browser).click_and_hold(alpha)  # the middle: alpha 0.5
    for _ in range(12):
        drag.move_by_offset(20, 0).pause(0.03)  # ~0.4 s of dragging to the right end
    drag.release().perform()
    assert alpha.get_attribute("value") == "1"
    # Every change while a grid was on its way was gathered into one more request: the last grid
    # shown is alpha 1's, and the page goes idle.
    _wait(browser, lambda d: d.find_element("id", "download").get_attribute("download") == "pegasi-alpha1-seed0.png"
          and not d.find_element("id", "progress").is_displayed(), "the grid of alpha 1")
    with urllib.request.urlopen(urllib.request.Request(
            demo_url + "api/grid", data=json.dumps({"alpha": 1, "n": 16}).encode(),
            headers={"Content-Type": "application/json"}), timeout=60) as reply:
        expected = json.loads(reply.read().splitlines()[-1])["image"]
    assert browser.find_element("id", "grid").get_attribute("src") == expected

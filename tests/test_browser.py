"""The report in a real browser: headless Chromium (Debian's chromium + chromium-driver) via selenium."""

from __future__ import annotations

import shutil

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

from conftest import harness

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--window-size=1280,2000")


@pytest.fixture(scope="module")
def chromium():
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in FLAGS:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # the system chromedriver, named explicitly so selenium never fetches one
    driver = webdriver.Chrome(options=options, service=Service(executable_path=shutil.which("chromedriver")))
    yield driver
    driver.quit()


@pytest.mark.parametrize("which", ["compare", "wide"])
def test_report_opens_without_console_errors(chromium, which, compare_runs, wide_store, tmp_path) -> None:
    db = compare_runs.db if which == "compare" else wide_store
    out = tmp_path / f"{which}.html"
    assert harness("report", "--db", str(db), "--out", str(out)).returncode == 0
    chromium.get(out.as_uri())
    assert chromium.find_element("tag name", "h1").text in ("tiny-compare", "wide")
    images = chromium.execute_script(
        "return Array.from(document.images).map(i => i.complete && i.naturalWidth > 0)")
    assert all(images)
    errors = [entry for entry in chromium.get_log("browser") if entry["level"] == "SEVERE"]
    assert errors == []
    shot = tmp_path / f"{which}.png"
    assert chromium.save_screenshot(str(shot)) and shot.stat().st_size > 10_000

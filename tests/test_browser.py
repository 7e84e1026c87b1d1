"""The report in a real browser: headless Chromium (Debian's chromium + chromium-driver) via selenium."""

from __future__ import annotations

import json
import shutil

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

from conftest import PROMPTS, harness, write_scenario
from harness.analysis.budgets import evaluate

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


def test_report_opens_on_the_claims_table(chromium, server, tmp_path) -> None:
    """The first screen is the claims table: one row per claimed budget and target, each with the
    verdict the JSON gives, the emulated target marked, and a reading line under it."""
    claim = {"technique": "DS2D", "paper": "up to 2.3x faster decode"}
    scenario = write_scenario(
        tmp_path / "scenarios", PROMPTS[:1], name="claims",
        variants={"precision": ["fp32"], "include": [{"precision": "fp32", "decoding": "ds2d"}]},
        baseline={"precision": "fp32", "decoding": "greedy"}, targets=["local", "adb:emu-galaxy-s25"],
        budgets=[{"metric": "ds2d_speedup", "variant": {"decoding": "ds2d"}, "min": 1.5, "claim": claim},
                 {"metric": "matches_greedy", "variant": {"decoding": "ds2d"}, "stat": "mean", "min": 1.0,
                  "claim": {"technique": "DS2D", "paper": "lossless"}}])
    out, report = tmp_path / "claims.json", tmp_path / "claims.html"
    run = harness("run", str(scenario), "--db", str(tmp_path / "r.sqlite"), "--json", str(out), "--report", str(report))
    assert run.returncode in (0, 1, 3), run.stderr[-2000:]
    assert "claims: 2 variants x 2 target(s)" in run.stderr  # the plan, said before the first runner
    expected = {(v.budget.metric, v.target): v.outcome for v in evaluate(json.loads(out.read_text()))}
    chromium.get(report.as_uri())
    first = chromium.find_element("css selector", "h2")
    assert first.text == "The paper's claims" and first.location["y"] < 900  # on the first screen
    rows = chromium.find_elements("css selector", "table.claims tr")[1:]
    cells = [[td.text for td in row.find_elements("tag name", "td")] for row in rows]
    seen = {(c[2].split()[0], c[3].replace(" emulated", "")): c[-1] for c in cells}
    assert seen == expected and len(seen) == 4
    assert all(c[0] == "DS2D" for c in cells)
    assert sum("emulated" in c[3] for c in cells) == 2
    assert {c[-1] for c in cells if c[2].startswith("matches_greedy")} == {"pass"}
    readings = chromium.find_elements("css selector", "ul.readings li")
    assert len(readings) == 4 and all("the paper claims" in r.text for r in readings)
    shot = tmp_path / "claims.png"
    assert chromium.save_screenshot(str(shot)) and shot.stat().st_size > 10_000

"""The live dashboard in a real browser: Debian's headless chromium (through chromedriver and
selenium) loads the pages from a real evaluator during a running experiment, signs in, sees the
numbers change as rows are logged and ticked, and the rendered values are the API's. Skipped
only where chromium or chromedriver is not installed (.ci/run installs them)."""

from __future__ import annotations

import json
import os
import shutil
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from abgate.v1 import control_pb2 as cpb
from tests.conftest import DemoStore
from tests.evaluator.conftest import TOKEN, InProcessEvaluator, ab_definition, evaluator_settings
from tests.evaluator.test_drift import _rows, insert_rows

READ_TOKEN = "viewer-token-7c2d"

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
pytestmark = pytest.mark.skipif(
    not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()),
    reason="chromium and chromium-driver are not installed",
)


def browser(width: int = 1400, height: int = 2200) -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu",
                f"--window-size={width},{height}", "--disable-dev-shm-usage"):  # fmt: skip
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def wait_until(fn: Callable[[], Any], timeout: float = 20.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = fn()
            if last:
                return last
        except Exception as exc:  # the page may be between two renders
            last = exc
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}: {last!r}")


def api(port: int, path: str) -> Any:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    req.add_header("Authorization", f"Bearer {TOKEN}")
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


class Stack:
    def __init__(self, ev: InProcessEvaluator, url: str) -> None:
        self.ev, self.url = ev, url
        self.port = ev.server.http_port
        self.base = f"http://127.0.0.1:{self.port}"
        self.rng = np.random.default_rng(7)
        self.next_id = 0

    def traffic(self, n: int) -> None:
        """``n`` rows per arm, logged and counted by a tick."""
        for arm in ("control", "treatment"):
            insert_rows(self.url, "exp", arm, _rows(self.rng, n, 2.0, 5.0, self.next_id))
            self.next_id += n
        self.ev.call(self.ev.server.tick())


@pytest.fixture
def stack(fresh_db: str, demo_store: DemoStore) -> Iterator[Stack]:
    ev = InProcessEvaluator(
        evaluator_settings(
            fresh_db, demo_store.root, http_listen="127.0.0.1:0", tick_interval=3600, settle=0.0,
            read_token=READ_TOKEN,
        )
    )  # fmt: skip
    try:
        shas = {m.id: m.sha256 for m in demo_store.metas.values()}
        definition = ab_definition(
            "exp", shas["demo-logreg"], shas["demo-gbdt"], min_samples=10**6, primary_metric="score"
        )
        ev.admin.call("CreateExperiment", cpb.CreateExperimentRequest(definition=definition))
        s = Stack(ev, fresh_db)
        s.traffic(200)
        yield s
    finally:
        ev.close()


def _text(driver: Any, css: str) -> str:
    from selenium.webdriver.common.by import By

    return str(driver.find_element(By.CSS_SELECTOR, css).text)


def shot(driver: Any, name: str) -> None:
    """With ABGATE_SCREENSHOTS=DIR (`make screenshots`), the page as PNG in DIR."""
    out = os.environ.get("ABGATE_SCREENSHOTS")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(out) / f"{name}.png"))


def _no_page_errors(driver: Any) -> None:
    # (401s of the sign-in steps are the browser's own network log lines, not page errors)
    severe = [
        e for e in driver.get_log("browser")
        if e["level"] == "SEVERE" and not (e["source"] == "network" and "401" in e["message"])
    ]  # fmt: skip
    assert severe == [], severe
    assert driver.execute_script("return window.abgate.errors") == 0


def test_the_pages_need_a_sign_in_and_show_what_the_api_says(stack: Stack) -> None:
    from selenium.webdriver.common.by import By

    driver = browser()
    try:
        # Without a token: the sign-in form, no data.
        driver.get(stack.base + "/")
        wait_until(lambda: driver.find_element(By.ID, "signin").is_displayed(), what="sign-in")
        shot(driver, "signin")
        assert not driver.find_element(By.ID, "content").is_displayed()
        driver.find_element(By.ID, "token").send_keys("wrong")
        driver.find_element(By.CSS_SELECTOR, "#signin-form button").click()
        wait_until(lambda: _text(driver, "#signin-error"), what="a refused token")
        driver.find_element(By.ID, "token").clear()
        # The read-only token is enough for every page (they only read).
        driver.find_element(By.ID, "token").send_keys(READ_TOKEN)
        driver.find_element(By.CSS_SELECTOR, "#signin-form button").click()
        row = 'tr[data-name="exp"]'
        wait_until(lambda: _text(driver, f"{row} .status") == "running", what="the list")
        listed = api(stack.port, "/api/v1/experiments")["experiments"][0]
        assert _text(driver, f"{row} .weights") == "control=50%, treatment=50%"
        assert _text(driver, f"{row} .kind") == listed["definition"]["kind"]
        assert _text(driver, f"{row} .version") == str(listed["version"])
        assert _text(driver, f"{row} .verdict") == listed["verdict"]["recommendation"]
        _no_page_errors(driver)
        shot(driver, "experiments")

        # The experiment's page (signed in for this tab already), then live updates.
        driver.find_element(By.CSS_SELECTOR, f"{row} a").click()
        arm = 'tr[data-arm="control"]'
        wait_until(lambda: _text(driver, f"{arm} .n") == "200", what="the arms table")
        results = api(stack.port, "/api/v1/experiments/exp/results")
        assert _text(driver, "#status") == "running"
        assert _text(driver, 'tr[data-arm="treatment"] .n') == str(
            results["arms"]["treatment"]["n"]
        )
        effect = results["tests"]["treatment"]["effect"]
        assert float(_text(driver, 'tr[data-arm="treatment"] .effect')) == pytest.approx(
            effect, rel=1e-3
        )
        for chart in ("shares", "metric", "effect", "drift"):
            assert driver.find_elements(By.CSS_SELECTOR, f"#chart-{chart} canvas"), chart
        # The metric chart draws each arm's confidence sequence as a band around its mean.
        labels = driver.execute_script("return window.abgate.series['chart-metric']")
        assert labels == [f"{a}{s}" for a in ("control", "treatment")
                          for s in ("", " 95% CS high", " 95% CS low")]  # fmt: skip
        renders = driver.execute_script("return window.abgate.renders")
        stack.traffic(150)
        wait_until(lambda: _text(driver, f"{arm} .n") == "350", what="the page to update")
        assert driver.execute_script("return window.abgate.renders") > renders
        shot(driver, "experiment")
        results = api(stack.port, "/api/v1/experiments/exp/results")
        mean = results["arms"]["control"]["mean"]
        assert float(_text(driver, f"{arm} .metric")) == pytest.approx(mean, rel=1e-3)
        history = api(stack.port, "/api/v1/experiments/exp/history?steps_only=true")
        assert _text(driver, "#timeline li .action") == history["entries"][0]["action"]
        # An operator's action shows without a reload.
        stack.ev.admin.call("Pause", cpb.ExperimentRequest(name="exp", reason="look"))
        wait_until(lambda: _text(driver, "#status") == "paused", what="the pause")
        _no_page_errors(driver)
    finally:
        driver.quit()


def test_the_pages_hold_no_data_and_vendor_their_scripts(stack: Stack) -> None:
    """The HTML, script and chart library are served without a token (they hold no numbers),
    from this server only: no CDN, a Content-Security-Policy of 'self'."""
    from evaluator.dashboard import STATIC

    for path in ("/", "/experiments/exp"):
        with urllib.request.urlopen(stack.base + path, timeout=30) as r:
            page = r.read().decode()
            assert "default-src 'self'" in r.headers["Content-Security-Policy"]
        assert "http" not in page.replace('charset="utf-8"', "")  # no external address
    for name in ("app.js", "app.css", "vendor/uplot-1.6.32/uPlot.iife.min.js"):
        with urllib.request.urlopen(f"{stack.base}/static/{name}", timeout=30) as r:
            assert r.read() == (STATIC / name).read_bytes()


def test_the_vendored_chart_library_is_the_released_one() -> None:
    import hashlib

    from evaluator.dashboard import STATIC

    vendor = STATIC / "vendor" / "uplot-1.6.32"
    sums = [line.split() for line in (vendor / "VENDORED.md").read_text().splitlines()]
    listed = {name: digest for digest, name in (x for x in sums if len(x) == 2 and len(x[0]) == 64)}
    assert set(listed) == {"uPlot.iife.min.js", "uPlot.min.css", "LICENSE"}
    for name, digest in listed.items():
        assert hashlib.sha256((vendor / name).read_bytes()).hexdigest() == digest, name

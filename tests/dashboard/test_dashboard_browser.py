"""The dashboard in a real browser: headless Debian Chromium driven by Selenium through the system
chromedriver (nothing is downloaded), against the live API over a seeded store.

Skipped only when Chromium or its driver is not installed (CI installs them: `apt-get install -y
chromium chromium-driver`). Screenshots go to $BERTFLEET_SCREENSHOTS, else a tmp dir.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from dashboard_fixtures import TOKEN, Fleet

from orchestrator.state import JobState

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"

pytestmark = [
    pytest.mark.skipif(not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)),
                       reason="Chromium is not installed (apt-get install -y chromium chromium-driver)"),
    pytest.mark.timeout(300),
]

webdriver = pytest.importorskip("selenium.webdriver") if os.path.exists(CHROMIUM) else None


@pytest.fixture(scope="module")
def screenshots() -> Path:
    path = Path(os.environ.get("BERTFLEET_SCREENSHOTS") or tempfile.mkdtemp(prefix="bertfleet-screens-"))
    path.mkdir(parents=True, exist_ok=True)
    print(f"screenshots in {path}")
    return path


@pytest.fixture()
def browser(tmp_path: Path) -> Iterator[Any]:
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1500,1000", f"--user-data-dir={tmp_path / 'chromium'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(check: Callable[[], Any], timeout_s: float = 15.0, what: str = "the page") -> Any:
    """Polls `check` until it returns something truthy (exceptions count as not yet)."""
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except Exception as err:  # noqa: BLE001 - an element not there yet
            last = err
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}" + (f": {last}" if last else ""))


def login(driver: Any, fleet: Fleet, token: str = TOKEN) -> None:
    from selenium.webdriver.common.by import By

    driver.get(fleet.url + "/")
    wait_for(lambda: driver.find_element(By.ID, "login").is_displayed(), what="the login form")
    driver.find_element(By.ID, "token").send_keys(token)
    driver.find_element(By.ID, "login-button").click()


def rows(driver: Any) -> dict[str, str]:
    """job id -> state, from the jobs table."""
    from selenium.webdriver.common.by import By

    return {r.get_attribute("data-job"): r.get_attribute("data-state")
            for r in driver.find_elements(By.CSS_SELECTOR, "#jobs-body tr[data-job]")}


def test_login_is_required(browser: Any, fleet: Fleet, screenshots: Path):
    from selenium.webdriver.common.by import By

    # the API and the dashboard's code refuse a request without the token
    for path in ("/jobs", "/metrics", "/cluster", "/dashboard/jobs", "/ui/app.js", "/ui/app.css"):
        assert fleet.request("GET", path, token=None)[0] == 401, path
    # the page without a token shows only the login form, no data
    browser.get(fleet.url + "/")
    wait_for(lambda: browser.find_element(By.ID, "login").is_displayed(), what="the login form")
    assert not browser.find_element(By.ID, "app").is_displayed()
    assert "bert-base-pretrain" not in browser.page_source
    # a wrong token is refused and nothing is shown
    login(browser, fleet, token="wrong-token-0123456789abcdef")
    wait_for(lambda: "refused" in browser.find_element(By.ID, "login-error").text, what="the refusal")
    assert browser.execute_script("return sessionStorage.getItem('bertfleet.token')") is None
    browser.save_screenshot(str(screenshots / "login.png"))
    # the right one opens the dashboard; the token is in sessionStorage, not the URL
    login(browser, fleet)
    wait_for(lambda: len(rows(browser)) == 6, what="the jobs table")
    assert TOKEN not in browser.current_url
    assert browser.execute_script("return sessionStorage.getItem('bertfleet.token')") == TOKEN


def test_jobs_table_filter_and_cancel(browser: Any, fleet: Fleet, screenshots: Path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    login(browser, fleet)
    expected = {job.id: job.state.value for job in fleet.store.jobs()}
    assert set(expected.values()) == {"RUNNING", "SUCCEEDED", "FAILED", "QUEUED"}
    wait_for(lambda: rows(browser) == expected, what="every job with its state")
    big = browser.find_element(By.CSS_SELECTOR, f"tr[data-job='{fleet.jobs['bert-base-pretrain']}']").text
    for shown in ("bert-base-pretrain", "RUNNING", "pretrain", "base", "4 x A100", "300 / 1000", "1.86", "512 ex/s"):
        assert shown in big, (shown, big)
    tpu = browser.find_element(By.CSS_SELECTOR, f"tr[data-job='{fleet.jobs['tpu-pretrain']}']")
    cells = [td.text for td in tpu.find_elements(By.TAG_NAME, "td")]
    assert cells[9:11] == ["2", "1"], cells  # attempts, preemptions
    browser.save_screenshot(str(screenshots / "jobs.png"))

    Select(browser.find_element(By.ID, "state-filter")).select_by_value("QUEUED")
    queued = {fleet.jobs["mrpc-queued"], fleet.jobs["to-cancel"]}
    wait_for(lambda: set(rows(browser)) == queued and set(rows(browser).values()) == {"QUEUED"}, what="the filter")

    target = fleet.jobs["to-cancel"]
    browser.find_element(By.CSS_SELECTOR, f"button.cancel[data-job='{target}']").click()
    wait_for(lambda: browser.switch_to.alert, what="the confirmation").accept()
    wait_for(lambda: fleet.store.get(target).state == JobState.CANCELLED, what="the store to record the cancel")
    wait_for(lambda: set(rows(browser)) == {fleet.jobs["mrpc-queued"]}, what="the cancelled job to leave the filter")
    assert [e.to_state for e in fleet.store.events(target)][-1] == JobState.CANCELLED

    # live: a change made behind the page's back shows up without a reload
    Select(browser.find_element(By.ID, "state-filter")).select_by_value("")
    fleet.store.cancel(fleet.jobs["mrpc-queued"], who="a test")
    wait_for(lambda: rows(browser).get(fleet.jobs["mrpc-queued"]) == "CANCELLED", what="the page to poll")


def test_job_page(browser: Any, fleet: Fleet, screenshots: Path):
    from selenium.webdriver.common.by import By

    login(browser, fleet)
    wait_for(lambda: rows(browser), what="the jobs table")
    browser.find_element(By.LINK_TEXT, "bert-base-pretrain").click()
    wait_for(lambda: len(browser.find_elements(By.CSS_SELECTOR, "#events li")) == 3, what="the events")
    events = browser.find_element(By.ID, "events").text
    assert "submitted with priority 0" in events and "launched attempt 1" in events and "placed on" in events

    def curve(box: str) -> int:
        svg = browser.find_element(By.CSS_SELECTOR, f"#{box} svg")
        points = svg.find_element(By.TAG_NAME, "polyline").get_attribute("points").split()
        return len(points)

    assert wait_for(lambda: curve("loss-chart"), what="the loss curve") == 30
    assert curve("lr-chart") == 30
    assert "masked_lm_accuracy" in browser.find_element(By.ID, "eval-table").text
    assert "step 300: loss" in browser.find_element(By.ID, "log-tail").text
    spec = browser.find_element(By.ID, "spec").text
    assert '"num_train_steps": 1000' in spec and '"accelerator_type": "A100"' in spec
    browser.save_screenshot(str(screenshots / "job.png"))

    # a preempted job's timeline names the reason
    browser.get(fleet.url + "/#/job/" + fleet.jobs["tpu-pretrain"])
    wait_for(lambda: "the TPU host was preempted" in browser.find_element(By.ID, "events").text,
             what="the preemption event")
    assert "requeued after preemption 1" in browser.find_element(By.ID, "events").text


def test_cluster_page(browser: Any, fleet: Fleet, screenshots: Path):
    from selenium.webdriver.common.by import By

    login(browser, fleet)
    wait_for(lambda: rows(browser), what="the jobs table")
    browser.find_element(By.ID, "nav-cluster").click()

    def node(name: str) -> str:
        return browser.find_element(By.CSS_SELECTOR, f"#nodes-body tr[data-node='{name}']").text

    wait_for(lambda: len(browser.find_elements(By.CSS_SELECTOR, "#nodes-body tr")) == 4, what="the nodes")
    gpu0 = node("10.0.0.2/gpu-a100-0")
    assert "alive" in gpu0 and "A100" in gpu0 and "GPU: 4 / 8" in gpu0 and "bert-base-pretrain × 4" in gpu0
    assert "tpu-pretrain × 1" in node("10.0.0.4/tpu-v4-0") and "TPU-host: 1 / 1" in node("10.0.0.4/tpu-v4-0")
    assert "free" in node("10.0.0.3/gpu-a100-1")
    assert "dead" in node("10.0.0.9/deadbeef")
    assert "3 node(s) alive, 1 dead" in browser.find_element(By.ID, "cluster-summary").text
    browser.save_screenshot(str(screenshots / "cluster.png"))

"""The dashboard in a real browser against a live cluster running real jobs: headless Debian Chromium
driven by Selenium (the system chromedriver, nothing downloaded) on the API of the controller actor of
a simulated Ray cluster (tests/live_fleet.py: a head and one node with 2 fake GPUs, CPU execution),
with tiny pretraining jobs submitted through the HTTP client:

  long-run      1 GPU, 20000 steps, a checkpoint every 10: RUNNING throughout, cancelled from the page
  short-run     1 GPU, 6 steps: SUCCEEDED before the first page is loaded
  needs-4-gpus  4 GPUs on 2 hosts, more than the cluster has: QUEUED, cancelled from the page

Each page is checked against what the API and the job's output directory say, and screenshotted to a
tmp dir (also to $BERTFLEET_SCREENSHOTS/live when that is set, as test_dashboard_browser.py does).
Skipped only when Chromium or its driver is not installed (`apt-get install -y chromium chromium-driver`).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from live_fleet import (
    LiveFleet,
    pretrain_spec,
    running_fleet,
    step_of,
    wait_for_job,
)
from test_dashboard_browser import CHROMEDRIVER, CHROMIUM, login, rows, wait_for
from tiny_job import write_tiny_config

pytestmark = [
    pytest.mark.skipif(not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)),
                       reason="Chromium is not installed (apt-get install -y chromium chromium-driver)"),
    pytest.mark.timeout(600),
]

pytest.importorskip("ray.train", reason="Ray Train runs the jobs (pip install 'ray[train]')")

LONG, SHORT, QUEUED = "long-run", "short-run", "needs-4-gpus"
LONG_STEPS, SHORT_STEPS = 20000, 6  # long-run never ends by itself: it is cancelled


@dataclass
class Live:
    """The running fleet, its jobs (name -> id) and their output directories (name -> path)."""

    fleet: LiveFleet
    ids: dict[str, str] = field(default_factory=dict)
    out: dict[str, Path] = field(default_factory=dict)

    def request(self, path: str, token: str | None = "") -> tuple[int, str]:
        """(status, body) of a GET, with the fleet's token unless another (or None: none) is given."""
        req = urllib.request.Request(self.fleet.url + path)
        token = self.fleet.token if token == "" else token
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=30) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode()

    def get_json(self, path: str) -> Any:
        status, body = self.request(path)
        assert status == 200, (path, status, body)
        return json.loads(body)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, shared: Path) -> Iterator[Live]:
    home = tmp_path_factory.mktemp("live-fleet")
    config = write_tiny_config(home / "bert_config.json")
    with running_fleet(home, num_gpu_nodes=1) as fleet:
        live = Live(fleet)
        for name, steps, gpus, hosts in ((LONG, LONG_STEPS, 1, 1), (SHORT, SHORT_STEPS, 1, 1), (QUEUED, 6, 4, 2)):
            live.out[name] = home / "out" / name
            spec = pretrain_spec(config, shared, live.out[name], steps, gpus=gpus, num_hosts=hosts, save_every=10,
                                 name=name)
            live.ids[name] = fleet.client.submit(spec)["id"]
        client = fleet.client
        wait_for_job(client, live.ids[SHORT], lambda j: j["state"] == "SUCCEEDED", timeout_s=300)
        wait_for_job(client, live.ids[LONG], lambda j: j["state"] == "RUNNING" and (j["checkpoint_step"] or 0) >= 10,
                     timeout_s=300)
        assert client.get(live.ids[QUEUED])["state"] == "QUEUED"
        try:
            yield live
        finally:
            for job_id in live.ids.values():  # a test that failed before cancelling leaves nothing running
                if client.get(job_id)["state"] not in ("SUCCEEDED", "FAILED", "CANCELLED"):
                    client.cancel(job_id)


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Where screenshots go: a tmp dir, and $BERTFLEET_SCREENSHOTS/live when that is set."""
    dirs = [tmp_path_factory.mktemp("screenshots")]
    if os.environ.get("BERTFLEET_SCREENSHOTS"):
        dirs.append(Path(os.environ["BERTFLEET_SCREENSHOTS"]) / "live")
        dirs[-1].mkdir(parents=True, exist_ok=True)
    print(f"screenshots in {', '.join(map(str, dirs))}")
    return dirs


def shoot(driver: Any, screenshots: list[Path], name: str) -> None:
    assert driver.save_screenshot(str(screenshots[0] / name)), name
    for other in screenshots[1:]:
        shutil.copyfile(screenshots[0] / name, other / name)


@pytest.fixture(scope="module")
def page(live: Live, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One Chromium tab, signed in to the live API, for the whole module."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1500,1100",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        login(driver, live.fleet, token=live.fleet.token)
        wait_for(lambda: rows(driver), timeout_s=30, what="the jobs table after login")
        yield driver
    finally:
        driver.quit()


def go(driver: Any, hash_: str) -> None:
    """Another page of the dashboard, as a click on a link does (no reload)."""
    driver.execute_script("location.hash = arguments[0]", hash_)


def cells(driver: Any, job_id: str) -> list[str] | None:
    """The texts of a job's row in the jobs table, read in one go (the table is re-rendered every 2 s)."""
    return driver.execute_script(
        "const row = document.querySelector(`#jobs-body tr[data-job='${arguments[0]}']`);"
        "return row ? [...row.cells].map((c) => c.innerText.trim()) : null;", job_id)


def shown_step(driver: Any, job_id: str) -> int:
    """The step a job's row shows ("step / total")."""
    row = cells(driver, job_id)
    match = re.search(r"(\d+) / (\d+)", row[5]) if row else None
    assert match, row
    return int(match.group(1))


def shown_number(text: str) -> float:
    """A number as the dashboard formats it (en-US thousands separators above 1000)."""
    return float(text.replace(",", ""))


def facts(driver: Any) -> dict[str, str]:
    """The job page's facts (name -> shown value)."""
    return driver.execute_script(
        "return Object.fromEntries([...document.querySelectorAll('#job-head dl.facts > div')]"
        ".map((d) => [d.querySelector('dt').textContent, d.querySelector('dd').textContent]));")


def chart_points(driver: Any, box: str) -> int:
    return int(driver.execute_script(
        f"const svg = document.querySelector('#{box} svg'); return svg ? svg.getAttribute('data-points') : -1;"))


def events_shown(driver: Any) -> list[str]:
    return driver.execute_script("return [...document.querySelectorAll('#events li')].map((li) => li.innerText);")


def train_records(out: Path) -> list[dict[str, Any]]:
    """The train/* records the job wrote to metrics.jsonl."""
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines[:-1]) if "train/loss" in r]  # the last line may be half written


def test_jobs_table_shows_the_live_jobs_updates_without_reload_and_filters(live: Live, page: Any, screenshots):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    long_id, short_id, queued_id = live.ids[LONG], live.ids[SHORT], live.ids[QUEUED]
    go(page, "#/jobs")
    expected = {long_id: "RUNNING", short_id: "SUCCEEDED", queued_id: "QUEUED"}
    wait_for(lambda: rows(page) == expected, timeout_s=30, what=f"the three jobs in their states {expected}")

    row = cells(page, long_id)
    name, state, kind, model, resources, progress, loss, throughput, _eta, attempts, preemptions = row[:11]
    assert name.startswith(LONG) and long_id in name
    assert (state, kind, resources, attempts, preemptions) == ("RUNNING", "pretrain", "1 x GPU (ddp)", "1", "0"), row
    assert model.endswith("bert_config.json"), model  # a config file, not a named size
    assert re.fullmatch(rf"\d+ / {LONG_STEPS}", progress), progress
    assert 0 < float(loss) < 30, loss  # MLM over a 30522-word vocabulary starts near ln(30522) + ln(2)
    assert throughput.endswith(" ex/s") and shown_number(throughput.removesuffix(" ex/s")) > 0, throughput
    row = cells(page, short_id)
    assert row[1] == "SUCCEEDED" and row[5] == f"{SHORT_STEPS} / {SHORT_STEPS}" and row[13] == "", row  # no cancel
    final = live.fleet.client.get(short_id)["progress"]  # an ended job's numbers stay put: the page shows them
    assert float(row[6]) == pytest.approx(final["loss"], rel=5e-4), (row, final)  # 4 significant digits
    assert shown_number(row[7].removesuffix(" ex/s")) == pytest.approx(final["throughput"], rel=5e-3, abs=0.5), (
        row, final)  # 3 significant digits (100.4 ex/s once showed as "1 ex/s")
    row = cells(page, queued_id)
    assert row[1] == "QUEUED" and row[4] == "4 x GPU (ddp)" and row[5] == "–" and row[9] == "0", row
    shoot(page, screenshots, "jobs.png")

    # live: the running job's step grows on the page, and the page was not reloaded for it
    page.execute_script("window.liveMarker = 'not reloaded'")
    first = shown_step(page, long_id)
    second = wait_for(lambda: (step := shown_step(page, long_id)) > first and step, timeout_s=60,
                      what=f"the step to grow past {first} on the page")
    assert page.execute_script("return window.liveMarker") == "not reloaded"
    api_step = step_of(live.fleet.client.get(long_id))
    assert first < second <= api_step, (first, second, api_step)  # the page shows what the API has, or older

    for state, wanted in (("RUNNING", {long_id}), ("QUEUED", {queued_id}), ("SUCCEEDED", {short_id}),
                          ("FAILED", set()), ("", set(expected))):
        Select(page.find_element(By.ID, "state-filter")).select_by_value(state)
        wait_for(lambda wanted=wanted: set(rows(page)) == wanted, timeout_s=15, what=f"the filter {state or 'all'}")
        if state == "RUNNING":
            shoot(page, screenshots, "jobs-running.png")
        if state == "FAILED":
            assert "no jobs" in page.find_element(By.ID, "jobs-body").text


def test_job_page_of_the_running_job(live: Live, page: Any, screenshots):
    job_id, out = live.ids[LONG], live.out[LONG]
    go(page, f"#/job/{job_id}")
    wait_for(lambda: len(events_shown(page)) == 3, timeout_s=30, what="the running job's three events")
    events = live.fleet.client.events(job_id)
    assert [e["to_state"] for e in events] == ["QUEUED", "SCHEDULED", "RUNNING"]
    for shown, event in zip(events_shown(page), events):  # each with its reason
        assert event["to_state"] in shown and event["reason"] in shown, (shown, event)
    assert "submitted with priority 0" in events[0]["reason"]
    assert re.search(r"gang of 1 x .* placed on 127\.0\.0\.1/[0-9a-f]{8}", events[1]["reason"]), events[1]
    assert "launched attempt 1" in events[2]["reason"]

    # the loss curve is drawn from metrics.jsonl and grows while the page is open
    first = wait_for(lambda: chart_points(page, "loss-chart") >= 10 and chart_points(page, "loss-chart"),
                     timeout_s=30, what="the loss curve")
    assert first <= len(train_records(out)) + 1  # one point per logged step
    drawn = page.execute_script("const svg = document.querySelector('#loss-chart svg');"
                                "return [+svg.getAttribute('data-points'),"
                                " svg.querySelector('polyline').getAttribute('points').trim().split(/\\s+/).length];")
    assert drawn[0] == drawn[1], drawn
    wait_for(lambda: chart_points(page, "loss-chart") > first, timeout_s=60, what="the loss curve to grow")
    assert chart_points(page, "lr-chart") > 0

    # the job's facts, checkpoint included: a committed checkpoint on disk at the step shown (or newer)
    shown = wait_for(lambda: (f := facts(page)).get("checkpoint step", "–") != "–" and f, timeout_s=30,
                     what="the checkpoint step")
    from jobs.checkpoint import CheckpointStore

    checkpoint = int(shown["checkpoint step"])
    assert checkpoint >= 10 and checkpoint % 10 == 0, shown
    assert (CheckpointStore(str(out)).latest() or 0) >= checkpoint
    assert (shown["kind"], shown["attempts"], shown["preemptions"], shown["failures"]) == ("pretrain", "1", "0", "0")
    assert re.fullmatch(rf"\d+ / {LONG_STEPS}", shown["step"]) and shown["throughput"].endswith(" ex/s"), shown

    # the log tail is job.log's, as the job writes it
    log_line = re.compile(rf"step (\d+)/{LONG_STEPS}\s+loss [0-9.]+")
    tail = wait_for(lambda: log_line.search(t := page.find_element("id", "log-tail").text) and t, timeout_s=30,
                    what="training lines in the log tail")
    on_disk = (out / "job.log").read_text()
    newest = max(int(m.group(1)) for m in log_line.finditer(tail))
    assert f"step {newest}/{LONG_STEPS}" in on_disk

    # the resolved spec: what was submitted, with the defaults filled in
    spec = page.find_element("id", "spec").text
    for shown_field in (f'"num_train_steps": {LONG_STEPS}', '"save_checkpoints_steps": 10', '"keep_checkpoints": 3',
                        '"max_seq_length": 128', f'"output_dir": "{out}"', '"backend": "ddp"'):
        assert shown_field in spec, shown_field
    shoot(page, screenshots, "job-running.png")
    page.execute_script("document.getElementById('log-tail').scrollIntoView()")
    shoot(page, screenshots, "job-running-log.png")


def test_job_pages_of_the_finished_and_the_queued_job(live: Live, page: Any, screenshots):
    go(page, f"#/job/{live.ids[SHORT]}")
    wait_for(lambda: len(events_shown(page)) == 4, timeout_s=30, what="the finished job's four events")
    assert [e.split("\n")[0].split()[-1] for e in events_shown(page)] == ["QUEUED", "SCHEDULED", "RUNNING",
                                                                        "SUCCEEDED"]
    wait_for(lambda: chart_points(page, "loss-chart") == SHORT_STEPS, timeout_s=15, what="all 6 losses on the curve")
    shown = facts(page)
    assert shown["step"] == f"{SHORT_STEPS} / {SHORT_STEPS}" and shown["checkpoint step"] == str(SHORT_STEPS), shown
    assert shown["finished"] != "–"
    assert f"step {SHORT_STEPS}/{SHORT_STEPS}" in page.find_element("id", "log-tail").text
    shoot(page, screenshots, "job-succeeded.png")

    go(page, f"#/job/{live.ids[QUEUED]}")
    # Submitted, then the controller's one note that the whole cluster is too small for it.
    wait_for(lambda: len(events_shown(page)) == 2, timeout_s=30, what="the queued job's two events")
    submitted, waiting = events_shown(page)
    assert "submitted with priority 0" in submitted and "waiting for capacity" in waiting, (submitted, waiting)
    shown = facts(page)
    assert (shown["step"], shown["checkpoint step"], shown["attempts"]) == ("–", "–", "0"), shown
    assert page.find_element("id", "log-tail").text == "(no log yet)"
    assert "no data yet" in page.find_element("id", "loss-chart").text
    assert '"devices_per_host": 2' in page.find_element("id", "spec").text
    shoot(page, screenshots, "job-queued.png")


def test_cluster_page_shows_the_simulated_nodes_and_who_holds_their_gpus(live: Live, page: Any, screenshots):
    placed = next(e["reason"] for e in live.fleet.client.events(live.ids[LONG]) if e["to_state"] == "SCHEDULED")
    gpu_node = re.search(r"127\.0\.0\.1/[0-9a-f]{8}", placed).group(0)
    view = live.get_json("/cluster")
    assert view["source"] == "controller", view
    assert {n["name"] for n in view["nodes"]} >= {gpu_node} and len(view["nodes"]) == 2, view  # head + 1 GPU node
    head = next(n["name"] for n in view["nodes"] if n["name"] != gpu_node)

    go(page, "#/cluster")

    def node_cells(name: str) -> list[str] | None:
        return page.execute_script(
            "const row = document.querySelector(`#nodes-body tr[data-node='${arguments[0]}']`);"
            "return row ? [...row.cells].map((c) => c.innerText.trim()) : null;", name)

    wait_for(lambda: node_cells(gpu_node) and node_cells(head), timeout_s=30, what="both nodes")
    name, status, kind, cpus, accelerators, free, held_by = node_cells(gpu_node)
    assert (name, status, kind, cpus, accelerators) == (gpu_node, "alive", "GPU", "2", "GPU: 1 / 2"), held_by
    assert set(free.split(", ")) == {"CPU 1", "GPU 1"}, free
    assert re.fullmatch(rf"{LONG} × 1", held_by), held_by  # short-run ended; needs-4-gpus never placed
    assert node_cells(head)[1:] == ["alive", "cpu", "1", "–", "CPU 1", "free"]  # the head: no accelerators
    assert page.find_element("id", "cluster-summary").text == "2 node(s) alive, 0 dead; accelerators 1 used / 2"
    shoot(page, screenshots, "cluster.png")


def _scrape(live: Live) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    status, text = live.request("/metrics")
    assert status == 200, text
    assert live.fleet.token not in text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _value(samples: dict, name: str, **labels: str) -> float | None:
    matches = [v for (n, ls), v in samples.items() if n == name and labels.items() <= dict(ls).items()]
    assert len(matches) <= 1, (name, labels, matches)
    return matches[0] if matches else None


def test_prometheus_metrics_of_the_live_api(live: Live):
    assert live.request("/metrics", token=None)[0] == 401
    long_id, short_id, queued_id = live.ids[LONG], live.ids[SHORT], live.ids[QUEUED]
    samples = _scrape(live)
    assert {state: _value(samples, "bertfleet_jobs", state=state) for state in (
        "QUEUED", "SCHEDULED", "RUNNING", "PREEMPTED", "SUCCEEDED", "FAILED", "CANCELLED")} == {
        "QUEUED": 1, "SCHEDULED": 0, "RUNNING": 1, "PREEMPTED": 0, "SUCCEEDED": 1, "FAILED": 0, "CANCELLED": 0}
    for job_id, state in ((long_id, "RUNNING"), (short_id, "SUCCEEDED"), (queued_id, "QUEUED")):
        assert _value(samples, "bertfleet_job_info", job_id=job_id, state=state, kind="pretrain") == 1

    # the running job's series, from its metrics.jsonl
    tokens_per_s = _value(samples, "bertfleet_job_tokens_per_second", job_id=long_id)
    newest = train_records(live.out[LONG])[-1]
    assert tokens_per_s is not None and math.isfinite(tokens_per_s) and tokens_per_s > 0
    assert 0.05 < tokens_per_s / newest["train/tokens_per_s"] < 20  # the same measure, a moment apart
    since_checkpoint = _value(samples, "bertfleet_job_seconds_since_checkpoint", job_id=long_id)
    assert since_checkpoint is not None and 0 <= since_checkpoint < 120, since_checkpoint
    assert 10 <= _value(samples, "bertfleet_job_step", job_id=long_id) <= LONG_STEPS
    assert _value(samples, "bertfleet_job_total_steps", job_id=long_id) == LONG_STEPS
    assert 0 < _value(samples, "bertfleet_job_loss", job_id=long_id) < 30
    assert _value(samples, "bertfleet_job_mfu_ratio", job_id=long_id) is None  # no named size, no known peak
    # the finished job keeps its final progress but no live series; the queued one has none
    assert _value(samples, "bertfleet_job_step", job_id=short_id) == SHORT_STEPS
    assert _value(samples, "bertfleet_job_tokens_per_second", job_id=short_id) is None
    assert _value(samples, "bertfleet_job_step", job_id=queued_id) is None
    for job_id in (long_id, short_id, queued_id):
        assert _value(samples, "bertfleet_job_preemptions_total", job_id=job_id) == 0
        assert _value(samples, "bertfleet_job_restarts_total", job_id=job_id) == 0
    # accelerators: 1 GPU held of the 2 the cluster has
    assert _value(samples, "bertfleet_accelerators_in_use", resource="GPU") == 1
    assert _value(samples, "bertfleet_accelerators_total", resource="GPU") == 2


def test_cancel_from_the_page_stops_the_running_and_the_queued_job(live: Live, page: Any, screenshots):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    client = live.fleet.client
    go(page, "#/jobs")
    Select(wait_for(lambda: page.find_element(By.ID, "state-filter"), what="the filter")).select_by_value("")
    for name in (LONG, QUEUED):
        job_id = live.ids[name]
        wait_for(lambda job_id=job_id: page.find_element(By.CSS_SELECTOR, f"button.cancel[data-job='{job_id}']")
                 .click() or True, timeout_s=30, what=f"a click on {name}'s cancel button")
        alert = wait_for(lambda: page.switch_to.alert, what="the confirmation")
        assert name in alert.text and job_id in alert.text, alert.text
        alert.accept()
        done = wait_for_job(client, job_id, lambda j: j["state"] == "CANCELLED", timeout_s=90)
        assert done["finished_at"] is not None
        last = client.events(job_id)[-1]
        assert last["to_state"] == "CANCELLED", last
        wait_for(lambda job_id=job_id: rows(page).get(job_id) == "CANCELLED", timeout_s=30,
                 what=f"{name} shown CANCELLED")
        assert not page.find_elements(By.CSS_SELECTOR, f"button.cancel[data-job='{job_id}']")
    assert "stopped" in client.events(live.ids[LONG])[-1]["reason"]
    page.execute_script("window.scrollTo(0, 0)")  # the click scrolled to the buttons' column
    shoot(page, screenshots, "jobs-cancelled.png")

    # the run really stopped: its metrics.jsonl stops growing, and its GPU is free again
    def settled() -> bool:
        before = (live.out[LONG] / "metrics.jsonl").stat().st_size
        time.sleep(3)
        return (live.out[LONG] / "metrics.jsonl").stat().st_size == before

    wait_for(settled, timeout_s=60, what="the cancelled run to stop writing metrics")
    go(page, "#/cluster")
    wait_for(lambda: page.find_element("id", "cluster-summary").text
             == "2 node(s) alive, 0 dead; accelerators 0 used / 2", timeout_s=30, what="the GPUs to be free")
    samples = _scrape(live)
    assert _value(samples, "bertfleet_jobs", state="CANCELLED") == 2
    assert _value(samples, "bertfleet_jobs", state="RUNNING") == 0
    assert _value(samples, "bertfleet_accelerators_in_use", resource="GPU") is None
    shoot(page, screenshots, "cluster-free.png")

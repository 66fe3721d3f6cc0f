"""GET /metrics: Prometheus text computed from the store at scrape time, behind the token."""

from __future__ import annotations

from pathlib import Path

import pytest
from dashboard_fixtures import TOKEN, Fleet
from prometheus_client.parser import text_string_to_metric_families

from orchestrator.metrics import EXPORTED, flops_per_token


def scrape(fleet: Fleet) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, text = fleet.request("GET", "/metrics")
    assert status == 200, text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: dict, name: str, **labels: str) -> float:
    matches = [v for (n, ls), v in samples.items() if n == name and labels.items() <= dict(ls).items()]
    assert len(matches) == 1, (name, labels, matches)
    return matches[0]


def test_metrics_need_the_token(fleet: Fleet):
    assert fleet.request("GET", "/metrics", token=None)[0] == 401
    assert fleet.request("GET", "/metrics", token="x" * 32)[0] == 401
    status, text = fleet.request("GET", "/metrics")
    assert status == 200 and TOKEN not in text


def test_metrics_from_the_store(fleet: Fleet):
    samples = scrape(fleet)
    names = {name for name, _ in samples}
    assert names <= set(EXPORTED), names - set(EXPORTED)
    assert {"bertfleet_jobs", "bertfleet_job_tokens_per_second", "bertfleet_job_mfu_ratio",
            "bertfleet_accelerators_in_use", "bertfleet_job_preemptions_total", "bertfleet_job_restarts_total",
            "bertfleet_job_seconds_since_checkpoint", "bertfleet_accelerators_total"} <= names
    assert {state: value(samples, "bertfleet_jobs", state=state)
            for state in ("QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED", "PREEMPTED")} == {
        "QUEUED": 2, "RUNNING": 2, "SUCCEEDED": 1, "FAILED": 1, "CANCELLED": 0, "PREEMPTED": 0}
    big, tpu = fleet.jobs["bert-base-pretrain"], fleet.jobs["tpu-pretrain"]
    assert value(samples, "bertfleet_job_tokens_per_second", job_id=big) == 65536.0  # train/tokens_per_s
    per_token = flops_per_token(fleet.store.get(big).spec)
    assert per_token is not None
    assert value(samples, "bertfleet_job_mfu_ratio", job_id=big) == pytest.approx(65536.0 * per_token / (4 * 312e12))
    assert value(samples, "bertfleet_job_step", job_id=big) == 300
    assert value(samples, "bertfleet_job_total_steps", job_id=big) == 1000
    # the newest checkpoint was written 300 s after a start 600 s ago
    assert 250 <= value(samples, "bertfleet_job_seconds_since_checkpoint", job_id=big) <= 400
    assert value(samples, "bertfleet_job_preemptions_total", job_id=tpu) == 1
    assert value(samples, "bertfleet_job_restarts_total", job_id=tpu) == 1
    assert value(samples, "bertfleet_preemptions_total") == 1
    assert value(samples, "bertfleet_accelerators_in_use", resource="GPU", accelerator_type="A100") == 4
    assert value(samples, "bertfleet_accelerators_in_use", resource="TPU-host", accelerator_type="v4") == 1
    assert value(samples, "bertfleet_accelerators_total", resource="GPU") == 16
    assert value(samples, "bertfleet_job_info", job_id=big, model_size="base", state="RUNNING") == 1

    # computed at scrape time: a change in the store shows in the next scrape
    fleet.store.cancel(fleet.jobs["to-cancel"], who="a test")
    assert value(scrape(fleet), "bertfleet_jobs", state="CANCELLED") == 1


def test_flops_per_token_of_bert_base():
    from dashboard_fixtures import spec

    from jobs.spec import parse_spec

    # BERT-base: 12 layers x (4 H^2 + 2 H x 4H) = 85M non-embedding parameters
    per_token = flops_per_token(parse_spec(spec("/tmp/x", "b")))
    assert per_token == pytest.approx(6 * 12 * 12 * 768 ** 2 + 12 * 12 * 768 * 128)


def test_a_job_whose_metrics_are_unreadable_does_not_break_the_scrape(fleet: Fleet):
    out = Path(fleet.store.get(fleet.jobs["bert-base-pretrain"]).spec.output.output_dir) / "metrics.jsonl"
    out.write_text('{"step": 1, "train/tokens_per_s": 5.0}\n{not json\n')
    samples = scrape(fleet)
    assert value(samples, "bertfleet_job_tokens_per_second", job_id=fleet.jobs["bert-base-pretrain"]) == 5.0

"""Prometheus metrics of the job controller, computed from the store at scrape time.

Nothing is counted in memory: each scrape of `GET /metrics` (behind the API token, like every other
route: configure the scraper with `authorization: {type: Bearer, credentials_file: ...}`) reads the
store, and for running jobs the tail of their metrics.jsonl, so the numbers survive controller
restarts and agree with `bertfleet status`. The registry is our own `CollectorRegistry`, not the
process-global one, so no Python process/GC metrics leak in and tests can build as many as they like.

Exported (every name starts with `bertfleet_`; EXPORTED lists them, the Grafana dashboard uses them):
  bertfleet_jobs{state}                                 jobs in each state (every state, 0 included)
  bertfleet_job_info{job_id,name,kind,state,accelerator,accelerator_type,model_size}   1 per job shown
  bertfleet_job_step / bertfleet_job_total_steps{job_id,name}     progress
  bertfleet_job_loss{job_id,name}                       newest training loss
  bertfleet_job_tokens_per_second{job_id,name}          train/tokens_per_s, else examples/s x max_seq_length
  bertfleet_job_mfu_ratio{job_id,name}                  model FLOPs utilisation, 0..1, when the
                                                        accelerator's peak is known (cluster/resources.py)
  bertfleet_job_seconds_since_checkpoint{job_id,name}   since the newest committed checkpoint (running jobs
                                                        whose metrics.jsonl records one)
  bertfleet_job_preemptions_total / bertfleet_job_restarts_total / bertfleet_job_failures_total{job_id,name}
  bertfleet_preemptions_total / bertfleet_restarts_total  over every job in the store
  bertfleet_accelerators_in_use{resource,accelerator_type}  GPUs / TPU hosts held by SCHEDULED+RUNNING jobs
  bertfleet_accelerators_total{resource}                 in the controller's node view (when it has one)
Per-job series cover jobs that have not ended plus those that ended in the last `recent_s` seconds,
so finished jobs drop out instead of growing the series count forever.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from cluster.resources import peak_flops
from orchestrator import outputs
from orchestrator.state import Job, JobState
from orchestrator.store import Store

log = logging.getLogger("bertfleet.metrics")

EXPORTED: tuple[str, ...] = (
    "bertfleet_jobs", "bertfleet_job_info", "bertfleet_job_step", "bertfleet_job_total_steps", "bertfleet_job_loss",
    "bertfleet_job_tokens_per_second", "bertfleet_job_mfu_ratio", "bertfleet_job_seconds_since_checkpoint",
    "bertfleet_job_preemptions_total", "bertfleet_job_restarts_total", "bertfleet_job_failures_total",
    "bertfleet_preemptions_total", "bertfleet_restarts_total", "bertfleet_accelerators_in_use",
    "bertfleet_accelerators_total",
)
RECENT_S = 24 * 3600.0
_JOB_LABELS = ["job_id", "name"]


def flops_per_token(spec: Any) -> float | None:
    """Training FLOPs per token of the job's model: 6 x (non-embedding parameters) for the matmuls,
    forward and backward, plus 12 x L x H x S for attention scores (the PaLM paper's accounting).
    None when the model is not a named size (reading config files at scrape time is not worth it)."""
    from models.config import BertConfig, ConfigError

    if not spec.model.size:
        return None
    try:
        config = BertConfig.named(spec.model.size)
    except ConfigError:
        return None
    layers, hidden, inner = config.num_hidden_layers, config.hidden_size, config.intermediate_size
    params = layers * (4 * hidden * hidden + 2 * hidden * inner)
    return 6.0 * params + 12.0 * layers * hidden * spec.data.max_seq_length


def _num_devices(spec: Any) -> int:
    resources = spec.resources
    return resources.num_hosts * resources.devices_per_host


class StoreCollector(Collector):
    """Yields the metrics in the module docstring from `store` at each collect().

    Args:
        store: the job store.
        nodes: the cluster's nodes (a list or a function returning one), for bertfleet_accelerators_total.
        recent_s: how long an ended job keeps its per-job series.
        clock: time source for "seconds since" (defaults to the store's clock).
    """

    def __init__(self, store: Store, nodes: Sequence[Any] | Callable[[], Sequence[Any]] | None = None,
                 recent_s: float = RECENT_S, clock: Callable[[], datetime] | None = None):
        self.store = store
        self.nodes = nodes
        self.recent_s = recent_s
        self.clock = clock or store.clock

    def describe(self) -> Iterable[Metric]:
        return []  # metrics depend on the store's contents; nothing to check at registration

    def collect(self) -> Iterable[Metric]:
        now = self.clock()
        jobs = self.store.jobs()
        by_state = GaugeMetricFamily("bertfleet_jobs", "Jobs in each state.", labels=["state"])
        for state in JobState:
            by_state.add_metric([state.value], sum(job.state == state for job in jobs))
        yield by_state
        yield from self._cluster_totals(jobs)
        yield from self._per_job([job for job in jobs if self._shown(job, now)], now)

    def _shown(self, job: Job, now: datetime) -> bool:
        return not job.state.is_terminal or (job.finished_at is not None
                                              and now - job.finished_at <= timedelta(seconds=self.recent_s))

    def _cluster_totals(self, jobs: list[Job]) -> Iterable[Metric]:
        preemptions = CounterMetricFamily("bertfleet_preemptions", "Preemptions of every job in the store.")
        preemptions.add_metric([], sum(job.num_preemptions for job in jobs))
        restarts = CounterMetricFamily("bertfleet_restarts", "Attempts after each job's first, over every job.")
        restarts.add_metric([], sum(max(0, job.num_attempts - 1) for job in jobs))
        in_use = GaugeMetricFamily("bertfleet_accelerators_in_use", "GPUs or TPU hosts held by SCHEDULED and "
                                   "RUNNING jobs.", labels=["resource", "accelerator_type"])
        held: dict[tuple[str, str], float] = {}
        for job in jobs:
            if job.state not in (JobState.SCHEDULED, JobState.RUNNING):
                continue
            resources = job.spec.resources
            if resources.accelerator == "cpu":
                continue
            resource = "GPU" if resources.accelerator == "gpu" else "TPU-host"
            key = (resource, resources.accelerator_type or "")
            held[key] = held.get(key, 0.0) + resources.num_workers
        for (resource, accelerator_type), count in sorted(held.items()):
            in_use.add_metric([resource, accelerator_type], count)
        yield from (preemptions, restarts, in_use)
        if self.nodes is not None:
            total = GaugeMetricFamily("bertfleet_accelerators_total", "GPUs or TPU hosts in the controller's "
                                      "node view.", labels=["resource"])
            try:
                nodes = self.nodes() if callable(self.nodes) else self.nodes
            except Exception:
                log.warning("listing nodes for /metrics failed", exc_info=True)
                nodes = []
            for resource in ("GPU", "TPU-host"):
                total.add_metric([resource], sum(node.total.get(resource, 0.0) for node in nodes))
            yield total

    def _per_job(self, jobs: list[Job], now: datetime) -> Iterable[Metric]:
        info = GaugeMetricFamily("bertfleet_job_info", "1 for each job shown, with its descriptive labels.",
                                 labels=["job_id", "name", "kind", "state", "accelerator", "accelerator_type",
                                         "model_size"])
        gauges = {name: GaugeMetricFamily(name, help_text, labels=_JOB_LABELS) for name, help_text in (
            ("bertfleet_job_step", "Newest training step."),
            ("bertfleet_job_total_steps", "Training steps the job runs in all."),
            ("bertfleet_job_loss", "Newest training loss."),
            ("bertfleet_job_tokens_per_second", "Training tokens per second over the whole gang."),
            ("bertfleet_job_mfu_ratio", "Model FLOPs utilisation (0..1) against the accelerators' bf16 peak."),
            ("bertfleet_job_seconds_since_checkpoint", "Seconds since the newest committed checkpoint."),
        )}
        counters = {name: CounterMetricFamily(name, help_text, labels=_JOB_LABELS) for name, help_text in (
            ("bertfleet_job_preemptions", "Times the job was preempted."),
            ("bertfleet_job_restarts", "Attempts after the first (preemptions, retries, lost runs)."),
            ("bertfleet_job_failures", "Real failures (they count against resources.max_failures)."),
        )}
        for job in jobs:
            labels = [job.id, job.name]
            spec = job.spec
            info.add_metric(labels + [job.kind, job.state.value, spec.resources.accelerator,
                                      spec.resources.accelerator_type or "", spec.model.size or ""], 1.0)
            counters["bertfleet_job_preemptions"].add_metric(labels, job.num_preemptions)
            counters["bertfleet_job_restarts"].add_metric(labels, max(0, job.num_attempts - 1))
            counters["bertfleet_job_failures"].add_metric(labels, job.num_failures)
            if job.progress.total is not None:
                gauges["bertfleet_job_total_steps"].add_metric(labels, job.progress.total)
            if job.progress.step is not None:
                gauges["bertfleet_job_step"].add_metric(labels, job.progress.step)
            if job.progress.loss is not None:
                gauges["bertfleet_job_loss"].add_metric(labels, job.progress.loss)
            if job.state == JobState.RUNNING:
                self._running(job, labels, gauges, now)
        yield info
        yield from gauges.values()
        yield from counters.values()

    def _running(self, job: Job, labels: list[str], gauges: dict[str, GaugeMetricFamily], now: datetime) -> None:
        """Throughput, MFU and checkpoint age of a running job, from its metrics.jsonl (else its progress)."""
        spec = job.spec
        try:
            records = outputs.read_metrics(spec.output.output_dir, limit=200)
        except Exception:
            log.debug("reading metrics of job %s failed", job.id, exc_info=True)
            records = []
        tokens_per_s = next((float(r["train/tokens_per_s"]) for r in reversed(records) if "train/tokens_per_s" in r),
                            None)
        if tokens_per_s is None and job.progress.throughput is not None:
            tokens_per_s = job.progress.throughput * spec.data.max_seq_length
        if tokens_per_s is not None:
            gauges["bertfleet_job_tokens_per_second"].add_metric(labels, tokens_per_s)
            mfu = next((float(r["train/mfu"]) for r in reversed(records) if "train/mfu" in r), None)
            per_token, peak = flops_per_token(spec), peak_flops(spec.resources.accelerator_type)
            if mfu is None and per_token is not None and peak is not None:
                mfu = tokens_per_s * per_token / (peak * _num_devices(spec))
            if mfu is not None:
                gauges["bertfleet_job_mfu_ratio"].add_metric(labels, mfu)
        checkpoint_time = next((float(r["time"]) for r in reversed(records)
                                if "checkpoint/step" in r and "time" in r), None)
        if checkpoint_time is not None:
            gauges["bertfleet_job_seconds_since_checkpoint"].add_metric(labels, max(0.0, now.timestamp()
                                                                                      - checkpoint_time))


def make_registry(store: Store, nodes: Sequence[Any] | Callable[[], Sequence[Any]] | None = None,
                  **kwargs: Any) -> CollectorRegistry:
    """A fresh registry holding only a StoreCollector over `store` (kwargs: see StoreCollector)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(store, nodes, **kwargs))
    return registry


def render(registry: CollectorRegistry) -> tuple[bytes, str]:
    """(body, content type) of a scrape in Prometheus' text format."""
    return generate_latest(registry), CONTENT_TYPE_LATEST


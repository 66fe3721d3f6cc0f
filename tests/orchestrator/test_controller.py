"""The controller, stepped one pass at a time with a fake launcher on a fake cluster of two nodes
with two GPUs each: launch, success, preemption and resume, failure backoff, gangs, cancel, restart."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
from fleet_fixtures import FakeClock, gpu_spec, make_spec

from orchestrator.controller import Controller, RunStatus, Transition, summarize_error
from orchestrator.queue import Node
from orchestrator.state import Job, JobState, Progress
from orchestrator.store import Store

S = JobState


class FakeLauncher:
    """Runs nothing: each launch gets a handle whose status the test sets."""

    def __init__(self) -> None:
        self.status: dict[str, RunStatus] = {}  # by job id
        self.launched: list[str] = []
        self.stopped: list[str] = []
        self.fail_launch: str | None = None

    def launch(self, job: Job, node_names: list[str]) -> str:
        if self.fail_launch:
            raise RuntimeError(self.fail_launch)
        self.launched.append(job.id)
        self.status[job.id] = RunStatus("running")
        return job.id

    def poll(self, handle: str) -> RunStatus:
        return self.status[handle]

    def stop(self, handle: str) -> None:
        self.stopped.append(handle)

    def finish(self, job_id: str, state: str = "succeeded", error: str | None = None) -> None:
        self.status[job_id] = RunStatus(state, error=error)  # type: ignore[arg-type]


NODES = [Node(f"gpu-{i}", {"CPU": 8.0, "GPU": 2.0}) for i in range(2)]


@pytest.fixture()
def launcher() -> FakeLauncher:
    return FakeLauncher()


@pytest.fixture()
def controller(store: Store, launcher: FakeLauncher) -> Controller:
    return Controller(store, launcher, NODES, read_metrics=False)


def moves(transitions: list[Transition]) -> list[tuple[str, str, str]]:
    return [(t.job_id, t.from_state.value, t.to_state.value) for t in transitions]


def test_a_job_runs_to_success(store: Store, launcher: FakeLauncher, controller: Controller):
    job, _ = store.submit(gpu_spec(2))
    assert moves(controller.step()) == [(job.id, "QUEUED", "SCHEDULED"), (job.id, "SCHEDULED", "RUNNING")]
    assert launcher.launched == [job.id] and controller.running == [job.id]
    assert controller.step() == []  # still running: nothing to do
    launcher.finish(job.id)
    assert moves(controller.step()) == [(job.id, "RUNNING", "SUCCEEDED")]
    done = store.get(job.id)
    assert (done.state, done.num_attempts, done.finished_at is not None) == (S.SUCCEEDED, 1, True)
    assert "placed on gpu-0" in store.events(job.id)[1].reason
    assert controller.running == []


def test_a_preempted_job_resumes_without_a_failure(store: Store, launcher: FakeLauncher, controller: Controller):
    job, _ = store.submit(gpu_spec(4, num_hosts=2, max_failures=0))
    controller.step()
    store.record_progress(job.id, checkpoint_step=300)
    launcher.finish(job.id, "preempted", "node gpu-1 was preempted")
    assert moves(controller.step()) == [(job.id, "RUNNING", "PREEMPTED"), (job.id, "PREEMPTED", "QUEUED"),
                                        (job.id, "QUEUED", "SCHEDULED"), (job.id, "SCHEDULED", "RUNNING")]
    resumed = store.get(job.id)
    assert (resumed.num_preemptions, resumed.num_failures, resumed.num_attempts) == (1, 0, 2)
    assert "resumes from checkpoint step 300" in store.events(job.id)[-3].reason
    assert launcher.launched == [job.id, job.id]


def test_failures_back_off_then_fail(store: Store, launcher: FakeLauncher, controller: Controller, clock: FakeClock):
    job, _ = store.submit(gpu_spec(2, max_failures=1))
    controller.step()
    launcher.finish(job.id, "failed", "NCCL timeout")
    assert moves(controller.step()) == [(job.id, "RUNNING", "QUEUED")]  # not relaunched during the backoff
    assert store.get(job.id).next_attempt_after == clock.now + timedelta(seconds=10)
    clock.advance(9)
    assert controller.step() == []
    clock.advance(1)
    assert moves(controller.step()) == [(job.id, "QUEUED", "SCHEDULED"), (job.id, "SCHEDULED", "RUNNING")]
    launcher.finish(job.id, "failed", "NCCL timeout again")
    assert moves(controller.step()) == [(job.id, "RUNNING", "FAILED")]
    failed = store.get(job.id)
    assert (failed.num_failures, failed.last_error) == (2, "NCCL timeout again")
    assert "last error: NCCL timeout again" in store.events(job.id)[-1].reason


def test_gangs_wait_for_each_other_by_priority(store: Store, launcher: FakeLauncher, controller: Controller):
    low, _ = store.submit(gpu_spec(4, name="low", num_hosts=2), priority=0)
    high, _ = store.submit(gpu_spec(4, name="high", num_hosts=2), priority=10)
    small, _ = store.submit(gpu_spec(1, name="small"), priority=0)
    assert moves(controller.step()) == [(high.id, "QUEUED", "SCHEDULED"), (high.id, "SCHEDULED", "RUNNING")]
    assert controller.step() == []  # low waits whole; small waits behind it (no starvation of low)
    launcher.finish(high.id)
    assert moves(controller.step()) == [(high.id, "RUNNING", "SUCCEEDED"), (low.id, "QUEUED", "SCHEDULED"),
                                        (low.id, "SCHEDULED", "RUNNING")]
    launcher.finish(low.id)
    assert moves(controller.step())[-1] == (small.id, "SCHEDULED", "RUNNING")


def test_a_job_too_big_for_the_whole_cluster_waits_and_says_why_once(store: Store, launcher: FakeLauncher):
    nodes = list(NODES)
    controller = Controller(store, launcher, nodes=lambda: nodes)
    huge, _ = store.submit(gpu_spec(8, name="huge", num_hosts=4))  # 8 GPUs; the cluster has 4
    assert controller.step() == [] and controller.step() == []
    waits = [e for e in store.events(huge.id) if e.reason.startswith("waiting for capacity")]
    assert len(waits) == 1 and (waits[0].from_state, waits[0].to_state) == (JobState.QUEUED, JobState.QUEUED)
    assert "needs 8 workers" in waits[0].reason and "shrink resources or add nodes" in waits[0].reason
    nodes += [Node(f"gpu-{i}", {"CPU": 8.0, "GPU": 2.0}) for i in (2, 3)]  # nodes join: the job runs
    assert moves(controller.step())[-1] == (huge.id, "SCHEDULED", "RUNNING")


def test_cancel_a_running_job_stops_its_run(store: Store, launcher: FakeLauncher, controller: Controller):
    job, _ = store.submit(gpu_spec(2))
    waiting, _ = store.submit(gpu_spec(4, num_hosts=2))
    controller.step()
    store.cancel(job.id)
    assert moves(controller.step()) == [(job.id, "RUNNING", "CANCELLED"), (waiting.id, "QUEUED", "SCHEDULED"),
                                        (waiting.id, "SCHEDULED", "RUNNING")]  # its GPUs were freed
    assert launcher.stopped == [job.id]
    assert store.attempts(job.id)[0]["outcome"] == "cancelled"


def test_a_launch_that_fails_counts_as_a_failure(store: Store, launcher: FakeLauncher, controller: Controller):
    job, _ = store.submit(gpu_spec(2, max_failures=0))
    launcher.fail_launch = "placement group timed out"
    assert moves(controller.step()) == [(job.id, "QUEUED", "SCHEDULED"), (job.id, "SCHEDULED", "FAILED")]
    assert store.get(job.id).last_error == "launch failed: placement group timed out"
    assert controller.running == []


def test_a_restarted_controller_requeues_and_resumes_what_it_lost(tmp_path: Path, clock: FakeClock):
    path = tmp_path / "jobs.db"
    first = Controller(Store(path, clock=clock), FakeLauncher(), NODES, read_metrics=False)
    job, _ = first.store.submit(gpu_spec(2))
    first.step()
    first.store.close()  # the controller process dies with the run

    store = Store(path, clock=clock)
    launcher = FakeLauncher()
    second = Controller(store, launcher, NODES, read_metrics=False)
    assert moves(second.step()) == [(job.id, "RUNNING", "QUEUED"), (job.id, "QUEUED", "SCHEDULED"),
                                    (job.id, "SCHEDULED", "RUNNING")]
    after = store.get(job.id)
    assert (after.num_attempts, after.num_failures, after.num_preemptions) == (2, 0, 0)
    assert "controller restart" in store.events(job.id)[3].reason
    store.close()


def test_a_cancel_asked_while_the_controller_was_down_is_honoured(tmp_path: Path, clock: FakeClock):
    path = tmp_path / "jobs.db"
    first = Controller(Store(path, clock=clock), FakeLauncher(), NODES, read_metrics=False)
    job, _ = first.store.submit(gpu_spec(2))
    first.step()
    first.store.close()
    store = Store(path, clock=clock)
    store.cancel(job.id)  # no controller is running to stop it
    second = Controller(store, FakeLauncher(), NODES, read_metrics=False)
    assert moves(second.step()) == [(job.id, "RUNNING", "CANCELLED")]  # not requeued
    store.close()


def test_progress_comes_from_the_launcher_or_the_metrics_file(store: Store, launcher: FakeLauncher, tmp_path: Path):
    out = tmp_path / "run"
    out.mkdir()
    job, _ = store.submit(make_spec(out))
    controller = Controller(store, launcher, NODES)
    controller.step()
    with (out / "metrics.jsonl").open("w") as f:
        for step, record in ((10, {"train/loss": 7.5, "train/examples_per_s": 40.0}), (20, {"checkpoint/step": 20}),
                             (30, {"train/loss": 6.0, "train/examples_per_s": 42.0})):
            f.write(json.dumps({"step": step, "time": 0.0, **record}) + "\n")
        f.write('{"step": 40, "train/lo')  # a line cut short by the interruption
    controller.step()
    seen = store.get(job.id)
    assert seen.progress == Progress(step=30, total=None, loss=6.0, throughput=42.0) and seen.checkpoint_step == 20
    launcher.status[job.id] = RunStatus("running", progress=Progress(step=31, total=100, loss=5.9), checkpoint_step=30)
    controller.step()
    assert store.get(job.id).progress == Progress(step=31, total=100, loss=5.9)
    assert store.get(job.id).checkpoint_step == 30


def test_callbacks_observe_every_transition(store: Store, launcher: FakeLauncher):
    seen = []

    class Recorder:
        def on_transition(self, job: Job, from_state: JobState, reason: str) -> None:
            seen.append((from_state.value, job.state.value))

    class Broken:
        def on_transition(self, job: Job, from_state: JobState, reason: str) -> None:
            raise RuntimeError("observers cannot break the controller")

    controller = Controller(store, launcher, NODES, callbacks=[Broken(), Recorder()], read_metrics=False)
    job, _ = store.submit(gpu_spec(2))
    controller.step()
    launcher.finish(job.id)
    controller.step()
    assert seen == [("QUEUED", "SCHEDULED"), ("SCHEDULED", "RUNNING"), ("RUNNING", "SUCCEEDED")]


def test_nodes_can_be_asked_every_step(store: Store, launcher: FakeLauncher):
    cluster: list[Node] = []
    controller = Controller(store, launcher, lambda: cluster, read_metrics=False)
    job, _ = store.submit(gpu_spec(2))
    assert controller.step() == []  # no nodes yet: the job waits (it may fit once nodes join)
    cluster.append(Node("gpu-new", {"CPU": 4.0, "GPU": 2.0}))
    assert moves(controller.step())[-1] == (job.id, "SCHEDULED", "RUNNING")


def test_a_ray_traceback_is_summarized_to_its_root_cause():
    # as RayLauncher saw it for a job whose data files do not exist (ANSI colours already stripped)
    text = """RayTaskError(WorkerGroupError): ray::bertfleet-job-5ad6() (pid=15116, ip=192.0.2.2)
  File "/work/main/orchestrator/launch.py", line 60, in run_on_ray
    result = trainer.fit()
             ^^^^^^^^^^^^^
ray.train.WorkerGroupError: Training failed due to worker errors:
[Rank 0 Error Snippet]:
... (Output truncated. See individual worker logs for full details) ...
  File "/work/main/jobs/data/tfrecord.py", line 778, in expand_urls
    raise FileNotFoundError(no_match)
FileNotFoundError: no files match '/data/missing*.tfrecord'; check the path and the pattern"""
    assert summarize_error(text) == "FileNotFoundError: no files match '/data/missing*.tfrecord'; check the path and the pattern"
    assert summarize_error("") == "the run failed (no error text)"

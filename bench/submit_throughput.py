"""Control plane: submits through the HTTP API, and scheduling latency, each beside a peer measured in the same run.

How to read: "submit" is N small GPU-job specs POSTed to the real API (uvicorn in a subprocess, SQLite,
bearer token, one Idempotency-Key each) by concurrent httpx clients, beside a bare GET /jobs?limit=1 on
the same server. "queue -> placed" is each job's QUEUED -> SCHEDULED event times in the store, one job at
a time through Controller.step() over ray_nodes() with a no-op launcher, beside a bare Ray placement
group for the same bundles (request to ready()). Ratios are ours / peer: lower is better. A real launch
pays both: the controller books the gang on its own ledger, then Ray Train asks Ray for the group.

Usage: python bench/submit_throughput.py [--jobs 1000] [--concurrency 16] [--db PATH|tmp] [--sched-jobs 200]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # run as `python bench/submit_throughput.py` from a checkout
TOKEN_ENV = "BERTFLEET_BENCH_TOKEN"  # the API token reaches the server process by its environment, not argv
FAKE_GPUS = 4  # per the one local Ray node (a custom count; nothing runs on them)
WARMUP = 3  # untimed placements on each side before the timed ones
BACK_TO_BACK = 4 * FAKE_GPUS  # bare requests made right after the previous group's removal


def _raw_spec(index: int, num_gpus: int) -> dict[str, Any]:
    """A small, valid GPU job (DDP, `num_gpus` workers of one GPU); output_dir is relative to the
    API's storage root."""
    return {"kind": "pretrain", "name": f"bench-{index}", "model": {"size": "tiny"},
            "output": {"output_dir": f"bench-{index}"}, "logging": {"wandb": False},
            "resources": {"accelerator": "gpu", "backend": "ddp", "num_hosts": 1, "devices_per_host": num_gpus}}


def _percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def _ms(values: Sequence[float], q: float) -> float:
    return _percentile(values, q) * 1000


# --- part 1: the API ------------------------------------------------------------------------------


def _serve(db: str, storage_root: str, port: int) -> None:
    """The server process: the real app over a store, through api.serve (uvicorn, 127.0.0.1)."""
    from orchestrator.api import create_app, serve
    from orchestrator.store import Store

    serve(create_app(Store(db), os.environ[TOKEN_ENV], storage_root=storage_root), "127.0.0.1", port)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def _wait_ready(base: str, headers: dict[str, str], server: subprocess.Popen, timeout_s: float = 60) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(base_url=base, headers=headers) as client:
        while True:
            try:
                if (await client.get("/jobs", params={"limit": 1})).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the API server did not come up (exit code {server.poll()})")
            await asyncio.sleep(0.1)


async def _hammer(base: str, headers: dict[str, str], num_requests: int, concurrency: int,
                  request: Any) -> tuple[list[float], float, dict[int, int]]:
    """Sends `num_requests` requests (request(client, i) -> response) from `concurrency` clients.

    Returns:
        (latency in s of request i, at index i; wall time in s; count of each status code)
    """
    import httpx

    latencies = [0.0] * num_requests
    codes: dict[int, int] = {}
    next_index = iter(range(num_requests))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, headers=headers, limits=limits, timeout=60) as client:

        async def worker() -> None:
            for i in next_index:  # a shared iterator: each index goes to one worker
                start = time.perf_counter()
                response = await request(client, i)
                latencies[i] = time.perf_counter() - start
                codes[response.status_code] = codes.get(response.status_code, 0) + 1

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall_s = time.perf_counter() - start
    return latencies, wall_s, codes


def bench_api(db: str, storage_root: str, num_jobs: int, concurrency: int, num_gpus: int) -> dict[str, Any]:
    token = secrets.token_urlsafe(32)
    port = _free_port()
    base, headers = f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {token}"}
    run_id = secrets.token_hex(4)
    log_path = Path(storage_root) / "api.log"
    with open(log_path, "wb") as log_file:
        server = subprocess.Popen([sys.executable, __file__, "--_serve", "--db", db, "--storage-root", storage_root,
                                   "--_port", str(port)], cwd=REPO, env=os.environ | {TOKEN_ENV: token},
                                  stdout=log_file, stderr=subprocess.STDOUT)
    try:
        asyncio.run(_wait_ready(base, headers, server))
        bodies = [json.dumps({"spec": _raw_spec(i, num_gpus)}).encode() for i in range(num_jobs)]

        def submit(client: Any, i: int) -> Any:
            return client.post("/jobs", content=bodies[i], headers={"Content-Type": "application/json",
                                                                     "Idempotency-Key": f"bench-{run_id}-{i}"})

        def peek(client: Any, _i: int) -> Any:
            return client.get("/jobs", params={"limit": 1})

        submit_lat, submit_s, submit_codes = asyncio.run(_hammer(base, headers, num_jobs, concurrency, submit))
        peek_lat, peek_s, peek_codes = asyncio.run(_hammer(base, headers, num_jobs, concurrency, peek))
    finally:
        server.terminate()
        server.wait(timeout=30)

    from orchestrator.store import Store

    store = Store(db)
    try:
        stored = len(store.jobs())
    finally:
        store.close()
    return {"submit": (submit_lat, submit_s, submit_codes), "peek": (peek_lat, peek_s, peek_codes),
            "stored": stored}


# --- part 2: scheduling -----------------------------------------------------------------------------


class NoOpLauncher:
    """Starts nothing: every run "succeeds" at the controller's next poll."""

    def __init__(self) -> None:
        self.num_launched = 0

    def launch(self, job: Any, *_where: Any) -> str:  # launch(job, node_names): the rest is not needed here
        self.num_launched += 1
        return job.id

    def poll(self, handle: Any) -> Any:
        from orchestrator.controller import RunStatus

        return RunStatus("succeeded")

    def stop(self, handle: Any) -> None:
        pass


def _queue_to_placed_s(store: Any, job_id: str) -> float:
    events = store.events(job_id)
    queued = next(e.time for e in events if e.to_state.value == "QUEUED")
    placed = next(e.time for e in events if e.to_state.value == "SCHEDULED")
    return (placed - queued).total_seconds()


def _drain(controller: Any) -> tuple[list[float], float]:
    """Steps the controller until it has nothing left to do. Returns (the time of each step that did
    something, total) in s."""
    steps: list[float] = []
    start = time.perf_counter()
    while True:
        step_start = time.perf_counter()
        made = controller.step()
        steps.append(time.perf_counter() - step_start)
        if not made:
            return steps[:-1], time.perf_counter() - start


def bench_scheduling(db: str, num_jobs: int, num_gpus: int, backlog_db: str) -> dict[str, Any]:
    """One job at a time through the controller, the same gang as bare placement groups, then the
    controller draining `backlog_db` (the jobs part 1 submitted through the API)."""
    # Ray refuses "GPU" in ray.init(resources=...); the autoscaler's override variable fakes GPUs on
    # a node without any (read when local_ray starts the node).
    os.environ["RAY_OVERRIDE_RESOURCES"] = json.dumps({"GPU": FAKE_GPUS})
    # ray.init() with no address joins any Ray cluster running on this machine (/tmp/ray/
    # ray_current_cluster); "local" makes local_ray start this bench's own.
    os.environ["RAY_ADDRESS"] = "local"
    from cluster.local import local_ray  # calls ensure_auth_token before importing ray
    from jobs.spec import parse_spec
    from orchestrator.controller import Controller, ray_nodes
    from orchestrator.queue import gang_of
    from orchestrator.store import Store

    store = Store(db)
    spec = parse_spec(_raw_spec(0, num_gpus) | {"output": {"output_dir": str(Path(db).parent / "sched")}})
    gang = gang_of(spec)
    with local_ray(num_cpus=FAKE_GPUS):
        import ray
        from ray.util.placement_group import placement_group, remove_placement_group

        launcher = NoOpLauncher()
        controller = Controller(store, launcher, ray_nodes)
        ours: list[float] = []
        step_s: list[float] = []
        for i in range(WARMUP + num_jobs):
            job, _ = store.submit(spec)
            start = time.perf_counter()
            controller.step()  # watches (the previous no-op run succeeds), then places this job
            step_s.append(time.perf_counter() - start)
            if i >= WARMUP:
                ours.append(_queue_to_placed_s(store, job.id))
        controller.step()  # the last run succeeds
        # Every job must have been launched once and succeeded: a failed launch would also pass
        # through SCHEDULED and measure the wrong path.
        ended = [job.state.value for job in store.jobs()]
        if launcher.num_launched != WARMUP + num_jobs or set(ended) != {"SUCCEEDED"}:
            raise RuntimeError(f"{launcher.num_launched} launches for {WARMUP + num_jobs} jobs, end states "
                               f"{sorted(set(ended))}: the controller did not run them as expected")

        bundles = [dict(gang.bundle) for _ in range(gang.num_workers)]

        def bare_request() -> float:
            start = time.perf_counter()
            group = placement_group(bundles, strategy="PACK")
            ray.get(group.ready(), timeout=30)
            elapsed = time.perf_counter() - start
            remove_placement_group(group)
            return elapsed

        bare: list[float] = []
        for i in range(WARMUP + num_jobs):
            # Removal is asynchronous: Ray's resource view shows the GPUs back ~0.1 s later, and a request
            # made before then waits for the scheduler's ~1 s retry. Ours frees them on its books at once,
            # so the peer too asks only once the view shows room (untimed wait).
            while ray.available_resources().get("GPU", 0.0) < gang.num_workers:
                time.sleep(0.001)
            elapsed = bare_request()
            if i >= WARMUP:
                bare.append(elapsed)
        back_to_back = [bare_request() for _ in range(BACK_TO_BACK)]

        backlog = Store(backlog_db)
        num_backlog = len(backlog.jobs())
        drain_steps, drain_s = _drain(Controller(backlog, NoOpLauncher(), ray_nodes))
        drained = sum(job.state.value == "SUCCEEDED" for job in backlog.jobs())
        backlog.close()
    store.close()
    return {"ours": ours, "steps": step_s[WARMUP:], "bare": bare, "back_to_back": back_to_back, "bundles": bundles,
            "drain_steps": drain_steps, "drain_s": drain_s, "drained": drained, "num_backlog": num_backlog}


# --- report -----------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=1000, help="specs submitted through the API")
    parser.add_argument("--concurrency", type=int, default=16, help="concurrent HTTP clients")
    parser.add_argument("--db", default="tmp", help="SQLite file for the API's store (must not exist), or tmp")
    parser.add_argument("--sched-jobs", type=int, default=200, help="jobs placed one at a time by the controller")
    parser.add_argument("--gpus-per-job", type=int, default=1, help=f"workers (1 GPU each) per job, <= {FAKE_GPUS}")
    parser.add_argument("--storage-root", help=argparse.SUPPRESS)
    parser.add_argument("--_serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--_port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._serve:
        _serve(args.db, args.storage_root, args._port)
        return
    assert 1 <= args.gpus_per_job <= FAKE_GPUS, f"--gpus-per-job: 1 to {FAKE_GPUS}"

    with tempfile.TemporaryDirectory(prefix="bertfleet-bench-") as tmp:
        db = str(Path(tmp) / "api.db") if args.db == "tmp" else args.db
        if Path(db).exists():
            raise SystemExit(f"--db {db} exists; give a new file (the bench counts the jobs it holds)")
        load = os.getloadavg()
        wall = time.perf_counter()
        api = bench_api(db, tmp, args.jobs, args.concurrency, args.gpus_per_job)
        sched = bench_scheduling(str(Path(tmp) / "sched.db"), args.sched_jobs, args.gpus_per_job, db)
        wall_s = time.perf_counter() - wall

    submit_lat, submit_s, submit_codes = api["submit"]
    peek_lat, peek_s, peek_codes = api["peek"]
    accepted = submit_codes.get(201, 0)
    print(f"load average before the run: {load[0]:.2f} (other work on the machine skews every figure)")
    print(f"API: {args.jobs} GPU-job specs ({args.gpus_per_job} GPU each), {args.concurrency} concurrent clients "
          f"(httpx), uvicorn + SQLite in one process, {os.cpu_count()} cores")
    print(f"{'':<34} {'per s':>8} {'p50 ms':>8} {'p99 ms':>8}")
    print(f"{'submit (POST /jobs, 201)':<34} {accepted / submit_s:>8.1f} {_ms(submit_lat, 50):>8.1f} "
          f"{_ms(submit_lat, 99):>8.1f}")
    print(f"{'peer: GET /jobs?limit=1':<34} {len(peek_lat) / peek_s:>8.1f} {_ms(peek_lat, 50):>8.1f} "
          f"{_ms(peek_lat, 99):>8.1f}")
    print(f"{'ratio submit / GET':<34} {(accepted / submit_s) / (len(peek_lat) / peek_s):>8.2f} "
          f"{_percentile(submit_lat, 50) / _percentile(peek_lat, 50):>8.2f} "
          f"{_percentile(submit_lat, 99) / _percentile(peek_lat, 99):>8.2f}")
    tenth = max(1, len(submit_lat) // 10)  # the first tenth is skipped: it includes the server's warm-up
    print(f"submit p50, 2nd tenth vs last tenth of the run: {_ms(submit_lat[tenth:2 * tenth], 50):.1f} vs "
          f"{_ms(submit_lat[-tenth:], 50):.1f} ms (a per-submit cost that grows with the store shows here)")
    print(f"status codes: submit {dict(sorted(submit_codes.items()))}, GET {dict(sorted(peek_codes.items()))}; "
          f"store holds {api['stored']} jobs ({'OK' if api['stored'] == args.jobs == accepted else 'MISMATCH'})")
    print()
    ours, bare = sched["ours"], sched["bare"]
    print(f"scheduling: {args.sched_jobs} jobs one at a time, gang {sched['bundles']}, local Ray node with "
          f"{FAKE_GPUS} fake GPUs; no-op launcher (starts nothing, runs succeed at once)")
    print(f"{'':<34} {'p50 ms':>8} {'p99 ms':>8}")
    print(f"{'ours: QUEUED -> SCHEDULED (events)':<34} {_ms(ours, 50):>8.2f} {_ms(ours, 99):>8.2f}")
    print(f"{'  (whole Controller.step())':<34} {_ms(sched['steps'], 50):>8.2f} {_ms(sched['steps'], 99):>8.2f}")
    print(f"{'peer: bare Ray placement group':<34} {_ms(bare, 50):>8.2f} {_ms(bare, 99):>8.2f}")
    print(f"{'ratio ours / bare':<34} {_percentile(ours, 50) / _percentile(bare, 50):>8.2f} "
          f"{_percentile(ours, 99) / _percentile(bare, 99):>8.2f}")
    back = sched["back_to_back"]
    print(f"{f'(bare, {len(back)} back-to-back, no wait)':<34} {_ms(back, 50):>8.2f} {_ms(back, 99):>8.2f}"
          "   <- a request on a full node right after a removal waits for Ray's retry")
    steps = sched["drain_steps"]
    tenth = max(1, len(steps) // 10)
    print(f"draining the {sched['num_backlog']} API-submitted jobs ({FAKE_GPUS} at a time): "
          f"{sched['drained'] / sched['drain_s']:.1f} jobs/s, {len(steps)} steps; step p50 "
          f"{_ms(steps[:tenth], 50):.1f} ms in the first tenth (deep queue) vs {_ms(steps[-tenth:], 50):.1f} ms "
          f"in the last; {sched['drained']} SUCCEEDED")
    print(f"bench wall time {wall_s:.1f} s")


if __name__ == "__main__":
    main()

"""A local Ray cluster on 127.0.0.1: the embedded default for `bertfleet run` of a multi-worker job.

Token authentication stays on (RAY_AUTH_MODE=token; Ray keeps the token in ~/.ray/auth_token).
`local_ray()` shuts down only a cluster it started itself.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def ensure_auth_token() -> None:
    """Turns Ray's token authentication on, creating the token file (~/.ray/auth_token, mode 600)
    when neither it nor RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH exists. The token is never logged."""
    if os.environ.get("RAY_AUTH_MODE", "token") != "token":
        raise RuntimeError("RAY_AUTH_MODE is set to something other than 'token'; bertfleet keeps Ray's "
                           "token authentication on")
    os.environ["RAY_AUTH_MODE"] = "token"
    if os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH"):
        return
    path = Path.home() / ".ray" / "auth_token"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(secrets.token_hex(32))
    if "ray" in sys.modules:
        # Ray caches its config at import; refresh it so this process sees token mode too.
        from ray._raylet import Config

        Config.initialize("")


@contextlib.contextmanager
def local_ray(num_cpus: int | None = None, resources: dict[str, float] | None = None) -> Iterator[None]:
    """Connects to the Ray cluster this process already has, or starts one on 127.0.0.1 for the
    duration of the block (and stops it afterwards)."""
    ensure_auth_token()  # before Ray reads its config
    import ray

    if ray.is_initialized():
        yield
        return
    # address="local": always a new cluster of our own, never someone else's that happens to run here
    ray.init(address="local", num_cpus=num_cpus, resources=resources, include_dashboard=False,
             _node_ip_address="127.0.0.1",
             log_to_driver=True, configure_logging=False)
    try:
        yield
    finally:
        ray.shutdown()


# --- simulated multi-node clusters (`bertfleet up`, tests) ---------------------------------------------

LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def use_loopback() -> None:
    """Keeps a one-machine Ray cluster on 127.0.0.1. Ray rewrites a 127.0.0.1 address to the
    machine's outward IP before connecting unless its single-machine mode is on (the variable Ray
    reads for that is named after Windows/macOS, where it is the default). Must run before ray is
    imported: Ray reads it into a constant at import."""
    if "ray" in sys.modules and os.environ.get(LOOPBACK_ENV) != "0":
        raise RuntimeError(f"set {LOOPBACK_ENV}=0 before importing ray to keep the local cluster on 127.0.0.1")
    os.environ[LOOPBACK_ENV] = "0"


class SimulatedCluster:
    """A head node and any number of simulated GPU hosts / TPU hosts on 127.0.0.1, each its own raylet
    (`ray.cluster_utils.Cluster`), whose accelerators are fake Ray resources: the work runs on CPU.

    Node resources follow cluster/resources.py (`accelerator_type:<T>` labels, `TPU-host` per TPU
    host), so the scheduler sees what it would see on GCP. `shutdown()` stops only these nodes.

    Args:
        head_cpus: CPUs of the head node (it runs the controller and the run drivers, which take none).
        fast_failure_detection: declare a killed node dead after ~3 s instead of Ray's ~15 s default.
    """

    def __init__(self, head_cpus: int = 1, fast_failure_detection: bool = False):
        use_loopback()
        ensure_auth_token()
        from ray.cluster_utils import Cluster

        system_config = {"health_check_period_ms": 1000, "health_check_failure_threshold": 3,
                         "health_check_initial_delay_ms": 1000} if fast_failure_detection else {}
        self._cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": head_cpus, "include_dashboard": False, "node_ip_address": "127.0.0.1",
            "_system_config": system_config})
        self.nodes: list = []

    @property
    def address(self) -> str:
        return self._cluster.address

    def connect(self) -> None:
        """ray.init() this process to the cluster."""
        self._cluster.connect()

    def add_gpu_node(self, gpus: int, cpus: int = 2, accelerator_type: str | None = None) -> Any:
        resources = {f"accelerator_type:{accelerator_type}": 1.0} if accelerator_type else {}
        node = self._cluster.add_node(num_cpus=cpus, num_gpus=gpus, resources=resources,
                                      node_ip_address="127.0.0.1")
        self.nodes.append(node)
        return node

    def add_cpu_node(self, cpus: int = 2) -> Any:
        node = self._cluster.add_node(num_cpus=cpus, node_ip_address="127.0.0.1")
        self.nodes.append(node)
        return node

    def add_tpu_host(self, chips: int = 4, cpus: int = 2, accelerator_type: str = "v4") -> Any:
        node = self._cluster.add_node(num_cpus=cpus, node_ip_address="127.0.0.1", resources={
            "TPU": float(chips), "TPU-host": 1.0, f"accelerator_type:{accelerator_type}": 1.0})
        self.nodes.append(node)
        return node

    def kill_node(self, node: Any) -> None:
        """Kills a node's processes at once, as a preempted VM disappears."""
        self.nodes.remove(node)
        self._cluster.remove_node(node, allow_graceful=False)

    def node_id(self, node: Any) -> str:
        return node.node_id

    def shutdown(self) -> None:
        import ray

        if ray.is_initialized():
            ray.shutdown()
        self._cluster.shutdown()


# --- `bertfleet up` / `down`: a local fleet in a supervisor process --------------------------------------

def fleet_home() -> Path:
    """Where `bertfleet up` keeps its state: $BERTFLEET_HOME or ~/.bertfleet."""
    return Path(os.environ.get("BERTFLEET_HOME") or Path.home() / ".bertfleet").expanduser()


def fleet_state_file() -> Path:
    return fleet_home() / "up.json"


def read_fleet_state() -> dict[str, Any] | None:
    """What the running `bertfleet up` wrote (api, token_file, pid, nodes), or None when none runs."""
    import json

    path = fleet_state_file()
    try:
        state = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None
    try:
        os.kill(int(state["pid"]), 0)
    except (KeyError, ValueError, ProcessLookupError, PermissionError):
        return None  # left behind by a supervisor that is gone
    return state


def write_token_file(path: Path) -> None:
    """The API token, from $BERTFLEET_TOKEN or freshly made, in a file only its owner can read."""
    token = os.environ.get("BERTFLEET_TOKEN") or secrets.token_urlsafe(32)
    if len(token) < 16:
        raise ValueError("BERTFLEET_TOKEN must be at least 16 characters")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    os.chmod(path, 0o600)
    path.write_text(token)


def serve_fleet(nodes: int, gpus_per_node: int, tpu_hosts: int, cpus_per_node: int, port: int, db: str,
                accelerator_type: str | None = None) -> None:
    """The supervisor `bertfleet up` starts: a SimulatedCluster, the controller actor (with the API),
    then waits for SIGTERM/SIGINT and stops exactly what it started."""
    import json
    import signal
    import threading

    home = fleet_home()
    token_file = home / "api_token"
    write_token_file(token_file)
    cluster = SimulatedCluster(head_cpus=1)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        for _ in range(nodes):
            if gpus_per_node:
                cluster.add_gpu_node(gpus_per_node, cpus=cpus_per_node, accelerator_type=accelerator_type)
            else:
                cluster.add_cpu_node(cpus_per_node)
        for _ in range(tpu_hosts):
            cluster.add_tpu_host(cpus=cpus_per_node)
        cluster.connect()
        from orchestrator.service import ServiceConfig, start_service, stop_service

        start_service(ServiceConfig(db=db, token_file=str(token_file), port=port))
        state = {"pid": os.getpid(), "api": f"http://127.0.0.1:{port}", "token_file": str(token_file),
                 "ray_address": cluster.address, "db": db,
                 "nodes": {"gpu": nodes if gpus_per_node else 0, "gpus_per_node": gpus_per_node,
                           "cpu": 0 if gpus_per_node else nodes, "tpu_hosts": tpu_hosts}}
        fleet_state_file().write_text(json.dumps(state, indent=2))
        stop.wait()
        stop_service()
    finally:
        fleet_state_file().unlink(missing_ok=True)
        cluster.shutdown()


def _main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="the supervisor process of `bertfleet up` (use the CLI)")
    parser.add_argument("--nodes", type=int, default=1)
    parser.add_argument("--gpus-per-node", type=int, default=0)
    parser.add_argument("--tpu-hosts", type=int, default=0)
    parser.add_argument("--cpus-per-node", type=int, default=2)
    parser.add_argument("--accelerator-type", default=None)
    parser.add_argument("--port", type=int, default=8470)
    parser.add_argument("--db", required=True)
    args = parser.parse_args(argv)
    serve_fleet(args.nodes, args.gpus_per_node, args.tpu_hosts, args.cpus_per_node, args.port, args.db,
                args.accelerator_type)


if __name__ == "__main__":
    _main()

"""The controller as a long-lived service: a detached, named Ray actor on the head node that runs the
controller loop and serves the HTTP API (and dashboard) beside it.

Detached, so it outlives the process that started it (`bertfleet up`, or an operator's script);
named (`bertfleet-controller` in namespace `bertfleet`), so anyone connected to the cluster finds it;
restarted by Ray when its process dies (max_restarts=-1). A restarted instance reloads the store and
re-attaches to the runs the previous one launched (each run is its own detached actor, see
`orchestrator.controller.RunDriver`), so a controller crash loses no job and runs none twice.

The API token is read from a file (mode 600) the actor is given the path of, never passed as an
argument: actor arguments are kept in Ray's control store, where secrets do not belong.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

NAMESPACE = "bertfleet"
CONTROLLER_NAME = "bertfleet-controller"

log = logging.getLogger("bertfleet.service")


@dataclass(frozen=True)
class ServiceConfig:
    """Where the service keeps its state and serves.

    Args:
        db: SQLAlchemy URL or SQLite file of the job store.
        token_file: file holding the API token (>= 16 characters).
        host, port: the API's address (127.0.0.1 unless it sits behind TLS).
        storage_root: jobs' output_dir must lie under it, when set.
        interval_s: the controller's polling period (it also steps at once after a submit or cancel).
        ray_storage: where Ray Train keeps its run records (default: a temporary directory).
    """

    db: str
    token_file: str
    host: str = "127.0.0.1"
    port: int = 8470
    storage_root: str | None = None
    interval_s: float = 2.0
    ray_storage: str | None = None


class ControllerService:
    """The body of the controller actor (plain class; `start_service` makes it a Ray actor)."""

    def __init__(self, config: ServiceConfig):
        from orchestrator.api import create_app, start_server
        from orchestrator.controller import Controller, RayLauncher, ray_nodes
        from orchestrator.store import Store

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
        self.config = config
        token = Path(config.token_file).read_text().strip()
        self.store = Store(config.db)
        self.controller = Controller(self.store, RayLauncher(config.ray_storage), ray_nodes)
        self._stop = threading.Event()
        self._loop = threading.Thread(target=self.controller.run_forever, name="controller", daemon=True,
                                      kwargs={"interval_s": config.interval_s, "stop": self._stop})
        self._loop.start()
        app = create_app(self.store, token, controller=self.controller, storage_root=config.storage_root)
        self._server = start_server(app, config.host, config.port)
        log.info("controller up (pid %d); API on http://%s:%d", os.getpid(), config.host, config.port)

    def ping(self) -> dict[str, Any]:
        """Where the API is and which process serves it (a restart changes the pid)."""
        return {"api": f"http://{self.config.host}:{self.config.port}", "pid": os.getpid(),
                "running": self.controller.running}

    def wake(self) -> None:
        self.controller.wake()

    def shutdown(self) -> None:
        """Stops the loop and the API (the runs keep going; a new controller re-attaches to them)."""
        self._stop.set()
        self.controller.wake()
        self._server.should_exit = True
        self._loop.join(timeout=30)


def start_service(config: ServiceConfig) -> Any:
    """Starts the controller actor on this (the head) node, or returns the one already running.

    Needs a connected Ray (ray.init) in namespace-independent form: the actor lives in NAMESPACE.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    actor = ray.remote(ControllerService).options(
        name=CONTROLLER_NAME, namespace=NAMESPACE, lifetime="detached", get_if_exists=True,
        max_restarts=-1, num_cpus=0, scheduling_strategy=here,
    ).remote(config)
    ray.get(actor.ping.remote(), timeout=120)  # the API is up once the constructor returned
    return actor


def find_service() -> Any | None:
    """The running controller actor, or None."""
    import ray

    try:
        return ray.get_actor(CONTROLLER_NAME, namespace=NAMESPACE)
    except ValueError:
        return None


def stop_service() -> bool:
    """Stops the controller actor for good (no restart); False when none was running."""
    import ray

    actor = find_service()
    if actor is None:
        return False
    try:
        ray.get(actor.shutdown.remote(), timeout=60)
    except Exception:  # a dying actor may not answer; it is killed below either way
        log.warning("the controller did not shut down cleanly", exc_info=True)
    ray.kill(actor, no_restart=True)
    return True

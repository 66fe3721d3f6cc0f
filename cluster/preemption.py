"""Preemption notices -> a "checkpoint now and stop" flag for the training loop.

A spot VM or TPU slice that is about to be reclaimed says so in two ways, and a watcher listens to
both:
- SIGTERM. GCE shuts a preempted VM down (ACPI soft-off, so systemd SIGTERMs every process), and
  Kubernetes and `ray stop` do the same. Left to Ray, a worker dies at once (its default handler
  raises SystemExit); the watcher's handler only records the notice, so the step in flight finishes
  and the trainer commits a checkpoint. A second SIGTERM gets the previous handler: the sender insists.
- The GCE metadata server's `instance/preempted` flag ("TRUE" once preemption has begun; TPU VMs
  have it too), polled with the `Metadata-Flavor: Google` header the server requires. It is polled
  only on GCE (the DMI product name says "Google", as google-auth checks without touching the
  network) or where GCE_METADATA_HOST names a server (the variable Google's client libraries honour;
  the tests point it at a fake on 127.0.0.1).

GCE allows about 30 s from notice to power-off. The emergency checkpoint is the trainer's normal
atomic one: when it does not finish in time nothing half-written is ever read, and the job resumes
from its last periodic checkpoint, which stays the guarantee.

Signal handlers can be installed from the main thread only, and Ray Train runs the training function
in another thread; `install()` keeps one watcher per process so that the main thread installs it
(orchestrator/launch.py does that from a Ray Train backend hook) and the training thread finds it.
"""

from __future__ import annotations

import http.client
import logging
import os
import signal
import threading
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

log = logging.getLogger("bertfleet")

PRODUCT_NAME_FILE = "/sys/class/dmi/id/product_name"
METADATA_PATH = "/computeMetadata/v1/instance/preempted"

# No proxy, whatever the environment says: the metadata server is link-local and must be asked directly.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class Preempted(RuntimeError):
    """A job stopped on a preemption notice, after committing its checkpoint. The message starts with
    "preempted", which is what the controller reads to requeue the job instead of failing it."""


def metadata_host() -> str | None:
    """The GCE metadata server to poll, or None when this is not a GCE machine.

    GCE_METADATA_HOST wins (host[:port]); otherwise metadata.google.internal, but only when the DMI
    product name contains "Google": elsewhere that name may resolve to something else entirely.
    """
    host = os.environ.get("GCE_METADATA_HOST")
    if host:
        return host
    try:
        product = Path(PRODUCT_NAME_FILE).read_text()
    except OSError:
        return None
    return "metadata.google.internal" if "Google" in product else None


class PreemptionWatcher:
    """Records the first preemption notice; `should_stop()` is the trainer's flag.

    Args:
        sigterm: handle SIGTERM (needs the main thread; elsewhere it warns and is skipped).
        metadata: poll the GCE metadata server (only where `metadata_host()` finds one).
        host: the metadata server (host[:port]); default `metadata_host()`.
        poll_interval_s: seconds between polls (GCE gives ~30 s of notice; a poll is a local request).
        timeout_s: per-request timeout, so an unreachable server never stalls the poller for long.
    """

    notice: str | None

    def __init__(self, sigterm: bool = True, metadata: bool = True, host: str | None = None,
                 poll_interval_s: float = 1.0, timeout_s: float = 2.0):
        self.sigterm = sigterm
        self.host = (host or metadata_host()) if metadata else None
        self.poll_interval_s = poll_interval_s
        self.timeout_s = timeout_s
        self.notice = None
        self._noticed = threading.Event()
        self._closed = threading.Event()
        self._previous: Callable[[int, FrameType | None], Any] | int | None = None
        self._installed = False
        self._sigterms = 0
        self._thread: threading.Thread | None = None

    # ---- the flag -----------------------------------------------------------------------------

    def should_stop(self) -> bool:
        """Whether a notice has arrived (a cheap read: the trainer calls it every step)."""
        return self.notice is not None

    def wait(self, timeout_s: float | None = None) -> bool:
        """Blocks until a notice arrives or timeout_s passes; returns whether one arrived."""
        return self._noticed.wait(timeout_s)

    def _notify(self, reason: str) -> None:
        if self.notice is None:
            self.notice = reason
            self._noticed.set()
            log.warning("preemption notice: %s; checkpointing after the current step", reason)

    # ---- lifecycle ----------------------------------------------------------------------------

    def start(self) -> PreemptionWatcher:
        """Installs the SIGTERM handler and starts the metadata poller (each as configured)."""
        if self.sigterm:
            if threading.current_thread() is threading.main_thread():
                self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)
                self._installed = True
            else:
                log.warning("preemption watcher: SIGTERM is not handled (signal handlers need the main "
                            "thread); only the GCE metadata server is watched")
        if self.host:
            self._thread = threading.Thread(target=self._poll_metadata, name="bertfleet-preemption",
                                            daemon=True)
            self._thread.start()
        return self

    def close(self) -> None:
        """Restores the previous SIGTERM handler and stops the poller (within one request timeout)."""
        self._closed.set()
        if self._installed:
            signal.signal(signal.SIGTERM, self._previous if self._previous is not None else signal.SIG_DFL)
            self._installed = False
        if self._thread is not None:
            self._thread.join(timeout=self.timeout_s + 1)
            self._thread = None

    def __enter__(self) -> PreemptionWatcher:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- sources ------------------------------------------------------------------------------

    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        self._sigterms += 1
        if self._sigterms == 1:
            self._notify("SIGTERM received")
            return
        # A second SIGTERM: the sender insists, so it gets what it would have got without us.
        previous = self._previous
        if callable(previous):
            previous(signum, frame)
        elif previous != signal.SIG_IGN:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)

    def _poll_metadata(self) -> None:
        """Polls until preempted or closed. Errors are logged once per run of failures and never
        raised: the watcher must not be what stops a healthy job."""
        request = urllib.request.Request(f"http://{self.host}{METADATA_PATH}", headers={"Metadata-Flavor": "Google"})
        failing = False
        while not self._closed.is_set():
            try:
                with _OPENER.open(request, timeout=self.timeout_s) as response:
                    # The real server answers with this header; anything else is not it (a proxy, a portal).
                    if response.headers.get("Metadata-Flavor") != "Google":
                        raise ValueError("the response lacks the Metadata-Flavor: Google header")
                    value = response.read().decode().strip()
                if failing:
                    log.info("preemption watcher: metadata server %s reachable again", self.host)
                failing = False
                if value == "TRUE":
                    self._notify(f"GCE metadata server {self.host}: instance/preempted is TRUE")
                    return
            except (OSError, http.client.HTTPException, ValueError) as err:  # URLError, HTTPError, timeouts
                if not failing:
                    log.warning("preemption watcher: metadata server %s: %s (still polling)", self.host, err)
                failing = True
            self._closed.wait(self.poll_interval_s)


# ---- one watcher per process ------------------------------------------------------------------

_process_watcher: PreemptionWatcher | None = None
_process_lock = threading.Lock()


def install(**kwargs: Any) -> PreemptionWatcher:
    """Starts this process's watcher (call from the main thread, for SIGTERM), or returns the one
    already running. Arguments are PreemptionWatcher's."""
    global _process_watcher
    with _process_lock:
        if _process_watcher is None:
            _process_watcher = PreemptionWatcher(**kwargs).start()
        return _process_watcher


def installed() -> PreemptionWatcher | None:
    """This process's watcher, if `install()` started one."""
    return _process_watcher


def uninstall() -> None:
    """Closes this process's watcher (restoring the SIGTERM handler); a no-op without one."""
    global _process_watcher
    with _process_lock:
        watcher, _process_watcher = _process_watcher, None
    if watcher is not None:
        watcher.close()


def stop_message(watcher: PreemptionWatcher | None, step: int) -> str:
    """The error text of a run stopped at `step` on a notice (the controller looks for "preempted")."""
    reason = watcher.notice if watcher is not None and watcher.notice else "another worker's preemption notice"
    return f"preempted: {reason}, checkpoint at step {step} committed"

"""Real object storage for the data tests: a GCS JSON API emulator and moto's S3 server, each run as
a subprocess on 127.0.0.1, and the client settings (gcsfs, s3fs) that point fsspec at them.

The clients are configured the way a user would configure them without passing `storage_options`
to `jobs/data/tfrecord.py`: environment variables and fsspec's global defaults
(`fsspec.config.conf[protocol]`, applied to every new filesystem instance, under whatever options
tfrecord.py adds, such as gs://'s default `requests_timeout`). Each server gets its own
`endpoint_url` there, so fsspec's instance cache never hands one server's client to another
server's test.

Fixtures:
  gcs_emulator (session): `gcp-storage-emulator`, in memory, with bucket `bucket`.
  fresh_gcs_emulator (function): another one, its data on disk, so it can be stopped and restarted
    on the same port with the data intact (an outage, not data loss).
  s3_server (session): `moto.server`, with bucket `bucket`.
  fast_gcsfs_retries: gcsfs's own request retries without their ~31 s of sleeping.
  loopback_only: fails the test if anything in this process resolves or connects to a host other
    than 127.0.0.1 / localhost (gcsfs and botocore both probe cloud metadata servers for
    credentials when not told otherwise); `loopback_guard()` is the same for any block.
  unused_port: a closed port on 127.0.0.1, for an unreachable endpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import ipaddress
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fsspec
import pytest

HOST = "127.0.0.1"
BUCKET = "bucket"
S3_KEY, S3_SECRET = "bertfleet-test-key", "bertfleet-test-secret"
SERVER_START_TIMEOUT_S = 30.0

# ------------------------------------------------------------------------------ server processes


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


@dataclass
class ServerProcess:
    """One storage server run as a subprocess on 127.0.0.1:`port`, serving `scheme`:// URLs with
    bucket `bucket`; `start()` waits until it answers HTTP, `stop()` kills it (a crash, as far as
    clients can tell) and can be followed by `start()` on the same port."""

    name: str
    scheme: str
    argv: list[str]
    port: int
    log_path: Path
    probe_path: str = "/"
    bucket: str = BUCKET
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def fsspec_settings(self, endpoint_url: str | None = None) -> dict[str, Any]:
        """fsspec's defaults for `scheme`:// that reach this server, or whatever listens at
        `endpoint_url` in front of it."""
        endpoint_url = endpoint_url or self.url
        if self.scheme == "gs":
            # No credentials: the default (token=None) searches gcloud's configuration and then
            # the GCE metadata server.
            return {"token": "anon", "endpoint_url": endpoint_url}
        # Fixed dummy credentials (moto accepts any). The region comes from AWS_DEFAULT_REGION:
        # given here, s3fs's mkdir would send it as a LocationConstraint, which us-east-1 must not be.
        return {"key": S3_KEY, "secret": S3_SECRET, "client_kwargs": {"endpoint_url": endpoint_url}}

    def start(self, timeout_s: float = SERVER_START_TIMEOUT_S) -> None:
        assert self.proc is None, f"{self.name} is already running"
        with self.log_path.open("ab") as log:
            # Its own session: a Ctrl-C in the terminal reaches pytest, which then stops it in order.
            self.proc = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        # No proxies from the environment: this must reach 127.0.0.1 itself.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None:
                self.proc = None
                raise RuntimeError(f"{self.name} exited while starting:\n{self.log_tail()}")
            try:
                opener.open(self.url + self.probe_path, timeout=1).close()
                return
            except urllib.error.HTTPError:  # it answers HTTP, which is all "ready" means here
                return
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.name} did not answer on {self.url} within {timeout_s} s:\n"
                                   f"{self.log_tail()}")  # fmt: skip
            time.sleep(0.05)

    def pause(self) -> None:
        """Freeze the process (SIGSTOP): its port stays open and the kernel still accepts
        connections, but nothing answers, like a stalled server. `stop()` still works."""
        assert self.proc is not None, f"{self.name} is not running"
        os.kill(self.proc.pid, signal.SIGSTOP)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)

    def log_tail(self, num_lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-num_lines:])
        except OSError:
            return "(no log)"


def gcs_emulator_process(log_dir: Path, port: int | None = None, data_dir: Path | None = None) -> ServerProcess:
    """`gcp-storage-emulator` with bucket `bucket`: in memory, or keeping its data in `data_dir`
    (which survives a restart)."""
    port = port or free_port()
    argv = [sys.executable, "-m", "gcp_storage_emulator"]
    if data_dir is not None:
        argv += ["--data-dir", str(data_dir)]
    argv += ["start", f"--host={HOST}", f"--port={port}", f"--default-bucket={BUCKET}"]
    if data_dir is None:
        argv.append("--in-memory")
    return ServerProcess("gcp-storage-emulator", "gs", argv, port, log_dir / f"gcs-{port}.log",
                         probe_path="/storage/v1/b")  # fmt: skip


def s3_server_process(log_dir: Path, port: int | None = None) -> ServerProcess:
    port = port or free_port()
    argv = [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(port)]
    return ServerProcess("moto S3 server", "s3", argv, port, log_dir / f"s3-{port}.log")


# ---------------------------------------------------------------------------------- GCS clients


@pytest.fixture(scope="session")
def _gcs_client_settings() -> Iterator[None]:
    """Settings every gcsfs client of an emulator needs, whichever emulator it talks to."""
    with pytest.MonkeyPatch.context() as mp:
        # Read when gcsfs is imported: "true" swaps in a filesystem class that talks gRPC and the
        # Storage Control API to classify buckets, which the emulator does not serve.
        mp.setenv("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
        # If the credential search ever runs, it must not ping the GCE metadata server.
        mp.setenv("NO_GCE_CHECK", "true")
        mp.setenv("NO_PROXY", _no_proxy())
        gcsfs = importlib.import_module("gcsfs")
        if gcsfs.GCSFileSystem is not gcsfs.core.GCSFileSystem:  # imported before the setenv
            for protocol in ("gs", "gcs"):
                fsspec.register_implementation(protocol, gcsfs.core.GCSFileSystem, clobber=True)
        yield
        gcsfs.core.GCSFileSystem.clear_instance_cache()


def _no_proxy() -> str:
    current = os.environ.get("NO_PROXY", os.environ.get("no_proxy", ""))
    return ",".join(filter(None, [current, "127.0.0.1", "localhost"]))


@pytest.fixture(scope="session")
def gcs_emulator(
    _gcs_client_settings: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """A GCS emulator for the session (in memory, bucket `bucket`); `gs://` URLs reach it, through
    `STORAGE_EMULATOR_HOST` as gcsfs documents it and through fsspec's defaults."""
    server = gcs_emulator_process(tmp_path_factory.mktemp("gcs-emulator"))
    server.start()
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("STORAGE_EMULATOR_HOST", server.url)
            mp.setitem(fsspec.config.conf, "gs", server.fsspec_settings())
            yield server
    finally:
        server.stop()


@pytest.fixture
def fresh_gcs_emulator(
    _gcs_client_settings: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[ServerProcess]:
    """A GCS emulator for one test, its data on disk so that it can be stopped and restarted on the
    same port with the objects still there; `gs://` URLs reach it during the test."""
    server = gcs_emulator_process(tmp_path, data_dir=tmp_path / "gcs-data")
    server.start()
    monkeypatch.setitem(fsspec.config.conf, "gs", server.fsspec_settings())
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def fast_gcsfs_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """gcsfs retries every failed request itself, 6 tries with sleeps of 1, 2, 4, 8 and 16 s plus
    up to 1 s of jitter each (`gcsfs.retry.retry_request`), so a read from a dead endpoint takes
    ~31-36 s to fail, and a retry of ours only starts after that. Scale those sleeps down 100x, so
    outage tests see the same sequence of errors in well under a second.

    The number of tries is bound when gcsfs's class is defined, so only the sleeps can change.
    """
    retry_module = importlib.import_module("gcsfs.retry")
    assert retry_module.asyncio is asyncio, "gcsfs.retry no longer sleeps with asyncio.sleep"

    class FastSleepAsyncio:
        def __getattr__(self, name: str) -> Any:
            return getattr(asyncio, name)

        @staticmethod
        async def sleep(delay_s: float, result: Any = None) -> Any:
            return await asyncio.sleep(delay_s / 100, result)

    monkeypatch.setattr(retry_module, "asyncio", FastSleepAsyncio())


# ----------------------------------------------------------------------------------- S3 clients


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """moto's S3 server for the session, with bucket `bucket`; `s3://` URLs reach it."""
    server = s3_server_process(tmp_path_factory.mktemp("s3-server"))
    server.start()
    try:
        with pytest.MonkeyPatch.context() as mp:
            # Credentials in the environment as well as in fsspec's defaults, so that any boto
            # client finds them without searching ~/.aws or the EC2 metadata server.
            for name, value in {
                "AWS_ACCESS_KEY_ID": S3_KEY,
                "AWS_SECRET_ACCESS_KEY": S3_SECRET,
                "AWS_DEFAULT_REGION": "us-east-1",
                "AWS_EC2_METADATA_DISABLED": "true",
                "AWS_CONFIG_FILE": os.devnull,
                "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
                "NO_PROXY": _no_proxy(),
            }.items():
                mp.setenv(name, value)
            mp.delenv("AWS_PROFILE", raising=False)
            mp.delenv("AWS_SESSION_TOKEN", raising=False)
            mp.setitem(fsspec.config.conf, "s3", server.fsspec_settings())
            s3fs = importlib.import_module("s3fs")
            s3fs.S3FileSystem.clear_instance_cache()
            with loopback_guard():
                fsspec.filesystem("s3").mkdir(BUCKET)
            yield server
            s3fs.S3FileSystem.clear_instance_cache()
    finally:
        server.stop()


@pytest.fixture
def unused_port() -> int:
    """A port on 127.0.0.1 that nothing listens on: an unreachable endpoint."""
    return free_port()


# ------------------------------------------------------------------------------ loopback guard

_LOOPBACK_NAMES = {"localhost", "localhost.localdomain"}
_guard: dict[str, Any] = {"active": False, "violations": []}


def _is_loopback(host: object) -> bool:
    if host is None:
        return True
    if isinstance(host, bytes):
        host = host.decode(errors="replace")
    if not isinstance(host, str):
        return False
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if not _guard["active"]:
        return
    if event == "socket.getaddrinfo":
        host = args[0]
    elif event == "socket.connect":
        sock, address = args
        if sock.family not in (socket.AF_INET, socket.AF_INET6):
            return
        host = address[0]
    else:
        return
    if not _is_loopback(host):
        _guard["violations"].append(f"{event} {host!r}")
        raise ConnectionRefusedError(f"tests may only contact 127.0.0.1, not {host!r} ({event})")


_audit_hook_installed = False


@contextlib.contextmanager
def loopback_guard() -> Iterator[None]:
    """Refuse any name lookup of, or connection to, a non-loopback host made by this process
    inside the block, and fail at its end if there was one (a refusal alone might be swallowed)."""
    global _audit_hook_installed
    if not _audit_hook_installed:  # audit hooks cannot be removed: install one, switch it on and off
        sys.addaudithook(_audit)
        _audit_hook_installed = True
    was_active, _guard["active"] = _guard["active"], True
    violations_before = len(_guard["violations"])
    try:
        yield
    finally:
        _guard["active"] = was_active
    violations = _guard["violations"][violations_before:]
    assert not violations, f"tried to reach hosts other than 127.0.0.1: {violations}"


@pytest.fixture
def loopback_only() -> Iterator[None]:
    """`loopback_guard` around the test."""
    with loopback_guard():
        yield

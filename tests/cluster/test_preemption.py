"""Preemption notices: the GCE metadata flag (against a fake metadata server on 127.0.0.1 that, like
the real one, refuses requests without `Metadata-Flavor: Google`), SIGTERM to this process, and an
in-process pretraining run SIGTERMed mid-run that commits the step it stopped at and resumes bitwise."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch
import yaml
from tiny_job import tiny_pretrain, write_tiny_config
from typer.testing import CliRunner

from cluster import preemption
from cluster.preemption import PreemptionWatcher
from jobs.checkpoint import CheckpointStore
from jobs.runner import run_job
from jobs.spec import parse_spec
from jobs.trainer import StopTraining


class FakeMetadataServer(ThreadingHTTPServer):
    """Answers GET /computeMetadata/v1/instance/preempted with `answers` in turn (the last one
    repeats); an int answer is an HTTP error status. 403 without the Metadata-Flavor header."""

    def __init__(self, answers: list[str | int]):
        self.answers = answers
        self.requests: list[dict[str, str]] = []
        super().__init__(("127.0.0.1", 0), _MetadataHandler)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.server_address[1]}"


class _MetadataHandler(BaseHTTPRequestHandler):
    server: FakeMetadataServer

    def do_GET(self) -> None:
        server = self.server
        server.requests.append(dict(self.headers))
        if self.headers.get("Metadata-Flavor") != "Google":
            self._answer(403, "Missing required header \"Metadata-Flavor\": \"Google\"\n")
        elif self.path.split("?")[0] != preemption.METADATA_PATH:
            self._answer(404, "not found\n")
        else:
            answer = server.answers[min(len(server.requests) - 1, len(server.answers) - 1)]
            self._answer(answer, "") if isinstance(answer, int) else self._answer(200, answer)

    def _answer(self, status: int, body: str) -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Metadata-Flavor", "Google")
        self.send_header("Content-Type", "application/text")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def metadata_server(request) -> Iterator[FakeMetadataServer]:
    server = FakeMetadataServer(request.param)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("metadata_server", [["FALSE", "FALSE", "TRUE"]], indirect=True)
def test_the_metadata_flag_becomes_a_notice(metadata_server, monkeypatch):
    monkeypatch.setenv("GCE_METADATA_HOST", metadata_server.host)
    with PreemptionWatcher(sigterm=False, poll_interval_s=0.02) as watcher:
        assert watcher.host == metadata_server.host
        assert watcher.wait(10), "no notice"
        assert watcher.should_stop()
        assert "instance/preempted is TRUE" in watcher.notice
    assert len(metadata_server.requests) == 3  # FALSE, FALSE, TRUE, then it stopped polling
    assert all(r.get("Metadata-Flavor") == "Google" for r in metadata_server.requests)


@pytest.mark.parametrize("metadata_server", [["TRUE"]], indirect=True)
def test_the_fake_server_refuses_requests_without_the_header(metadata_server):
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"http://{metadata_server.host}{preemption.METADATA_PATH}", timeout=5)
    assert err.value.code == 403


@pytest.mark.parametrize("metadata_server", [[503, 503, 503, "TRUE"]], indirect=True)
def test_server_errors_are_logged_once_and_polling_goes_on(metadata_server, caplog):
    with caplog.at_level(logging.WARNING, logger="bertfleet"):
        with PreemptionWatcher(sigterm=False, host=metadata_server.host, poll_interval_s=0.02) as watcher:
            assert watcher.wait(10), "no notice after the server recovered"
    warnings = [r for r in caplog.records if "metadata server" in r.getMessage() and "still polling" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in caplog.records]


def test_an_unreachable_server_never_raises(caplog):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        host = f"127.0.0.1:{probe.getsockname()[1]}"
    with caplog.at_level(logging.WARNING, logger="bertfleet"):
        watcher = PreemptionWatcher(sigterm=False, host=host, poll_interval_s=0.02, timeout_s=0.5).start()
        assert not watcher.wait(0.5)
        assert watcher._thread is not None and watcher._thread.is_alive()  # still polling
        watcher.close()
    assert not watcher.should_stop()
    assert sum("still polling" in r.getMessage() for r in caplog.records) == 1


def test_the_metadata_server_is_polled_only_on_gce(monkeypatch, tmp_path):
    monkeypatch.delenv("GCE_METADATA_HOST", raising=False)
    product = tmp_path / "product_name"
    monkeypatch.setattr(preemption, "PRODUCT_NAME_FILE", str(product))
    assert preemption.metadata_host() is None  # no DMI file
    product.write_text("Standard PC (Q35 + ICH9, 2009)\n")
    assert preemption.metadata_host() is None
    assert PreemptionWatcher(sigterm=False).host is None  # and nothing would be started
    product.write_text("Google Compute Engine\n")
    assert preemption.metadata_host() == "metadata.google.internal"
    monkeypatch.setenv("GCE_METADATA_HOST", "127.0.0.1:1")
    assert preemption.metadata_host() == "127.0.0.1:1"


def test_sigterm_is_a_notice_not_a_death_and_the_handler_is_restored():
    before = signal.getsignal(signal.SIGTERM)
    with PreemptionWatcher(metadata=False) as watcher:
        os.kill(os.getpid(), signal.SIGTERM)
        assert watcher.wait(5)
        assert watcher.notice == "SIGTERM received" and watcher.should_stop()
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_second_sigterm_gets_the_previous_handler():
    calls: list[int] = []
    before = signal.signal(signal.SIGTERM, lambda signum, frame: calls.append(signum))
    try:
        with PreemptionWatcher(metadata=False) as watcher:
            os.kill(os.getpid(), signal.SIGTERM)
            assert watcher.wait(5) and calls == []
            os.kill(os.getpid(), signal.SIGTERM)
            assert calls == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, before)


def test_off_the_main_thread_sigterm_is_skipped_with_a_warning(caplog):
    before = signal.getsignal(signal.SIGTERM)
    started: list[PreemptionWatcher] = []
    with caplog.at_level(logging.WARNING, logger="bertfleet"):
        thread = threading.Thread(target=lambda: started.append(PreemptionWatcher(metadata=False).start()))
        thread.start()
        thread.join()
    assert signal.getsignal(signal.SIGTERM) is before
    assert any("main thread" in r.getMessage() for r in caplog.records)
    started[0].close()


def test_one_watcher_per_process():
    before = signal.getsignal(signal.SIGTERM)
    watcher = preemption.install(metadata=False)
    try:
        assert preemption.install() is watcher and preemption.installed() is watcher
    finally:
        preemption.uninstall()
    assert preemption.installed() is None and signal.getsignal(signal.SIGTERM) is before
    assert preemption.stop_message(watcher, 7) == "preempted: another worker's preemption notice, checkpoint at step 7 committed"


# ---- a pretraining run, SIGTERMed ---------------------------------------------------------------

STEPS, STOP_AT = 8, 5


def _spec(shared, tmp_path, output_dir):
    return parse_spec(_raw_spec(shared, tmp_path, output_dir))


def _raw_spec(shared, tmp_path, output_dir) -> dict:
    config = write_tiny_config(tmp_path / "bert_config.json")
    # No periodic checkpoint before the end: a checkpoint mid-run can only be the emergency one.
    return tiny_pretrain(shared, config, output_dir, training={"num_train_steps": STEPS},
                         output={"save_checkpoints_steps": 100})


def _logged_steps(output_dir) -> list[int]:
    rows = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]
    return [row["step"] for row in rows if "train/loss" in row]


def test_a_sigtermed_run_commits_its_step_and_resumes_bitwise(shared, tmp_path):
    run_job(_spec(shared, tmp_path, tmp_path / "full"))
    reached, sent = threading.Event(), threading.Event()

    def sender() -> None:  # another thread, as a signal from outside would be
        reached.wait(60)
        os.kill(os.getpid(), signal.SIGTERM)
        sent.set()

    threading.Thread(target=sender, daemon=True).start()
    with PreemptionWatcher(metadata=False) as watcher:
        calls: list[int] = []

        def should_stop() -> bool:
            calls.append(1)
            if len(calls) == STOP_AT:  # pause after step STOP_AT until the signal is out
                reached.set()
                assert sent.wait(60)
            return watcher.should_stop()

        with pytest.raises(StopTraining) as stop:
            run_job(_spec(shared, tmp_path, tmp_path / "cut"), should_stop=should_stop)
    assert watcher.notice == "SIGTERM received"
    assert stop.value.args[0] == STOP_AT
    # The emergency checkpoint holds the last step trained: nothing is lost.
    assert CheckpointStore(str(tmp_path / "cut")).committed_steps() == [STOP_AT]
    assert _logged_steps(tmp_path / "cut") == list(range(1, STOP_AT + 1))
    run_job(_spec(shared, tmp_path, tmp_path / "cut"))  # resumed
    assert _logged_steps(tmp_path / "cut") == list(range(1, STEPS + 1))
    a = CheckpointStore(str(tmp_path / "full")).load()["backend"]["model"]
    b = CheckpointStore(str(tmp_path / "cut")).load()["backend"]["model"]
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_bertfleet_run_checkpoints_and_exits_143_on_sigterm(shared, tmp_path):
    from orchestrator.cli import PREEMPTED_EXIT_CODE, app

    out = tmp_path / "run"
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(_raw_spec(shared, tmp_path, out)))
    before = signal.getsignal(signal.SIGTERM)

    def sender() -> None:  # once the job has started (run_job writes spec.json before building anything)
        for _ in range(6000):
            if (out / "spec.json").exists():
                os.kill(os.getpid(), signal.SIGTERM)
                return
            threading.Event().wait(0.005)

    threading.Thread(target=sender, daemon=True).start()
    result = CliRunner().invoke(app, ["run", str(spec_file)])
    assert result.exit_code == PREEMPTED_EXIT_CODE, result.output
    assert "preempted: SIGTERM received, checkpoint at step 1 committed" in result.output
    assert CheckpointStore(str(out)).committed_steps() == [1]
    assert signal.getsignal(signal.SIGTERM) is before

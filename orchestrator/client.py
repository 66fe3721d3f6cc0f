"""What the `bertfleet submit/list/status/cancel/resume/events/logs` commands talk to: the HTTP API of a shared
controller when $BERTFLEET_API and $BERTFLEET_TOKEN are set, else the local job store ($BERTFLEET_DB
or ~/.bertfleet/bertfleet.db). Both answer with the same JSON shapes (the API's).

The HTTP client is the standard library's (no extra dependency for the CLI).
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from email.message import Message
from pathlib import Path
from typing import Any, Protocol

from jobs.spec import JobSpec
from orchestrator.state import JobState


class ClientError(RuntimeError):
    """The controller refused a request or could not be reached; the message says why."""


class Client(Protocol):
    where: str

    def submit(self, spec: JobSpec, priority: int = 0, idempotency_key: str | None = None) -> dict[str, Any]: ...

    def jobs(self, state: str | None = None) -> list[dict[str, Any]]: ...

    def get(self, job_id: str) -> dict[str, Any]: ...

    def cancel(self, job_id: str) -> dict[str, Any]: ...

    def events(self, job_id: str) -> list[dict[str, Any]]: ...

    def resume(self, job_id: str) -> dict[str, Any]: ...

    def logs(self, job_id: str, lines: int = 200, offset: int | None = None) -> tuple[str, int]:
        """(text, next offset): the last `lines` lines of the job log, or (with an offset) the whole
        lines after that byte offset; see GET /jobs/{id}/logs."""
        ...


class LocalClient:
    """The job store on this machine, used directly."""

    def __init__(self, db: str | None = None):
        from orchestrator.store import Store

        self.store = Store(db)
        self.where = self.store.url

    def submit(self, spec: JobSpec, priority: int = 0, idempotency_key: str | None = None) -> dict[str, Any]:
        """Admits the spec as the API would (no secrets; see orchestrator/admission.py) and stores it."""
        from jobs.spec import SpecError
        from orchestrator.admission import admit
        from orchestrator.store import IdempotencyConflict

        try:
            job, created = self.store.submit(admit(spec.model_dump(mode="json")), priority, idempotency_key)
        except (SpecError, IdempotencyConflict) as err:
            raise ClientError(str(err)) from None
        return job.to_dict() | {"created": created}

    def jobs(self, state: str | None = None) -> list[dict[str, Any]]:
        try:
            wanted = JobState.parse(state) if state else None
        except ValueError as err:
            raise ClientError(f"--state: {err}") from None
        return [job.to_dict() for job in self.store.jobs(wanted)]

    def get(self, job_id: str) -> dict[str, Any]:
        return self._call(lambda: self.store.get(job_id).to_dict(with_spec=True))

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self._call(lambda: self.store.cancel(job_id, who="the CLI").to_dict())

    def events(self, job_id: str) -> list[dict[str, Any]]:
        return self._call(lambda: [e.to_dict() for e in self.store.events(job_id)])

    def resume(self, job_id: str) -> dict[str, Any]:
        return self._call(lambda: self.store.resume(job_id, who="the CLI").to_dict())

    def logs(self, job_id: str, lines: int = 200, offset: int | None = None) -> tuple[str, int]:
        from orchestrator.outputs import read_log

        job = self._call(lambda: self.store.get(job_id))
        return read_log(job.spec.output.output_dir, lines, offset)

    @staticmethod
    def _call(fn: Any) -> Any:
        from orchestrator.state import IllegalTransition
        from orchestrator.store import JobNotFound

        try:
            return fn()
        except (JobNotFound, IllegalTransition) as err:
            raise ClientError(str(err)) from None


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """urllib would resend the Authorization header to wherever a redirect points; the API never
    redirects, so a redirect is an error."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_opener = urllib.request.build_opener(_NoRedirect)


class HttpClient:
    """A controller's HTTP API (orchestrator/api.py)."""

    def __init__(self, url: str, token: str, timeout_s: float = 30.0):
        self.where = url.rstrip("/")
        self._token = token
        self.timeout_s = timeout_s

    def _request(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None) -> Any:
        return json.loads(self._send(method, path, body, headers)[0] or b"null")

    def _send(self, method: str, path: str, body: Any = None,
              headers: dict[str, str] | None = None) -> tuple[bytes, Message]:
        """(response body, response headers)."""
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(f"{self.where}{path}", data=data, method=method, headers={
            "Authorization": f"Bearer {self._token}", "Content-Type": "application/json", **(headers or {})})
        try:
            with _opener.open(request, timeout=self.timeout_s) as response:
                return response.read(), response.headers
        except urllib.error.HTTPError as err:
            try:
                detail = json.loads(err.read()).get("detail", err.reason)
            except ValueError:
                detail = err.reason
            raise ClientError(f"{self.where}: {err.code}: {detail}") from None
        except (urllib.error.URLError, OSError) as err:
            raise ClientError(f"cannot reach the controller at {self.where}: {getattr(err, 'reason', err)}") from None

    def submit(self, spec: JobSpec, priority: int = 0, idempotency_key: str | None = None) -> dict[str, Any]:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return self._request("POST", "/jobs", {"spec": spec.model_dump(mode="json"), "priority": priority}, headers)

    def jobs(self, state: str | None = None) -> list[dict[str, Any]]:
        query = f"?{urllib.parse.urlencode({'state': state})}" if state else ""
        return self._request("GET", f"/jobs{query}")["jobs"]

    def get(self, job_id: str) -> dict[str, Any]:
        return self._request("GET", f"/jobs/{urllib.parse.quote(job_id, safe='')}")

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self._request("POST", f"/jobs/{urllib.parse.quote(job_id, safe='')}/cancel")

    def events(self, job_id: str) -> list[dict[str, Any]]:
        return self._request("GET", f"/jobs/{urllib.parse.quote(job_id, safe='')}/events")["events"]

    def resume(self, job_id: str) -> dict[str, Any]:
        return self._request("POST", f"/jobs/{urllib.parse.quote(job_id, safe='')}/resume")

    def logs(self, job_id: str, lines: int = 200, offset: int | None = None) -> tuple[str, int]:
        query = urllib.parse.urlencode({"lines": lines} if offset is None else {"offset": offset})
        body, headers = self._send("GET", f"/jobs/{urllib.parse.quote(job_id, safe='')}/logs?{query}")
        return body.decode("utf-8", "replace"), int(headers.get("X-Log-Offset") or 0)


def connect() -> Client:
    """The HTTP API when $BERTFLEET_API and $BERTFLEET_TOKEN are set, else the API of the cluster
    `bertfleet up` started on this machine when one runs, else the local store.

    Raises:
        ClientError: $BERTFLEET_API is set without $BERTFLEET_TOKEN.
    """
    url, token = os.environ.get("BERTFLEET_API"), os.environ.get("BERTFLEET_TOKEN")
    if url and not token:
        raise ClientError("BERTFLEET_API is set but BERTFLEET_TOKEN is not: export the controller's token "
                          "(or unset BERTFLEET_API to use the local store)")
    if url and token:
        return HttpClient(url, token)
    if not url:
        from cluster.local import read_fleet_state

        state = read_fleet_state()  # a cluster `bertfleet up` started on this machine
        if state is not None:
            try:
                token = token or Path(state["token_file"]).read_text().strip()
            except OSError as err:
                raise ClientError(f"the local cluster's token file {state['token_file']} is unreadable: {err}; "
                                  "set BERTFLEET_TOKEN") from None
            return HttpClient(state["api"], token)
    return LocalClient()

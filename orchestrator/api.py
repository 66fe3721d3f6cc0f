"""The HTTP API of the job controller (FastAPI): submit, list, get, cancel, resume, events, metrics, logs.

Every request, documentation included, needs `Authorization: Bearer <token>` (compared in constant
time; 401 otherwise). Submitted specs go through orchestrator/admission.py (safe YAML only, no
secrets, validated, output_dir under the storage root); the answer never repeats the token or a
refused secret. `serve` binds 127.0.0.1 unless told otherwise.

    POST /jobs                 {"spec": {...} | "yaml text", "priority": 0}; header Idempotency-Key
                               -> 201 {job} (200 with the first job when the key was seen before)
    GET  /jobs?state=RUNNING   -> {"jobs": [{job}, ...]}
    GET  /jobs/{id}            -> {job, "spec": {...}}
    POST /jobs/{id}/cancel     -> {job} (a RUNNING job: cancel_requested, the controller stops it)
    POST /jobs/{id}/resume     -> {job}: a FAILED or CANCELLED job back to QUEUED, to resume from its newest
                               committed checkpoint, failures counted afresh (409 in any other state)
    GET  /jobs/{id}/events     -> {"events": [{time, job_id, from_state, to_state, reason}, ...]}
    GET  /jobs/{id}/metrics?limit=1000&since_step=N -> {"metrics": [{step, time, ...}, ...]}
    GET  /jobs/{id}/logs?lines=200 -> text/plain, the tail of output_dir/job.log (whole lines); header
                               X-Log-Offset: the byte offset after the text, to follow the log with
    GET  /jobs/{id}/logs?offset=N  -> text/plain, the whole lines after byte N (at most 4 MiB) and the next
                               X-Log-Offset; the tail again when N is past the end (the log was rewritten)
    GET  /metrics              -> Prometheus text format (orchestrator/metrics.py); behind the token like
                               everything else: give the scraper `authorization: {credentials_file: ...}`
    GET  /cluster              -> {"source", "message", "nodes": [...]} (orchestrator/dashboard/cluster.py)
    GET  /dashboard/jobs?state=RUNNING -> GET /jobs plus model size, resources, ETA per job (the jobs table)
    GET  /                     the dashboard's login shell, and /ui/login.js, /ui/login.css: the only
                               responses served without the token (static, no data); /ui/app.js and
                               /ui/app.css, the dashboard itself, need it (orchestrator/dashboard/)
Errors: {"detail": "..."} with 400 (bad spec or request), 401, 404 (no such job), 409 (a transition
the job's state does not allow, or an idempotency key reused for another spec), 413 (body too big).
"""

from __future__ import annotations

import hmac
import json
import re
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Query, Request
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from starlette.concurrency import run_in_threadpool

from jobs.spec import SpecError
from orchestrator import dashboard, outputs
from orchestrator import metrics as prometheus_metrics
from orchestrator.admission import admit, redact
from orchestrator.state import IllegalTransition, JobState
from orchestrator.store import IdempotencyConflict, JobNotFound, Store

if TYPE_CHECKING:
    from orchestrator.controller import Controller

MAX_BODY_BYTES = 1 << 20
# The dashboard's login shell: static files with no data, the only paths served without the token.
_PUBLIC_PATHS = frozenset({"/", "/ui/login.js", "/ui/login.css"})
_DASHBOARD_HEADERS = {
    # blob: for the dashboard code, which the login shell fetches with the token and runs from a Blob URL
    "Content-Security-Policy": "default-src 'none'; script-src 'self' blob:; style-src 'self' blob:; "
                               "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; "
                               "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer", "Cache-Control": "no-store",
}
_IDEMPOTENCY_KEY = re.compile(r"[A-Za-z0-9._:\-]{1,200}")


class BadRequest(ValueError):
    """A request the API cannot use (not a spec problem: those are SpecError)."""


class _PayloadTooLarge(ValueError):
    pass


def _error(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


def create_app(store: Store, token: str, controller: Controller | None = None, storage_root: str | None = None,
               max_body_bytes: int = MAX_BODY_BYTES) -> FastAPI:
    """The API over `store`.

    Args:
        store: the job store.
        token: the bearer token every request must present (at least 16 characters).
        controller: woken after a submit, cancel or resume so it acts at once (None: it polls on its own).
        storage_root: when set, every job's output.output_dir must lie under it (relative ones are
            put under it).
        max_body_bytes: larger request bodies are refused with 413.

    Raises:
        ValueError: a missing or short token.
    """
    if not token or len(token) < 16:
        raise ValueError("the API token must be at least 16 characters (e.g. python -c 'import secrets; "
                         "print(secrets.token_urlsafe(32))')")
    expected = token.encode()
    app = FastAPI(title="bertfleet", docs_url=None, redoc_url=None)

    @app.middleware("http")
    async def require_token(request: Request, call_next: Any) -> Any:
        if request.method == "GET" and request.url.path in _PUBLIC_PATHS:
            return await call_next(request)
        scheme, _, presented = request.headers.get("authorization", "").partition(" ")
        # compare_digest takes time independent of where the strings differ
        if not (scheme.lower() == "bearer" and hmac.compare_digest(presented.strip().encode(), expected)):
            return _error(401, "missing or wrong token: send the header 'Authorization: Bearer <token>'",
                          {"WWW-Authenticate": "Bearer"})
        return await call_next(request)

    @app.exception_handler(SpecError)
    async def _spec_error(_request: Request, err: SpecError) -> JSONResponse:
        return _error(400, redact(str(err)))

    @app.exception_handler(BadRequest)
    async def _bad_request(_request: Request, err: BadRequest) -> JSONResponse:
        return _error(400, str(err))

    @app.exception_handler(_PayloadTooLarge)
    async def _too_large(_request: Request, err: _PayloadTooLarge) -> JSONResponse:
        return _error(413, str(err))

    @app.exception_handler(JobNotFound)
    async def _not_found(_request: Request, err: JobNotFound) -> JSONResponse:
        return _error(404, str(err))

    @app.exception_handler(IllegalTransition)
    async def _conflict(_request: Request, err: IllegalTransition) -> JSONResponse:
        return _error(409, str(err))

    @app.exception_handler(IdempotencyConflict)
    async def _idempotency(_request: Request, err: IdempotencyConflict) -> JSONResponse:
        return _error(409, str(err))

    def _wake() -> None:
        if controller is not None:
            controller.wake()

    @app.post("/jobs")
    async def submit(request: Request) -> JSONResponse:
        body = await _read_body(request, max_body_bytes)
        key = request.headers.get("idempotency-key")
        if key is not None and not _IDEMPOTENCY_KEY.fullmatch(key):
            raise BadRequest("Idempotency-Key: 1 to 200 characters of letters, digits and . _ : - (e.g. a UUID)")
        raw, priority = _parse_submit(body)
        spec = await run_in_threadpool(admit, raw, storage_root, "spec")
        job, created = await run_in_threadpool(store.submit, spec, priority, key)
        if created:
            _wake()
        return JSONResponse(job.to_dict() | {"created": created}, status_code=201 if created else 200,
                            headers={"Location": f"/jobs/{job.id}"})

    @app.get("/jobs")
    def list_jobs(state: str | None = None, limit: int = Query(1000, ge=1, le=10000)) -> dict[str, Any]:
        try:
            wanted = JobState.parse(state) if state else None
        except ValueError as err:
            raise BadRequest(f"state: {err}") from None
        return {"jobs": [job.to_dict() for job in store.jobs(wanted, limit=limit)]}

    @app.get("/jobs/{job_id}")
    def get_job(job_id: str) -> dict[str, Any]:
        return store.get(job_id).to_dict(with_spec=True)

    @app.post("/jobs/{job_id}/cancel")
    def cancel(job_id: str) -> dict[str, Any]:
        job = store.cancel(job_id, who="the API")
        _wake()
        return job.to_dict()

    @app.post("/jobs/{job_id}/resume")
    def resume(job_id: str) -> dict[str, Any]:
        job = store.resume(job_id, who="the API")
        _wake()
        return job.to_dict()

    @app.get("/jobs/{job_id}/events")
    def events(job_id: str) -> dict[str, Any]:
        return {"events": [e.to_dict() for e in store.events(job_id)]}

    @app.get("/jobs/{job_id}/metrics")
    def metrics(job_id: str, limit: int = Query(1000, ge=1, le=100000),
                since_step: int | None = None) -> dict[str, Any]:
        job = store.get(job_id)
        return {"job_id": job.id, "metrics": outputs.read_metrics(job.spec.output.output_dir, limit, since_step)}

    @app.get("/jobs/{job_id}/logs", response_class=PlainTextResponse)
    def logs(job_id: str, lines: int = Query(200, ge=1, le=100000),
             offset: int | None = Query(None, ge=0)) -> PlainTextResponse:
        job = store.get(job_id)
        text, next_offset = outputs.read_log(job.spec.output.output_dir, lines, offset)
        return PlainTextResponse(text, headers={"X-Log-Offset": str(next_offset), "Cache-Control": "no-store"})

    registry = prometheus_metrics.make_registry(store, getattr(controller, "nodes", None))

    @app.get("/metrics")
    def prometheus() -> Response:
        body, content_type = prometheus_metrics.render(registry)
        return Response(body, media_type=content_type, headers={"Cache-Control": "no-store"})

    @app.get("/cluster")
    def cluster() -> dict[str, Any]:
        from orchestrator.dashboard.cluster import cluster_view

        names = {job.id: job.name for state in (JobState.SCHEDULED, JobState.RUNNING) for job in store.jobs(state)}
        return cluster_view(controller, names)

    @app.get("/dashboard/jobs")
    def dashboard_jobs(state: str | None = None, limit: int = Query(1000, ge=1, le=10000)) -> dict[str, Any]:
        """GET /jobs plus what the jobs table shows from each spec (model size, resources, ETA)."""
        from orchestrator.dashboard.jobs import job_row

        try:
            wanted = JobState.parse(state) if state else None
        except ValueError as err:
            raise BadRequest(f"state: {err}") from None
        return {"jobs": [job_row(job) for job in store.jobs(wanted, limit=limit)]}

    def _static(name: str, media_type: str) -> FileResponse:
        return FileResponse(dashboard.STATIC_DIR / name, media_type=media_type, headers=_DASHBOARD_HEADERS)

    @app.get("/", include_in_schema=False)
    def dashboard_shell() -> FileResponse:
        return _static("index.html", "text/html; charset=utf-8")

    @app.get("/ui/{name}", include_in_schema=False)
    def dashboard_file(name: str) -> FileResponse:
        kinds = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}
        if name not in dashboard.PUBLIC_FILES + dashboard.PRIVATE_FILES or name == "index.html":
            raise JobNotFound(f"no dashboard file {name!r}")
        return _static(name, kinds[name[name.rfind("."):]])

    return app


async def _read_body(request: Request, max_bytes: int) -> bytes:
    """The request body, refusing (without reading it all) one larger than max_bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise _PayloadTooLarge(f"request body of {declared} bytes is over the limit of {max_bytes}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise _PayloadTooLarge(f"request body is over the limit of {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _parse_submit(body: bytes) -> tuple[Any, int]:
    """(raw spec: a mapping or YAML text, priority) from a submit body."""
    try:
        payload = json.loads(body)
    except ValueError:
        raise BadRequest('the body must be JSON: {"spec": {...} or "<yaml text>", "priority": 0}') from None
    if not isinstance(payload, dict) or "spec" not in payload:
        raise BadRequest('the body must be a JSON object with a "spec" (a mapping or YAML text)')
    unknown = sorted(set(payload) - {"spec", "priority"})
    if unknown:
        raise BadRequest(f"unknown field(s) {', '.join(map(repr, unknown))}; a submit takes spec and priority")
    raw, priority = payload["spec"], payload.get("priority", 0)
    if not isinstance(raw, (dict, str)):
        raise BadRequest(f"spec: a mapping or YAML text, got {type(raw).__name__}")
    if isinstance(priority, bool) or not isinstance(priority, int) or not -1000 <= priority <= 1000:
        raise BadRequest("priority: an integer from -1000 to 1000 (higher runs first)")
    return raw, priority


def start_server(app: FastAPI, host: str = "127.0.0.1", port: int = 8470, timeout_s: float = 30.0) -> Any:
    """Serves the API from a daemon thread (uvicorn installs no signal handlers off the main thread,
    which belongs to its owner, e.g. a Ray actor). Returns the uvicorn Server once it is listening; set its
    `should_exit` to stop it.

    Raises:
        RuntimeError: the server did not start (e.g. the port is taken); the message says which.
    """
    import threading
    import time

    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", server_header=False))
    thread = threading.Thread(target=server.run, name="api", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the API did not start on {host}:{port} (is the port taken?)")
        time.sleep(0.05)
    return server


def serve(app: FastAPI, host: str = "127.0.0.1", port: int = 8470) -> None:
    """Runs the API with uvicorn until interrupted. Bind another host only behind TLS (a proxy):
    the token travels in every request."""
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level="info", server_header=False)

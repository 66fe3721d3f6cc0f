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
    ray.init(num_cpus=num_cpus, resources=resources, include_dashboard=False, _node_ip_address="127.0.0.1",
             log_to_driver=True, configure_logging=False)
    try:
        yield
    finally:
        ray.shutdown()

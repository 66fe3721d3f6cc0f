"""Admission: what a submitted spec must pass before anything is stored.

  1. YAML text is loaded with a safe loader only (no Python tags, so no code runs), and without
     anchors/aliases (a few aliases can expand into gigabytes: the "billion laughs").
  2. No secrets: secrets come from the environment, never from specs (DESIGN.md). A key that names
     one (password, token, api_key, ...) or a URL with a password is refused, and the value is
     never repeated in the answer.
  3. The spec validates (jobs.spec.parse_spec: every bad key with its path and the fix).
  4. With a storage root configured, output.output_dir must lie under it; a relative output_dir is
     taken relative to the root.

Every refusal is a SpecError (a ValueError) whose message says which key and how to fix it.
Preflight against the cluster (does the gang fit, is storage reachable) is not done here yet.
"""

from __future__ import annotations

import os
import posixpath
import re
from pathlib import Path
from typing import Any

import yaml

from jobs.spec import JobSpec, SpecError, parse_spec

_SECRET_KEY = re.compile(r"(^|_)(password|passwd|secret|token|api_?key|access_?key|private_?key|credentials?)(_|$)")
_URL_WITH_PASSWORD = re.compile(r"\b([a-z][a-z0-9+.-]*://)[^/@\s:]*:[^/@\s]*@", re.IGNORECASE)


class _SpecLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing aliases."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise yaml.composer.ComposerError(None, None, "anchors and aliases (*name) are not accepted in a "
                                              "submitted spec; write the values out", mark)
        return super().compose_node(parent, index)


def load_yaml_text(text: str, source: str = "spec") -> Any:
    """Parses YAML (or JSON) spec text safely.

    Raises:
        SpecError: not YAML, a Python (or other non-standard) tag, or an alias; with line and column.
    """
    try:
        return yaml.load(text, Loader=_SpecLoader)  # _SpecLoader is a SafeLoader: no Python tags
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err)
        raise SpecError(f"{source}: not valid YAML{where}: {problem} (only plain YAML is accepted: no "
                        "!!python tags, no aliases)") from None


def find_secrets(raw: Any, path: str = "") -> list[str]:
    """Key paths in a raw spec that hold a secret: a secret-sounding key with a value, or a URL
    with a password (`scheme://user:password@host`)."""
    found: list[str] = []
    if isinstance(raw, dict):
        for key, value in raw.items():
            where = f"{path}.{key}" if path else str(key)
            normalized = re.sub(r"[^a-z0-9]+", "_", str(key).lower())
            if _SECRET_KEY.search(normalized) and value not in (None, "", {}, []):
                found.append(where)
            else:
                found += find_secrets(value, where)
    elif isinstance(raw, list):
        for i, value in enumerate(raw):
            found += find_secrets(value, f"{path}.{i}")
    elif isinstance(raw, str) and _URL_WITH_PASSWORD.search(raw):
        found.append(path)
    return found


def redact(text: str) -> str:
    """`text` with URL passwords masked (for error messages that quote a value)."""
    return _URL_WITH_PASSWORD.sub(r"\1***@", text)


def _is_url(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def _local(path: str) -> str:
    return path.removeprefix("file://")


def resolve_output_dir(output_dir: str, storage_root: str) -> str:
    """`output_dir` resolved against `storage_root` (relative paths go under it).

    Raises:
        SpecError: the result is not under the root (`..`, an absolute path elsewhere, a symlink out,
            another scheme or bucket).
    """
    fix = f"use a path under {storage_root!r}, or a relative path (taken relative to it)"
    if _is_url(storage_root):
        scheme, _, root = storage_root.partition("://")
        root = posixpath.normpath(root).rstrip("/")
        if "://" in output_dir:
            out_scheme, _, rest = output_dir.partition("://")
            if out_scheme != scheme:
                raise SpecError(f"output.output_dir: {out_scheme}:// is outside the storage root; {fix}")
            out = posixpath.normpath(rest)
        elif output_dir.startswith("/"):
            raise SpecError(f"output.output_dir: a local path is outside the storage root; {fix}")
        else:
            out = posixpath.normpath(f"{root}/{output_dir}")
        if out != root and not out.startswith(root + "/"):
            raise SpecError(f"output.output_dir: {output_dir!r} is outside the storage root; {fix}")
        return f"{scheme}://{out}"
    if _is_url(output_dir):
        raise SpecError(f"output.output_dir: {output_dir.partition('://')[0]}:// is outside the storage root; {fix}")
    root_path = Path(os.path.realpath(Path(_local(storage_root)).expanduser()))
    out_path = Path(os.path.realpath(root_path / Path(_local(output_dir)).expanduser()))  # absolute wins in `/`
    if not out_path.is_relative_to(root_path):
        raise SpecError(f"output.output_dir: {output_dir!r} is outside the storage root; {fix}")
    return str(out_path)


def admit(raw: Any, storage_root: str | None = None, source: str = "spec") -> JobSpec:
    """A submitted spec (a mapping, or YAML/JSON text) checked and validated (see the module
    docstring).

    Raises:
        SpecError: the first check that fails, naming the key and the fix.
    """
    if isinstance(raw, str):
        raw = load_yaml_text(raw, source)
    secret_paths = find_secrets(raw)
    if secret_paths:
        raise SpecError(f"{source}: {', '.join(secret_paths)}: looks like a secret; secrets come from the "
                        "environment of the workers (e.g. WANDB_API_KEY, GOOGLE_APPLICATION_CREDENTIALS, "
                        "AWS_*), never from a spec; remove it")
    try:
        spec = parse_spec(raw, source)
    except SpecError as err:
        raise SpecError(redact(str(err))) from None
    if storage_root:
        output = spec.output.model_copy(update={
            "output_dir": resolve_output_dir(spec.output.output_dir, storage_root)})
        spec = spec.model_copy(update={"output": output})
    return spec

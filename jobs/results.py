"""The original scripts' result files (eval_results.txt, test_results.tsv), byte for byte, and the
small text writes every job makes (spec.json), at any fsspec URL."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import fsspec
import numpy as np


def _join(directory: str, name: str) -> str:
    return directory + name if directory.endswith("/") else f"{directory}/{name}"


def write_text(url: str, text: str) -> str:
    """Writes a small UTF-8 text file at any fsspec URL, creating its directory."""
    fs, path = fsspec.core.url_to_fs(url)
    fs.makedirs(fs._parent(path), exist_ok=True)
    # Bytes, so "\n" stays "\n" on every platform, as tf.gfile writes it.
    with fs.open(path, "wb") as f:
        f.write(text.encode("utf-8"))
    return url


def write_eval_results(output_dir: str, metrics: Mapping[str, Any]) -> str:
    """Writes `eval_results.txt` as the original: one "key = value" line per metric, sorted by key.

    Args:
      output_dir: directory (any fsspec URL); created if missing.
      metrics: name -> value (written with `str`).

    Returns:
      The file's URL.
    """
    # The original's expression, kept verbatim so that the text is byte for byte the same.
    text = "".join("%s = %s\n" % (key, str(metrics[key])) for key in sorted(metrics))  # noqa: UP031
    return write_text(_join(output_dir, "eval_results.txt"), text)


def write_test_results(output_dir: str, probabilities: Any) -> str:
    """Writes `test_results.tsv` as the original: per example, its class probabilities, tab-separated.

    Args:
      output_dir: directory (any fsspec URL); created if missing.
      probabilities: [N, C] (the original writes float32 softmax outputs; each value with `str`).

    Returns:
      The file's URL.

    Raises:
      ValueError: probabilities is not 2-D.
    """
    array = np.asarray(probabilities)
    if array.ndim != 2:
        raise ValueError(f"probabilities must be [N, C], got shape {array.shape}")
    text = "".join("\t".join(str(p) for p in row) + "\n" for row in array)
    return write_text(_join(output_dir, "test_results.tsv"), text)

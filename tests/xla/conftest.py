"""Settings for the XLA tests, which run only in .venv-xla (`bash .ci/xla`), where torch-xla 2.9.0
and its exact torch 2.9.0 are installed; in the main environment test_xla_backend.py skips itself.

Set here, before torch_xla is imported by any test module:
- PJRT_DEVICE=CPU: torch-xla's CPU PJRT client stands in for a TPU host (DESIGN.md).
- XLA_FLAGS=--xla_backend_optimization_level=0: the tests compile about a dozen graphs, and LLVM
  without optimisation compiles a tiny BERT's training step in ~2 s instead of ~12 s on two cores.
  It changes how fast the compiled code runs, not the graphs, their number or their float
  semantics (fast-math stays off either way).
"""

from __future__ import annotations

import importlib.util
import os

if importlib.util.find_spec("torch_xla") is not None:  # the main suite's environment is left alone
    os.environ.setdefault("PJRT_DEVICE", "CPU")
    os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0")

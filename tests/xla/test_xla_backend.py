"""The torch-xla backend on XLA's CPU device (a simulated TPU host): whole pretraining and
fine-tuning jobs through `run_job`, compared step by step with the eager CPU backend; exact resume;
a compile count that stops growing; bf16; the settings that warn; the persistent compile cache.
Pretraining eval and the Hugging Face export also run on the XLA device.

Runs in .venv-xla only (`bash .ci/xla`); elsewhere this module is skipped.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from tiny_job import checkpoint_weights, logged_losses, tiny_pretrain, write_tiny_config

torch_xla = pytest.importorskip(
    "torch_xla", reason="torch-xla is not installed here; the XLA tests run in their own venv: bash .ci/xla")

import torch_xla.debug.metrics as met

from jobs.backends import LocalBackend
from jobs.backends.xla import XlaBackend
from jobs.checkpoint import CheckpointStore
from jobs.runner import run_job
from jobs.spec import parse_spec
from jobs.trainer import StopTraining
from models.config import BertConfig

# Tolerances against eager CPU, both fp32 on the same CPU. XLA fuses and reorders the reductions
# (layer norms, softmax, the 30522-wide log-softmax, the gradient sums), so each value differs by a
# few float32 ulps (~1e-6 relative) and step 1's loss, computed from identical weights, agrees to
# that. Later losses drift apart as the updates compound: Adam divides by sqrt(v), so a rounding
# difference in a tiny gradient is not damped. Observed over 10 pretraining steps: loss differences
# growing to 2.3e-5 (on a loss of ~10.5), weights differing by at most 2.6e-5. 1e-4 keeps a 4x
# margin and is still 100x below a real error (one wrong micro-batch or learning rate moves the
# loss by >1e-2 here).
FIRST_STEP_ATOL = 1e-5
LOSS_ATOL = 1e-4


@pytest.fixture(scope="module", autouse=True)
def xla_runtime():
    """Starts the XLA runtime before any eager CPU backward: the autograd engine sizes its
    per-device queues once, at the process's first backward, from the devices that exist then."""
    torch_xla.device()


def _config(path: Path, dropout: float = 0.0) -> str:
    return write_tiny_config(path, dropout=dropout)


def _pretrain_spec(shared: Path, output_dir: Path, config: str, backend: str, **training):
    return parse_spec(tiny_pretrain(shared, config, output_dir,
                                    training={"gradient_accumulation_steps": 2, **training},
                                    resources={"backend": backend, "xla": {"pjrt_device": "CPU"}}))


def _compiles() -> int:
    data = met.metric_data("CompileTime")
    return int(data[0]) if data else 0


def _run_xla(spec, stop_at: int | None = None) -> tuple[dict, list[int]]:
    """run_job on XlaBackend; returns the metrics and the compile count after every step."""
    counts: list[int] = []

    def should_stop() -> bool:
        counts.append(_compiles())
        return stop_at is not None and len(counts) >= stop_at

    return run_job(spec, should_stop=should_stop, backend=XlaBackend(spec)), counts


def _assert_losses_match(reference: dict[int, float], xla: dict[int, float], steps: int) -> None:
    assert sorted(reference) == sorted(xla) == list(range(1, steps + 1))
    assert abs(reference[1] - xla[1]) <= FIRST_STEP_ATOL, (reference[1], xla[1])
    worst = max(abs(reference[s] - xla[s]) for s in reference)
    assert worst <= LOSS_ATOL, {s: (reference[s], xla[s]) for s in reference}


def test_pretraining_matches_eager_cpu_step_by_step(shared, tmp_path):
    config = _config(tmp_path / "bert_config.json")
    run_job(_pretrain_spec(shared, tmp_path / "cpu", config, "local"), backend=LocalBackend(torch.device("cpu")))
    _run_xla(_pretrain_spec(shared, tmp_path / "xla", config, "xla"))
    _assert_losses_match(dict(logged_losses(tmp_path / "cpu")), dict(logged_losses(tmp_path / "xla")), 10)
    cpu, xla = checkpoint_weights(tmp_path / "cpu"), checkpoint_weights(tmp_path / "xla")
    assert cpu.keys() == xla.keys() and all(t.device.type == "cpu" for t in xla.values())
    for name in cpu:
        torch.testing.assert_close(xla[name], cpu[name], atol=1e-4, rtol=1e-4, msg=name)


def test_interrupted_and_resumed_run_is_bitwise_equal_and_compiles_nothing_new(shared, tmp_path):
    # Dropout on: the resumed run must also continue XLA's own RNG, which the checkpoint carries.
    config = _config(tmp_path / "bert_config.json", dropout=0.1)

    def spec(name: str):
        return _pretrain_spec(shared, tmp_path / name, config, "xla", num_train_steps=8, log_every_steps=3)

    _, counts = _run_xla(spec("full"))
    # Warm-up, one new graph per step: step 1 (the optimizer creates its moments), the steady step,
    # the loss average of the first log (step 3), the step after a log (the trainer's token counter
    # restarts from a Python 0). From step 4 on nothing compiles (logs at 6 and 8, checkpoints at 4
    # and 8, a learning rate that changes every step).
    assert counts[3:] == [counts[3]] * 5, f"compiles after each step: {counts}"
    with pytest.raises(StopTraining):
        _run_xla(spec("cut"), stop_at=5)  # between the checkpoints of steps 4 and 8
    assert CheckpointStore(str(tmp_path / "cut")).latest() == 5
    before = _compiles()
    _, resumed_counts = _run_xla(spec("cut"))
    assert len(resumed_counts) == 3 and _compiles() == before, "the resumed run compiled new graphs"
    full, cut = checkpoint_weights(tmp_path / "full"), checkpoint_weights(tmp_path / "cut")
    assert full.keys() == cut.keys()
    for name in full:
        assert torch.equal(full[name], cut[name]), name
    assert dict(logged_losses(tmp_path / "full")) == dict(logged_losses(tmp_path / "cut"))


def test_fine_tuning_matches_eager_cpu(shared, tmp_path):
    rows = (shared / "data/sst2_train.tsv").read_text().splitlines()
    (tmp_path / "train.tsv").write_text("\n".join(rows[:48]) + "\n")
    (tmp_path / "dev.tsv").write_text("\n".join(rows[48:64]) + "\n")
    config = _config(tmp_path / "bert_config.json")

    def spec(name: str, backend: str):
        return parse_spec({
            "kind": "classify",
            "model": {"bert_config_file": config, "vocab_file": str(shared / "data/uncased_vocab.txt")},
            "data": {"task_name": "sst-2", "train_file": str(tmp_path / "train.tsv"),
                     "eval_file": str(tmp_path / "dev.tsv"), "layout": "sst2", "max_seq_length": 32},
            "training": {"train_batch_size": 8, "num_train_steps": 8, "num_warmup_steps": 1, "learning_rate": 1e-3,
                         "log_every_steps": 1, "eval_batch_size": 8},
            "output": {"output_dir": str(tmp_path / name), "save_checkpoints_steps": 100, "export_hf": False},
            "resources": {"backend": backend, "xla": {"pjrt_device": "CPU"}},
            "logging": {"wandb": False},
        })

    cpu_metrics = run_job(spec("cpu", "local"), backend=LocalBackend(torch.device("cpu")))
    xla_metrics, counts = _run_xla(spec("xla", "xla"))
    # 48 rows / 8 = 6 full batches per epoch, so steps 7-8 start a second epoch: still full batches.
    assert counts[2:] == [counts[2]] * 6, f"compiles after each step: {counts}"
    _assert_losses_match(dict(logged_losses(tmp_path / "cpu")), dict(logged_losses(tmp_path / "xla")), 8)
    assert xla_metrics["global_step"] == 8
    assert abs(xla_metrics["eval_loss"] - cpu_metrics["eval_loss"]) <= LOSS_ATOL
    assert xla_metrics["eval_accuracy"] == cpu_metrics["eval_accuracy"]


def test_pretraining_evaluates_on_the_xla_device(shared, tmp_path):
    config = _config(tmp_path / "bert_config.json")
    spec = _pretrain_spec(shared, tmp_path / "run", config, "xla", num_train_steps=1, do_eval=True,
                          eval_batch_size=8, max_eval_steps=2)
    metrics, _ = _run_xla(spec)
    assert 0.0 <= metrics["masked_lm_accuracy"] <= 1.0 and metrics["global_step"] == 1


def test_a_model_on_the_xla_device_exports(tmp_path):
    """The end of every job with output.export_hf (the default): the final model, on the XLA
    device, written as a Hugging Face directory."""
    from safetensors.torch import load_file

    from models.bert import BertForSequenceClassification
    from models.checkpoints import write_hf_directory

    config = BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=37, max_position_embeddings=128)
    model = BertForSequenceClassification(config, 2)
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    write_hf_directory(model.to(torch_xla.device()), tmp_path)
    exported = load_file(str(tmp_path / "model.safetensors"))
    for name, value in expected.items():
        assert torch.equal(exported[name], value), name


def test_bf16_uses_xla_autocast(shared, tmp_path):
    config = _config(tmp_path / "bert_config.json")
    run_job(_pretrain_spec(shared, tmp_path / "fp32", config, "local", num_train_steps=2),
            backend=LocalBackend(torch.device("cpu")))
    _run_xla(_pretrain_spec(shared, tmp_path / "bf16", config, "xla", num_train_steps=2, precision="bf16"))
    fp32, bf16 = dict(logged_losses(tmp_path / "fp32")), dict(logged_losses(tmp_path / "bf16"))
    # bfloat16 keeps 8 bits of mantissa (~4e-3 relative); the losses are sums of many such products.
    for step, loss in fp32.items():
        assert bf16[step] != loss and abs(bf16[step] - loss) <= 5e-2 * loss, (fp32, bf16)


def test_settings_that_do_not_apply_warn(shared, tmp_path):
    config = _config(tmp_path / "bert_config.json")
    raw = json.loads(_pretrain_spec(shared, tmp_path, config, "xla").to_json())
    raw["training"]["precision"] = "fp16"
    raw["model"]["gradient_checkpointing"] = True
    raw["model"]["unpad_inputs"] = True
    raw["resources"]["xla"]["compile_cache_dir"] = str(tmp_path / "cache")  # too late: runtime already compiled
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        XlaBackend(parse_spec(raw))
    messages = "\n".join(str(w.message) for w in caught)
    for needle in ("precision fp16", "gradient_checkpointing saves no memory",
                   "unpad_inputs is ignored", "compile_cache_dir"):
        assert needle in messages, messages
    raw = json.loads(_pretrain_spec(shared, tmp_path, config, "xla").to_json())
    raw["resources"].update(accelerator="tpu", xla={"pjrt_device": "TPU"})
    with pytest.warns(UserWarning, match="PJRT_DEVICE=CPU from the environment overrides"):
        assert XlaBackend(parse_spec(raw)).device.type == "xla"


def test_a_fresh_process_takes_device_and_compile_cache_from_the_spec(shared, tmp_path):
    """In a fresh process without PJRT_DEVICE (the cache must be chosen before XLA's first
    computation, the device before the runtime starts)."""
    config = _config(tmp_path / "bert_config.json")
    raw = json.loads(_pretrain_spec(shared, tmp_path, config, "xla").to_json())
    raw["resources"]["xla"]["compile_cache_dir"] = str(tmp_path / "cache")
    (tmp_path / "spec.json").write_text(json.dumps(raw))
    script = (
        "import sys, torch, warnings\n"
        "from jobs.spec import spec_from_json\n"
        "from jobs.backends.xla import XlaBackend\n"  # first: a worker imports torch_xla through it
        "import torch_xla\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    backend = XlaBackend(spec_from_json(open(sys.argv[1]).read()))\n"
        "print(*[w.message for w in caught], sep='\\n')\n"
        "x = torch.arange(6.0, device=backend.device)\n"
        "torch_xla.sync()\n"
        "print(float((x * 3).sum()), torch_xla.runtime.device_type())\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PJRT_DEVICE", "PJRT_SELECT_DEFAULT_DEVICE")}
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path / "spec.json")], check=False,
                            capture_output=True, text=True, timeout=120, cwd=Path(__file__).resolve().parents[2],
                            env=env)
    assert result.returncode == 0, result.stderr
    assert "45.0 CPU" in result.stdout, result.stdout
    assert "Defaulting to PJRT_DEVICE" not in result.stderr and "overrides" not in result.stdout
    # The CPU client writes serialized executables but cannot load them back (it warns so).
    assert "cannot load executables" in result.stdout
    assert any((tmp_path / "cache").iterdir()), "nothing was written to the persistent compile cache"


_SPMD_SCRIPT = """
import sys
import torch, torch_xla
from jobs.backends.xla import XlaBackend
from jobs.runner import run_job
from jobs.spec import spec_from_json
from jobs.trainer import StopTraining

spec = spec_from_json(open(sys.argv[1]).read())
backend, stop_at, calls = XlaBackend(spec), int(sys.argv[2]), []
try:
    run_job(spec, backend=backend, should_stop=lambda: calls.append(1) or (0 < stop_at <= len(calls)))
except StopTraining:
    print("stopped")
x = backend.to_device({"x": torch.zeros(4, 3)})["x"]
print("devices", torch_xla.runtime.global_runtime_device_count(), "world", backend.world_size)
print("sharding", torch_xla._XLAC._get_xla_sharding_spec(x))
"""


def _run_spmd(spec, stop_at: int = 0) -> str:
    """run_job with resources.xla.spmd in a fresh process (SPMD is chosen before the first device
    tensor, once per process) over 2 XLA CPU devices; returns its output."""
    path = Path(spec.output.output_dir).with_suffix(".json")
    path.write_text(spec.to_json())
    result = _on_two_devices(_SPMD_SCRIPT, path, stop_at)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def _on_two_devices(script: str, *args: object, timeout: float = 300) -> subprocess.CompletedProcess:
    """`python -c script args...` in a fresh process whose PJRT CPU client has 2 devices (the count is
    read once per process, when the runtime starts)."""
    return subprocess.run([sys.executable, "-c", script, *map(str, args)], check=False, capture_output=True,
                          text=True, timeout=timeout, cwd=Path(__file__).resolve().parents[2],
                          env=os.environ | {"PJRT_DEVICE": "CPU", "CPU_NUM_DEVICES": "2"})


def test_spmd_shards_each_batch_over_the_hosts_devices_matches_eager_cpu_and_resumes_bitwise(shared, tmp_path):
    """One process over 2 XLA CPU devices (a 2-chip TPU host): each batch is split in two along its
    batch dimension, the gradients all-reduced by XLA's partitioner; the losses are eager CPU's on
    the same global batch, and a run cut at step 5 resumes to the same bits."""
    config = _config(tmp_path / "bert_config.json")

    def spec(name: str, backend: str):
        return _pretrain_spec(shared, tmp_path / name, config, backend, num_train_steps=8)

    def spmd(name: str):
        raw = json.loads(spec(name, "xla").to_json())
        raw["resources"]["xla"]["spmd"] = True
        return parse_spec(raw)

    run_job(spec("cpu", "local"), backend=LocalBackend(torch.device("cpu")))
    out = _run_spmd(spmd("full"))
    assert "devices 2 world 1" in out, out
    assert "devices=[2" in out, out  # the batch tensor is tiled over both devices
    _assert_losses_match(dict(logged_losses(tmp_path / "cpu")), dict(logged_losses(tmp_path / "full")), 8)
    assert "stopped" in _run_spmd(spmd("cut"), stop_at=5)
    assert CheckpointStore(str(tmp_path / "cut")).latest() == 5
    _run_spmd(spmd("cut"))
    full, cut = checkpoint_weights(tmp_path / "full"), checkpoint_weights(tmp_path / "cut")
    for name in full:
        assert torch.equal(full[name], cut[name]), name
    assert dict(logged_losses(tmp_path / "full")) == dict(logged_losses(tmp_path / "cut"))


def test_spmd_refuses_a_micro_batch_that_does_not_divide_over_the_devices(shared, tmp_path):
    raw = json.loads(_pretrain_spec(shared, tmp_path / "odd", _config(tmp_path / "c.json"), "xla").to_json())
    raw["resources"]["xla"]["spmd"] = True
    raw["training"].update(train_batch_size=6, gradient_accumulation_steps=2)  # micro-batch 3 over 2 devices
    path = tmp_path / "odd.json"
    path.write_text(json.dumps(raw))
    result = _on_two_devices(_SPMD_SCRIPT, path, 0)
    assert result.returncode != 0
    assert "micro-batch of 3 does not divide over this host's 2 XLA devices" in result.stderr, result.stderr[-2000:]


def test_without_spmd_a_worker_on_a_host_of_several_devices_says_it_uses_one(shared, tmp_path):
    spec = _pretrain_spec(shared, tmp_path / "one", _config(tmp_path / "c.json"), "xla")
    path = tmp_path / "one.json"
    path.write_text(spec.to_json())
    script = ("import sys, warnings\nwarnings.simplefilter('always')\nfrom jobs.backends.xla import XlaBackend\n"
              "from jobs.spec import spec_from_json\nXlaBackend(spec_from_json(open(sys.argv[1]).read()))\n")
    result = _on_two_devices(script, path, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "trains on 1 of its host's 2 XLA devices; set xla.spmd: true" in result.stderr, result.stderr[-2000:]

"""The DeepSpeed backend end to end: real DeepSpeed (CPU accelerator, gloo) on a real Ray cluster on
127.0.0.1, two Ray Train workers, pretraining a tiny BERT on the original's sample TFRecords.

- ZeRO-2 and ZeRO-3 on 2 workers train exactly what one local process trains (per-step loss,
  learning rate, gradient norm, final weights, eval metrics).
- A ZeRO-2 run whose worker is killed mid-run is restarted by Ray Train's FailureConfig, resumes from
  its newest committed checkpoint and ends bitwise equal to an uninterrupted run.
- A checkpoint written by 2 workers resumes on 1 worker (DeepSpeed's universal checkpoint) at the
  same step and data cursor, with weights and optimizer moments restored.

Every run is made once per module (one Ray cluster, runs shared between tests): a few minutes.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest
import torch
from tiny_job import write_tiny_config

pytest.importorskip("deepspeed", reason="the deepspeed extra is not installed (pip install -e '.[deepspeed]')")
pytest.importorskip("ray.train", reason="Ray Train runs the multi-worker jobs (pip install 'ray[train]')")

from jobs.checkpoint import CheckpointStore
from jobs.runner import run_job
from jobs.spec import JobSpec, SpecError, parse_spec

pytestmark = pytest.mark.timeout(900)

NUM_STEPS = 10  # optimizer steps per run; checkpoints every 2
LOSS_TOLERANCE = 1e-5  # absolute, on a loss of ~11: see test_zero_matches_the_local_backend


# ---- the cluster and the runs ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster():
    """One local Ray cluster for the module. DS_ACCELERATOR is set before Ray starts, so every
    worker process inherits it (the backend would also set it from resources.accelerator: cpu)."""
    from cluster.local import local_ray

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DS_ACCELERATOR", "cpu")
        # 4 logical CPUs on a 2-core machine: two workers (1 CPU each) plus Ray Train's own actors.
        with local_ray(num_cpus=4):
            yield


def make_spec(shared: Path, config: Path, output_dir: Path, backend: str = "deepspeed", zero_stage: int = 2,
              num_workers: int = 2, do_eval: bool = True, **deepspeed) -> JobSpec:
    """A 10-step pretraining job of the tiny BERT on the original's sample TFRecords.

    Gradient clipping is off: LocalBackend's clip_grad_norm_ sums squares in float32, which on CPU
    comes out 5e-5 to 5e-4 relative low on this model's 1M-element embedding gradient, while
    DeepSpeed's ZeRO sums in float64 (exact to 1e-7). With clipping active that difference alone
    moves the loss by 2e-5 over 10 steps (measured; <1e-6 once the local norm is taken in float64).
    DeepSpeed's clipping setting is checked in test_config_follows_the_spec.
    """
    return parse_spec({
        "kind": "pretrain",
        "model": {"bert_config_file": str(config), "vocab_file": str(shared / "data/uncased_vocab.txt"),
                  # No dropout: the ranks' dropout masks differ from one process's.
                  "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0},
        "data": {"train_file": str(shared / "fixtures/sample_text_wwm*.tfrecord"), "shuffle_buffer": 16,
                 "eval_file": str(shared / "fixtures/sample_text_wwmTrue.tfrecord")},
        # Global batch 8 = micro 2 x accumulation 2 x 2 workers (micro 4 on 1 worker).
        "training": {"train_batch_size": 8, "gradient_accumulation_steps": 2, "num_train_steps": NUM_STEPS,
                     "num_warmup_steps": 2, "learning_rate": 1e-3, "log_every_steps": 1, "max_grad_norm": None,
                     "do_eval": do_eval, "eval_batch_size": 8, "max_eval_steps": 2},
        "output": {"output_dir": str(output_dir), "save_checkpoints_steps": 2, "keep_checkpoints": NUM_STEPS},
        "logging": {"wandb": False},
        "resources": {"backend": backend, "devices_per_host": num_workers,
                      "deepspeed": {"zero_stage": zero_stage, **deepspeed}},
    })


def _cut(source: Path, target: Path, step: int) -> None:
    """A copy of a finished run as if it had stopped right after committing `step`."""
    shutil.copytree(source, target, ignore=lambda directory, names: [
        n for n in names if (n.startswith("step-") and int(n[5:]) > step) or n in ("export", "eval_results.txt")])
    records = [json.dumps(r) for r in _records(source) if r["step"] <= step]
    (target / "metrics.jsonl").write_text("\n".join(records) + "\n")


class Runs:
    """Makes each named run once and remembers its output directory."""

    def __init__(self, base: Path, shared: Path):
        self.base = base
        self.config = write_tiny_config(base / "bert_config.json")
        self.shared = shared
        self.done: dict[str, Path] = {}

    def spec(self, output_dir: Path, **spec_args) -> JobSpec:
        return make_spec(self.shared, self.config, output_dir, **spec_args)

    def run(self, spec: JobSpec) -> dict:
        if spec.resources.backend == "local":
            return run_job(spec)
        from orchestrator.launch import run_on_ray

        return run_on_ray(spec, storage_path=str(self.base / "ray"))

    def get(self, name: str, **spec_args) -> Path:
        if name not in self.done:
            output_dir = self.base / name
            start = time.perf_counter()
            self.run(self.spec(output_dir, **spec_args))
            print(f"run {name}: {time.perf_counter() - start:.1f}s")
            self.done[name] = output_dir
        return self.done[name]

    def local(self) -> Path:
        return self.get("local", backend="local", num_workers=1)

    def zero(self, stage: int) -> Path:
        return self.get(f"zero{stage}", zero_stage=stage)

    def on_one_worker(self, stage: int, cut_at: int) -> Path:
        """zero{stage} as if stopped after committing step `cut_at`, resumed to the end by 1 worker.
        Without eval at the end: the evaluation forward happens to leave ZeRO-3's parameters gathered,
        which would hide
        what an export after training alone sees (test_export_holds_the_full_trained_weights)."""
        name = f"zero{stage}-on-one"
        if name not in self.done:
            _cut(self.zero(stage), self.base / name, cut_at)
            self.get(name, zero_stage=stage, num_workers=1, do_eval=False)
        return self.done[name]


@pytest.fixture(scope="module")
def runs(cluster, shared, tmp_path_factory) -> Runs:
    return Runs(tmp_path_factory.mktemp("deepspeed"), shared)


# ---- reading a run --------------------------------------------------------------------------------


def _records(output_dir: Path) -> list[dict]:
    """metrics.jsonl's records (a line still being written by a live run is left out)."""
    path = output_dir / "metrics.jsonl"
    records = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def _train(output_dir: Path, key: str = "train/loss") -> dict[int, float]:
    return {r["step"]: r[key] for r in _records(output_dir) if key in r}


def _checkpoint(output_dir: Path, step: int) -> Path:
    return output_dir / "checkpoints" / f"step-{step:08d}"


def _ds_weights(output_dir: Path, step: int = NUM_STEPS) -> dict[str, torch.Tensor]:
    """The full fp32 weights of a DeepSpeed checkpoint, consolidated from every rank's shards."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    return get_fp32_state_dict_from_zero_checkpoint(str(_checkpoint(output_dir, step)), tag="ds")


def _exported(output_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(output_dir / "export" / "model.safetensors"))


def _eval_results(output_dir: Path) -> dict[str, float]:
    lines = (output_dir / "eval_results.txt").read_text().splitlines()
    return {key: float(value) for key, value in (line.split(" = ") for line in lines)}


# ---- the generated DeepSpeed config ---------------------------------------------------------------


def test_config_follows_the_spec(shared, tmp_path):
    from jobs.backends.deepspeed import deepspeed_config, ineffective_settings

    spec = make_spec(shared, write_tiny_config(tmp_path / "c.json"), tmp_path, zero_stage=3, offload_optimizer=True,
                     offload_parameters=True, overlap_comm=False,
                     config_override={"zero_optimization": {"stage3_max_live_parameters": 10**6},
                                      "fp16": {"initial_scale_power": 12}})
    spec.training.max_grad_norm = 0.5
    config = deepspeed_config(spec, on_cpu=True)
    batch = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps")
    assert [config[key] for key in batch] == [8, 2, 2]
    assert config["gradient_clipping"] == 0.5
    assert config["zero_optimization"] == {
        "stage": 3, "overlap_comm": False, "offload_optimizer": {"device": "cpu", "pin_memory": False},
        "offload_param": {"device": "cpu", "pin_memory": False}, "stage3_max_live_parameters": 10**6}
    assert config["fp16"] == {"enabled": False, "loss_scale": 0, "initial_scale_power": 12}  # merged, not replaced
    assert ineffective_settings(spec) == []

    spec = make_spec(shared, tmp_path / "c.json", tmp_path, zero_stage=2, offload_parameters=True)
    assert "offload_param" not in deepspeed_config(spec, on_cpu=True)["zero_optimization"]
    assert [m.split(" does nothing")[0] for m in ineffective_settings(spec)] == \
        ["resources.deepspeed.offload_parameters"]
    for override, field in [({"train_batch_size": 16}, "train_batch_size.*training.train_batch_size"),
                            ({"zero_optimization": {"stage": 1}}, "zero_optimization.stage.*deepspeed.zero_stage"),
                            ({"bf16": {"enabled": True}}, "bf16.enabled.*training.precision")]:
        spec = make_spec(shared, tmp_path / "c.json", tmp_path, config_override=override)
        with pytest.raises(SpecError, match=f"config_override.{field}"):
            deepspeed_config(spec, on_cpu=True)


# ---- ZeRO on 2 workers = one local process ---------------------------------------------------------


@pytest.mark.parametrize("stage", [2, 3])
def test_zero_matches_the_local_backend(runs, stage):
    """Same global batch, same math: the 2-worker ZeRO run differs from one process only in the
    order gradients are summed (reduce-scatter over 2 ranks vs one sum), a few float32 ulps of a
    ~11 loss, so 1e-5 absolute; measured <2e-6 over the 10 steps (clipping off: see make_spec)."""
    local, ds = runs.local(), runs.zero(stage)
    expected, got = _train(local), _train(ds)
    assert sorted(got) == list(range(1, NUM_STEPS + 1))
    for step, loss in expected.items():
        assert abs(got[step] - loss) <= LOSS_TOLERANCE, (step, got[step], loss)
    # The LR schedule steps exactly once per optimizer step; the norm is the global one (over both
    # ranks' partitions): a norm of one rank's half, or of gradients divided twice, would be far off.
    assert _train(ds, "train/learning_rate") == _train(local, "train/learning_rate")
    norms, local_norms = _train(ds, "train/grad_norm"), _train(local, "train/grad_norm")
    for step, norm in local_norms.items():
        # DeepSpeed sums squares in float64; torch's float32 norm on CPU comes out up to 5e-4 low here.
        assert norms[step] == pytest.approx(norm, rel=1e-3), step

    weights, local_weights = _ds_weights(ds), CheckpointStore(str(local)).load()["backend"]["model"]
    assert weights.keys() == local_weights.keys()
    for name, tensor in weights.items():
        torch.testing.assert_close(tensor, local_weights[name], atol=1e-5, rtol=0, msg=name)
    # The final eval (under ZeRO-3: the original module's forward, gathering partitions on every rank).
    for key, value in _eval_results(local).items():
        assert _eval_results(ds)[key] == pytest.approx(value, abs=1e-4), key


@pytest.mark.parametrize("stage", [2, 3])
def test_zero_partitions_the_optimizer_and_zero3_the_parameters(runs, stage):
    """Each rank's shard holds half of the fp32 master weights; under ZeRO-3 the module itself
    (built before deepspeed.initialize) holds only partitions, not full tensors."""
    directory = _checkpoint(runs.zero(stage), NUM_STEPS) / "ds"
    total = sum(t.numel() for t in _ds_weights(runs.zero(stage)).values())
    key = "fp32_flat_groups" if stage == 3 else "single_partition_of_fp32_groups"
    sizes = []
    for rank in range(2):
        shard = torch.load(directory / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt", weights_only=False)
        sizes.append(sum(t.numel() for t in shard["optimizer_state_dict"][key]))
    assert sum(sizes) >= total and max(sizes) <= total / 2 + 1024, (sizes, total)
    if stage == 3:
        for rank in range(2):
            module = torch.load(directory / f"zero_pp_rank_{rank}_mp_rank_00_model_states.pt",
                                weights_only=False)["module"]
            assert module and all(t.numel() == 0 for t in module.values())
    else:
        module = torch.load(directory / "mp_rank_00_model_states.pt", weights_only=False)["module"]
        assert module["bert.embeddings.word_embeddings.weight"].shape == (30522, 32)


@pytest.mark.parametrize("stage", [
    2,
    3,
])
def test_export_holds_the_full_trained_weights(runs, stage):
    """What output_dir/export holds after training: the final weights, full size, bit for bit."""
    output_dir = runs.zero(2) if stage == 2 else runs.on_one_worker(3, cut_at=4)
    exported, weights = _exported(output_dir), _ds_weights(output_dir)
    for name, tensor in weights.items():
        assert exported[name].shape == tensor.shape, name
        assert torch.equal(exported[name], tensor), name


def test_zero3_gathered_model_exports_the_full_weights(runs):
    """The export path the tasks use under ZeRO-3, run as they run it: every
    rank enters backend.gathered_model(model), rank 0 writes the HF directory; and full_state_dict()."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    output_dir = runs.base / "zero3-gathered"
    spec = runs.spec(output_dir, zero_stage=3, do_eval=False)
    spec.training.num_train_steps = 2

    def worker(config: dict) -> None:
        from jobs.backends import make_backend
        from jobs.spec import spec_from_json
        from models.checkpoints import write_hf_directory

        spec = spec_from_json(config["spec"])
        backend = make_backend("deepspeed", spec)
        try:
            run_job(spec, backend=backend)
            with backend.gathered_model(backend.unwrapped()) as full:  # collective: every rank gathers
                if backend.is_main:
                    write_hf_directory(full, f"{spec.output.output_dir}/export-gathered")
            state = backend.full_state_dict()  # collective too
            if backend.is_main:
                torch.save(state, f"{spec.output.output_dir}/full_state_dict.pt")
        finally:
            backend.shutdown()

    TorchTrainer(worker, train_loop_config={"spec": spec.to_json()},
                 scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 1}),
                 torch_config=TorchConfig(backend="gloo"),
                 run_config=RunConfig(name="zero3-gathered", storage_path=str(runs.base / "ray"))).fit()

    from safetensors.torch import load_file

    weights = _ds_weights(output_dir, step=2)
    exported = load_file(str(output_dir / "export-gathered" / "model.safetensors"))
    state = torch.load(output_dir / "full_state_dict.pt", weights_only=True)
    plain = _exported(output_dir)  # what the task itself exported, inside gathered_model
    for name, tensor in weights.items():
        assert torch.equal(exported[name], tensor), name
        assert torch.equal(state[name], tensor), name
        assert torch.equal(plain[name], tensor), name


# ---- interrupt, restart, resume ---------------------------------------------------------------------


def _ray_train_worker_pids() -> list[int]:
    # Ray's GCS actor table (the public ray.util.state API needs the dashboard, which local_ray leaves off).
    import ray

    return [actor["Pid"] for actor in ray._private.state.actors().values()
            if actor["ActorClassName"] == "RayTrainWorker" and actor["State"] == "ALIVE" and actor.get("Pid")]


def test_killed_worker_restarts_and_resumes_bitwise(runs):
    """SIGKILL one of the two workers once step >= 4 is logged (a checkpoint of step 2 or later is
    committed); Ray Train restarts the group, every worker resumes from the newest committed
    checkpoint, and the run ends bitwise equal to the uninterrupted one (weights, every loss)."""
    reference = runs.zero(2)
    output_dir = runs.base / "killed"
    spec = runs.spec(output_dir, zero_stage=2)
    outcome: dict = {}

    def train():
        try:
            outcome["metrics"] = runs.run(spec)
        except BaseException as err:  # noqa: BLE001 (a thread boundary: re-raised in the test's thread)
            outcome["error"] = err

    thread = threading.Thread(target=train)
    thread.start()
    killed = None
    while thread.is_alive() and killed is None:
        steps = _train(output_dir)
        if steps and max(steps) >= 4:
            pids = _ray_train_worker_pids()
            assert len(pids) == 2, pids
            killed, seen = pids[0], max(steps)
            os.kill(killed, signal.SIGKILL)
        time.sleep(0.02)
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    assert killed is not None, "the run ended before a worker could be killed"
    assert seen < NUM_STEPS, "the worker was killed after the last step; nothing was resumed"
    assert killed not in _ray_train_worker_pids()

    assert CheckpointStore(str(output_dir)).latest() == NUM_STEPS
    assert _train(output_dir) == _train(reference)  # exact: every step, before and after the restart
    a, b = _ds_weights(reference), _ds_weights(output_dir)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


# ---- 2 workers -> 1 worker -----------------------------------------------------------------------------


@pytest.mark.parametrize("stage", [2, 3])
def test_two_worker_checkpoint_resumes_on_one_worker(runs, stage):
    """A ZeRO checkpoint of 2 workers, resumed by 1 worker through DeepSpeed's universal
    checkpoint: the run continues at the checkpoint's step with its data cursor (world-size
    independent, so the single worker reads exactly the records the two would have), and with the
    fp32 master weights, Adam moments and LR schedule restored. The continuation is then the same
    math as the 2-worker run's, up to the order of gradient sums (as in the local comparison):
    losses within 1e-5 (measured ~1e-6). Weights within 1e-5 as well, where optimizer moments
    reset to zero would move them by ~lr = 1e-3 on the first step (measured: 1e-7)."""
    reference, cut_at = runs.zero(stage), 4
    output_dir = runs.on_one_worker(stage, cut_at)

    resumed = CheckpointStore(str(output_dir))
    assert resumed.load(cut_at)["backend"]["deepspeed"]["world_size"] == 2  # the 2-worker checkpoint, kept
    final = resumed.load(NUM_STEPS)
    assert final["backend"]["deepspeed"]["world_size"] == 1
    # Same data: after the last step the cursor is the 2-worker run's.
    assert final["data"] == CheckpointStore(str(reference)).load(NUM_STEPS)["data"]
    expected, got = _train(reference), _train(output_dir)
    assert sorted(got) == list(range(1, NUM_STEPS + 1))  # steps 1-4 from the cut run, 5-10 by the 1-worker run
    for step in range(cut_at + 1, NUM_STEPS + 1):
        assert abs(got[step] - expected[step]) <= LOSS_TOLERANCE, (step, got[step], expected[step])
    assert _train(output_dir, "train/learning_rate") == _train(reference, "train/learning_rate")
    a, b = _ds_weights(reference), _ds_weights(output_dir)
    for name in a:
        torch.testing.assert_close(b[name], a[name], atol=1e-5, rtol=0, msg=name)

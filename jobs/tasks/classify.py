"""classify: sentence and sentence-pair classification (and STS-B regression), as run_classifier.py.

Outputs like the original: `eval_results.txt` (eval_accuracy, eval_loss, global_step and the
task's F1 / MCC / Pearson-Spearman) and `test_results.tsv` (class probabilities per example).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from jobs.backends import LocalBackend
from jobs.data.dataset import ArrayLoader
from jobs.data.glue import (
    SHARED_LAYOUTS,
    InputExample,
    TableFormat,
    TaskSpec,
    compute_metrics,
    convert_examples_to_arrays,
    get_task,
    read_examples,
    read_task_split,
    split_holdout,
)
from jobs.data.pretraining import DataError
from jobs.results import write_eval_results, write_test_results
from jobs.spec import JobSpec, SpecError, TableSpec
from jobs.tasks.base import (
    build_model,
    build_tokenizer,
    dynamic_padding_mask,
    export_model,
    resolve_config,
    seed_everything,
)
from jobs.trainer import StepFn, Trainer
from models.bert import BertForSequenceClassification


def table_format(spec: JobSpec) -> TableFormat | None:
    layout = spec.data.layout
    if layout is None:
        return None
    if isinstance(layout, str):
        if layout not in SHARED_LAYOUTS:
            raise SpecError(f"data.layout {layout!r} is not a preset; use one of {sorted(SHARED_LAYOUTS)} "
                            "or give the columns")
        return SHARED_LAYOUTS[layout]
    assert isinstance(layout, TableSpec)
    return TableFormat(**layout.model_dump())


def load_splits(spec: JobSpec, task: TaskSpec) -> dict[str, list[InputExample]]:
    """train / dev / test examples from the spec's files, or a GLUE-layout data_dir.

    Raises:
        SpecError: naming the data key and the file problem.
    """
    data, fmt = spec.data, table_format(spec)
    splits: dict[str, list[InputExample]] = {}

    def read(key: str, url: str | None, split: str) -> list[InputExample] | None:
        try:
            if url:
                return read_examples(url, task, fmt, split)
            if data.data_dir:
                return read_task_split(data.data_dir, task, split)
        except DataError as err:
            raise SpecError(f"data.{key}: {err}") from None
        return None

    training = spec.training
    if training.do_train or data.holdout_fraction:
        splits["train"] = read("train_file", data.train_file, "train") or []
        if not splits["train"]:
            raise SpecError("data.train_file: a classify job with do_train needs training data (train_file or data_dir)")
    if data.holdout_fraction:
        splits["train"], splits["dev"] = split_holdout(splits["train"], data.holdout_fraction, training.seed)
    elif training.do_eval:
        dev = read("eval_file", data.eval_file, "dev")
        if dev is None:
            raise SpecError("data.eval_file: do_eval needs eval_file, data_dir or holdout_fraction")
        splits["dev"] = dev
    if training.do_predict:
        test = read("predict_file", data.predict_file, "test")
        if test is None:
            raise SpecError("data.predict_file: do_predict needs predict_file or data_dir")
        splits["test"] = test
    if data.max_eval_examples and "dev" in splits:
        splits["dev"] = splits["dev"][:data.max_eval_examples]
    return splits


def _inputs(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return batch["input_ids"], batch["segment_ids"], batch["input_mask"]


def step_fn(model: BertForSequenceClassification, batch: dict[str, torch.Tensor], _step) -> tuple:
    return model(*_inputs(batch), labels=batch["label_ids"]).loss, {}


def predict(model: BertForSequenceClassification, arrays: dict[str, np.ndarray], batch_size: int,
            trim_by: str | None = None) -> np.ndarray:
    """Logits [N, C] (or [N] for regression) over all examples, in order (trim_by: see ArrayLoader).

    With trim_by, examples are batched shortest first (and the logits put back in order), so each
    batch is cut to lengths close to its own: each example's logits are the same either way."""
    order = np.argsort(arrays[trim_by].sum(axis=1), kind="stable") if trim_by else np.arange(len(arrays["input_ids"]))
    outputs = []
    on = next(model.parameters()).device
    with torch.no_grad():  # not inference_mode: XLA cannot take inference tensors
        for batch in ArrayLoader({k: v[order] for k, v in arrays.items()}, batch_size, shuffle=False, repeat=False,
                                 drop_last=False, trim_by=trim_by):
            batch = {k: v.to(on) for k, v in batch.items()}
            outputs.append(model(*_inputs(batch)).logits.float().cpu())
    logits = torch.cat(outputs).numpy()
    out = np.empty_like(logits)
    out[order] = logits
    return out


def eval_metrics(task: TaskSpec, logits: np.ndarray, labels: np.ndarray, global_step: int) -> dict[str, float]:
    """The task's metrics plus eval_loss (mean per-example loss, as the original) and global_step."""
    logits_t, labels_t = torch.from_numpy(logits), torch.from_numpy(labels)
    loss = F.mse_loss(logits_t, labels_t.float()) if task.is_regression else F.cross_entropy(logits_t, labels_t)
    return {**compute_metrics(task, logits, labels), "eval_loss": float(loss), "global_step": global_step}


def run(spec: JobSpec, should_stop: Callable[[], bool] | None = None, backend: LocalBackend | None = None,
        make_step_fn: Callable[..., StepFn] | None = None) -> dict:
    """Fine-tunes (do_train), evaluates (do_eval) and predicts (do_predict); returns the eval metrics.

    Args:
        make_step_fn: builds the training loss from (model, task); distillation passes its own.
    """
    backend = backend or LocalBackend()
    try:
        task = get_task(spec.data.task_name or "")
    except DataError as err:
        raise SpecError(f"data.task_name: {err}") from None
    training = spec.training
    seed_everything(training.seed, training.deterministic)
    config = resolve_config(spec)
    tokenizer = build_tokenizer(spec, config)
    splits = load_splits(spec, task)
    num_labels = 1 if task.is_regression else len(task.label_list)
    model = build_model(spec, config, "classification", num_labels, on=backend.device)

    def arrays(split: str) -> dict[str, np.ndarray]:
        return convert_examples_to_arrays(splits[split], task.label_list, tokenizer, spec.data.max_seq_length,
                                          task.is_regression)

    dev = arrays("dev") if "dev" in splits else None
    trim = dynamic_padding_mask(spec)

    def eval_fn(m, step: int) -> dict[str, float]:
        assert dev is not None
        return eval_metrics(task, predict(m, dev, training.eval_batch_size, trim), dev["label_ids"], step)

    metrics: dict = {}
    if training.do_train:
        train = arrays("train")
        loader = ArrayLoader(train, spec.batch[0], seed=training.seed, rank=backend.rank,
                             world_size=backend.world_size, trim_by=trim)
        num_steps = training.num_train_steps or int(len(splits["train"]) / training.train_batch_size
                                                    * training.num_train_epochs)
        warmup = training.num_warmup_steps if training.num_warmup_steps is not None else \
            int(num_steps * training.warmup_proportion)
        step = make_step_fn(model, task) if make_step_fn else step_fn
        trainer = Trainer(spec, model, loader, step, num_steps, warmup,
                          eval_fn=eval_fn if dev is not None else None, should_stop=should_stop, backend=backend)
        trainer.restore()
        trainer.fit()
        if dev is not None and training.do_eval:
            metrics = trainer.evaluate()
        trainer.logger.finish()
    elif dev is not None and training.do_eval:
        model.eval()
        metrics = eval_fn(model, 0)
    model.eval()
    with backend.gathered_model(model) as full:  # every rank enters: ZeRO-3 gathers the weights
        if backend.is_main:
            if metrics:
                write_eval_results(spec.output.output_dir, metrics)
            if "test" in splits:
                logits = predict(full, arrays("test"), training.predict_batch_size, trim)
                probabilities = (logits[:, None] if task.is_regression
                                 else torch.softmax(torch.from_numpy(logits), -1).numpy())
                write_test_results(spec.output.output_dir, probabilities)
            export_model(spec, full, tokenizer)
    return metrics

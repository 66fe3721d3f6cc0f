"""pretrain: masked-LM + next-sentence pretraining on TFRecords, as the original run_pretraining.py.

Eval reports what the original's metric_fn reports: masked_lm_accuracy and masked_lm_loss
(weighted by masked_lm_weights), next_sentence_accuracy, next_sentence_loss, plus loss and
global_step, into eval_results.txt.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from jobs.backends import LocalBackend
from jobs.data.dataset import (
    DynamicMasker,
    PretrainingBatches,
    RecordStream,
    ResumableLoader,
    pretraining_features,
)
from jobs.data.pretraining import PretrainingDataConfig
from jobs.results import write_eval_results
from jobs.spec import JobSpec, SpecError
from jobs.tasks.base import (
    build_model,
    build_tokenizer,
    export_model,
    resolve_config,
    seed_everything,
)
from jobs.trainer import StepContext, Trainer
from models.bert import BertForPreTraining


def forward(model: BertForPreTraining, batch: dict[str, torch.Tensor]):
    """The model on one batch of the original's features."""
    return model(batch["input_ids"], batch["segment_ids"], batch["input_mask"], batch["masked_lm_positions"],
                 batch["masked_lm_ids"], batch["masked_lm_weights"], batch["next_sentence_labels"])


def step_fn(model: BertForPreTraining, batch: dict[str, torch.Tensor],
            step: StepContext) -> tuple[torch.Tensor, dict[str, float]]:
    """The original's loss of the whole global batch, split over micro-batches and workers: the
    masked-LM numerator of this micro-batch over the weight sum of the whole global batch (times
    the number of micro-batches and workers, since the trainer and DDP average those), plus the
    next-sentence mean."""
    out = forward(model, {**batch, "masked_lm_ids": None})
    ids = batch["masked_lm_ids"].reshape(-1, 1).long()
    weights = batch["masked_lm_weights"].reshape(-1).float()
    numerator = (weights * -out.masked_lm_log_probs.gather(1, ids).squeeze(1)).sum()
    local = sum(b["masked_lm_weights"].float().sum() for b in step.batches)
    denominator = step.sum_over_workers(torch.as_tensor(local)) + 1e-5
    return numerator / denominator * (len(step.batches) * step.world_size) + out.next_sentence_loss, {}


def evaluate(model: BertForPreTraining, batches, global_step: int, max_steps: int | None = None) -> dict[str, float]:
    """The original's metric_fn, accumulated over the eval set."""
    sums = torch.zeros(6, dtype=torch.float64)  # mlm correct, mlm loss, mlm weight, nsp correct, nsp loss, n
    total_loss, num_batches = 0.0, 0
    for index, batch in enumerate(batches):
        if max_steps is not None and index >= max_steps:
            break
        device = next(model.parameters()).device
        batch = {k: v.to(device) for k, v in batch.items() if isinstance(v, torch.Tensor)}
        out = forward(model, batch)
        weights = batch["masked_lm_weights"].reshape(-1).double()
        ids = batch["masked_lm_ids"].reshape(-1)
        log_probs = out.masked_lm_log_probs.double()
        labels = batch["next_sentence_labels"].reshape(-1)
        sums += torch.stack([
            ((log_probs.argmax(-1) == ids).double() * weights).sum(),
            (-log_probs.gather(1, ids[:, None]).squeeze(1) * weights).sum(),
            weights.sum(),
            (out.next_sentence_log_probs.argmax(-1) == labels).double().sum(),
            -out.next_sentence_log_probs.double().gather(1, labels[:, None]).sum(),
            torch.tensor(float(len(labels)), dtype=torch.float64, device=log_probs.device)]).cpu()
        total_loss += float(out.loss)
        num_batches += 1
    if num_batches == 0:
        raise SpecError("data.eval_file: the eval files hold no records")
    correct, mlm_loss, weight, nsp_correct, nsp_loss, n = sums.tolist()
    return {"masked_lm_accuracy": correct / weight, "masked_lm_loss": mlm_loss / weight,
            "next_sentence_accuracy": nsp_correct / n, "next_sentence_loss": nsp_loss / n,
            "loss": total_loss / num_batches, "global_step": global_step}


def run(spec: JobSpec, should_stop: Callable[[], bool] | None = None, backend: LocalBackend | None = None) -> dict:
    """Pretrains (do_train) and evaluates (do_eval); returns the eval metrics."""
    backend = backend or LocalBackend()
    data, training = spec.data, spec.training
    if not data.train_file and training.do_train:
        raise SpecError("data.train_file: a pretrain job needs TFRecords (make them with `bertfleet data "
                        "create-pretraining`)")
    if training.num_train_steps is None and training.do_train:
        raise SpecError("training.num_train_steps: pretraining streams endlessly; say how many steps to train")
    seed_everything(training.seed, training.deterministic)
    config = resolve_config(spec)
    model = build_model(spec, config, "pretraining", on=backend.device)
    features = pretraining_features(data.max_seq_length, data.max_predictions_per_seq)
    masker = None
    if data.dynamic_masking:
        tokenizer = build_tokenizer(spec, config)
        masker = DynamicMasker(tokenizer.vocab, PretrainingDataConfig(
            max_seq_length=data.max_seq_length, max_predictions_per_seq=data.max_predictions_per_seq,
            masked_lm_prob=data.masked_lm_prob), seed=training.seed)
    eval_url = data.eval_file or data.train_file

    def eval_batches():
        stream = RecordStream(eval_url, seed=training.seed, shuffle_files=False)
        # Every worker evaluates the whole eval set (identical metrics, no gather needed).
        return PretrainingBatches(stream, training.eval_batch_size, 0, 1, features, repeat=False)

    def eval_fn(m, step):
        return evaluate(m, eval_batches(), step, training.max_eval_steps)

    metrics: dict = {}
    if training.do_train:
        stream = RecordStream(data.train_file, seed=training.seed, shuffle_buffer=data.shuffle_buffer)
        loader = ResumableLoader(PretrainingBatches(stream, spec.batch[0], backend.rank,
                                                    backend.world_size, features, masker=masker),
                                 num_workers=data.num_workers)
        num_steps = training.num_train_steps or 0
        warmup = training.num_warmup_steps if training.num_warmup_steps is not None else \
            int(num_steps * training.warmup_proportion)
        trainer = Trainer(spec, model, loader, step_fn, num_steps, warmup, eval_fn=eval_fn, should_stop=should_stop,
                          backend=backend)
        trainer.restore()
        trainer.fit()
        if training.do_eval:
            metrics = trainer.evaluate()
        trainer.logger.finish()
        global_step = trainer.global_step
    elif training.do_eval:
        model.eval()
        with torch.no_grad():
            metrics = eval_fn(model, 0)
        global_step = 0
    if metrics:
        metrics["global_step"] = global_step
    with backend.gathered_model(model) as full:  # every rank enters: ZeRO-3 gathers the weights
        if backend.is_main:
            if metrics:
                write_eval_results(spec.output.output_dir, metrics)
            export_model(spec, full, build_tokenizer(spec, config) if spec.model.vocab_file else None)
    return metrics


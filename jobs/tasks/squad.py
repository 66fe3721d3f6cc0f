"""squad: SQuAD 1.1 / 2.0 question answering, as run_squad.py, evaluated as the official scripts.

Writes predictions.json, nbest_predictions.json (and null_odds.json for 2.0) exactly as the
original, and eval_results.txt with the official script's numbers.

Training, like the original, uses one answer per question: a file with several answers per
question (a dev set) trains on each question's first answer. `data.holdout_fraction` splits the
questions of train_file, seeded, into a training part and a held-out dev part (all answers kept).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
from collections.abc import Callable
from typing import Any

import torch

from jobs.backends import LocalBackend
from jobs.data.dataset import ArrayLoader
from jobs.data.squad import (
    SquadError,
    SquadResult,
    convert_examples_to_features,
    evaluate_v1,
    evaluate_v2,
    features_to_arrays,
    load_squad_json,
    read_squad_examples,
    write_prediction_files,
    write_predictions,
)
from jobs.results import write_eval_results, write_text
from jobs.spec import JobSpec, SpecError
from jobs.tasks.base import (
    build_model,
    build_tokenizer,
    dynamic_padding_mask,
    export_model,
    resolve_config,
    seed_everything,
)
from jobs.trainer import Trainer

log = logging.getLogger("bertfleet")


def _split_questions(dataset: dict[str, Any], fraction: float, seed: int) -> tuple[dict, dict]:
    """(train, dev) copies of a SQuAD dataset: each question lands in dev when the hash of
    (seed, its id) falls in the lowest `fraction`; train keeps only the first answer."""
    train, dev = copy.deepcopy(dataset), copy.deepcopy(dataset)

    def held_out(qid: str) -> bool:
        digest = hashlib.blake2b(f"{seed}:{qid}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big") / 2 ** 64 < fraction

    for part, keep_dev in ((train, False), (dev, True)):
        for article in part["data"]:
            for paragraph in article["paragraphs"]:
                paragraph["qas"] = [q for q in paragraph["qas"] if held_out(q["id"]) == keep_dev]
    _first_answers(train)
    return train, dev


def _first_answers(dataset: dict[str, Any]) -> None:
    for article in dataset["data"]:
        for paragraph in article["paragraphs"]:
            for question in paragraph["qas"]:
                question["answers"] = question.get("answers", [])[:1]


def step_fn(model, batch: dict[str, torch.Tensor], _step) -> tuple[torch.Tensor, dict[str, float]]:
    return model(batch["input_ids"], batch["segment_ids"], batch["input_mask"], batch["start_positions"],
                 batch["end_positions"]).loss, {}


def predict_and_evaluate(spec: JobSpec, model, tokenizer, dataset_url: str, dataset: dict[str, Any],
                         global_step: int) -> dict[str, float]:
    """Predicts every question of `dataset_url`, writes the prediction files, returns official metrics."""
    squad, data = spec.squad, spec.data
    examples, _ = read_squad_examples(dataset_url, is_training=False,
                                      version_2_with_negative=squad.version_2_with_negative)
    features = convert_examples_to_features(examples, tokenizer, data.max_seq_length, data.doc_stride,
                                            data.max_query_length, is_training=False)
    arrays = features_to_arrays(features)
    unique_ids = arrays.pop("unique_ids")
    results = []
    model.eval()
    on = next(model.parameters()).device
    with torch.no_grad():
        loader = ArrayLoader(arrays, spec.training.predict_batch_size, shuffle=False, repeat=False, drop_last=False)
        offset = 0
        for batch in loader:
            batch = {k: v.to(on) for k, v in batch.items()}
            logits = model(batch["input_ids"], batch["segment_ids"], batch["input_mask"]).logits.float().cpu().numpy()
            for row in range(len(logits)):
                results.append(SquadResult(int(unique_ids[offset + row]), logits[row, :, 0].tolist(),
                                           logits[row, :, 1].tolist()))
            offset += len(logits)
    predictions, nbest, null_odds = write_predictions(
        examples, features, results, squad.n_best_size, squad.max_answer_length, spec.model.do_lower_case,
        squad.version_2_with_negative, squad.null_score_diff_threshold)
    write_prediction_files(spec.output.output_dir, predictions, nbest,
                           null_odds if squad.version_2_with_negative else None)
    if squad.version_2_with_negative:
        metrics = dict(evaluate_v2(dataset, predictions, null_odds))
    else:
        metrics = dict(evaluate_v1(dataset, predictions))
    return {**metrics, "global_step": global_step}


def run(spec: JobSpec, should_stop: Callable[[], bool] | None = None, backend: LocalBackend | None = None) -> dict:
    """Fine-tunes on train_file (do_train), then predicts and evaluates predict_file (or the held-out
    questions); returns the official metrics."""
    backend = backend or LocalBackend()
    data, training = spec.data, spec.training
    seed_everything(training.seed, training.deterministic)
    config = resolve_config(spec)
    tokenizer = build_tokenizer(spec, config)
    model = build_model(spec, config, "question_answering", on=backend.device)
    out = spec.output.output_dir.rstrip("/")
    try:
        if data.holdout_fraction:
            if not data.train_file:
                raise SpecError("data.train_file: holdout_fraction splits train_file, which is missing")
            train_json, dev_json = _split_questions(load_squad_json(data.train_file), data.holdout_fraction,
                                                    training.seed)
            train_url, dev_url = f"{out}/data/train.json", f"{out}/data/dev.json"
            write_text(train_url, json.dumps(train_json))
            write_text(dev_url, json.dumps(dev_json))
        else:
            train_url, dev_url = data.train_file, data.predict_file or data.eval_file
            if train_url and training.do_train:
                train_json = load_squad_json(train_url)
                _first_answers(train_json)
                train_url = f"{out}/data/train.json"
                write_text(train_url, json.dumps(train_json))
            dev_json = load_squad_json(dev_url) if dev_url else None
        if training.do_train:
            if not train_url:
                raise SpecError("data.train_file: a squad job with do_train needs a SQuAD JSON file")
            examples, report = read_squad_examples(train_url, is_training=True,
                                                   version_2_with_negative=spec.squad.version_2_with_negative)
            if report.num_unalignable:
                log.warning("%d training questions dropped: their answer text is not in the context at "
                            "answer_start (as the original): %s", report.num_unalignable,
                            report.unalignable_qas_ids[:10])
            features = convert_examples_to_features(examples, tokenizer, data.max_seq_length, data.doc_stride,
                                                    data.max_query_length, is_training=True)
            arrays = features_to_arrays(features)
            arrays.pop("unique_ids")
            # training only: prediction keeps max_seq_length, since the original's n-best search
            # ranks every position's logit, padding included
            loader = ArrayLoader(arrays, spec.batch[0], seed=training.seed, rank=backend.rank,
                                 world_size=backend.world_size, trim_by=dynamic_padding_mask(spec))
            num_steps = training.num_train_steps or int(len(features) / training.train_batch_size
                                                        * training.num_train_epochs)
            warmup = training.num_warmup_steps if training.num_warmup_steps is not None else \
                int(num_steps * training.warmup_proportion)
            trainer = Trainer(spec, model, loader, step_fn, num_steps, warmup, should_stop=should_stop,
                              backend=backend)
            trainer.restore()
            trainer.fit()
            trainer.logger.log({"train/num_unalignable_answers": report.num_unalignable}, trainer.global_step)
            trainer.logger.finish()
            global_step = trainer.global_step
        else:
            global_step = 0
        metrics: dict = {}
        # Prediction, the official evaluation and the export run on the main worker only, with the
        # full weights (every rank enters the block: ZeRO-3 gathers them).
        with backend.gathered_model(model) as full:
            if backend.is_main and (training.do_eval or training.do_predict) and dev_url and dev_json is not None:
                metrics = predict_and_evaluate(spec, full, tokenizer, dev_url, dev_json, global_step)
                write_eval_results(out, metrics)
            if backend.is_main:
                export_model(spec, full, tokenizer)
    except SquadError as err:
        raise SpecError(f"data: {err}") from None
    return metrics


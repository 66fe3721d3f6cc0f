"""The job kinds end to end through `run_job`: classify (GLUE layouts, regression, predict), distill,
squad (v2.0 with the official evaluation), features (the original's JSON), and bad input that fails
before training starts."""

from __future__ import annotations

import json

import numpy as np
import pytest
from tiny_job import write_tiny_config

from jobs.runner import run_job
from jobs.spec import SpecError, parse_spec
from models.config import BertConfig


@pytest.fixture()
def tiny_config(tmp_path):
    return write_tiny_config(tmp_path / "bert_config.json")


def _spec(kind, tmp_path, **sections):
    raw = {"kind": kind, "output": {"output_dir": str(tmp_path / "run")}, "logging": {"wandb": False}}
    for key, value in sections.items():
        raw[key] = value
    return parse_spec(raw)


def test_classify_fine_tunes_the_real_model_on_sst2(minilm_dir, shared, tmp_path):
    spec = _spec("classify", tmp_path,
                 model={"init_checkpoint": str(minilm_dir)},
                 data={"task_name": "sst-2", "train_file": str(shared / "data/sst2_train.tsv"),
                       "eval_file": str(shared / "data/sst2_dev.tsv"), "predict_file": str(shared / "data/sst2_dev.tsv"),
                       "layout": "sst2", "max_seq_length": 40, "max_eval_examples": 200},
                 training={"train_batch_size": 16, "num_train_steps": 40, "learning_rate": 5e-5,
                           "do_predict": True, "eval_batch_size": 100, "predict_batch_size": 200})
    metrics = run_job(spec)
    assert metrics["global_step"] == 40
    assert metrics["eval_accuracy"] > 0.65, metrics  # chance is 0.5 (the dev set is balanced)
    lines = (tmp_path / "run/test_results.tsv").read_text().splitlines()
    assert len(lines) == 1821
    probabilities = np.array([[float(x) for x in line.split("\t")] for line in lines])
    np.testing.assert_allclose(probabilities.sum(1), 1.0, atol=1e-5)
    results = dict(line.split(" = ") for line in (tmp_path / "run/eval_results.txt").read_text().splitlines())
    assert set(results) == {"eval_accuracy", "eval_loss", "global_step"}
    assert (tmp_path / "run/export/model.safetensors").is_file() and (tmp_path / "run/export/vocab.txt").is_file()


def test_regression_and_mcc_tasks(tiny_config, shared, tmp_path):
    rows = [f"{i}\tgenre\tfile\t{i}\t0\t0\tx\tsentence number {i}\tother sentence {i % 7}\t{(i % 50) / 10}"
            for i in range(40)]
    stsb = tmp_path / "stsb.tsv"
    stsb.write_text("index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
                    + "\n".join(rows) + "\n")
    common = {"bert_config_file": tiny_config, "vocab_file": str(shared / "data/uncased_vocab.txt")}
    spec = _spec("classify", tmp_path, model=common,
                 data={"task_name": "sts-b", "train_file": str(stsb), "eval_file": str(stsb), "max_seq_length": 32},
                 training={"train_batch_size": 8, "num_train_steps": 3})
    metrics = run_job(spec)
    assert {"eval_pearson", "eval_spearmanr", "eval_loss", "global_step"} <= set(metrics)
    spec = _spec("classify", tmp_path / "cola", model=common,
                 data={"task_name": "cola", "train_file": str(shared / "data/cola_train.tsv"), "layout": "cola",
                       "holdout_fraction": 0.01, "max_seq_length": 32},
                 training={"train_batch_size": 8, "num_train_steps": 2})
    assert "eval_mcc" in run_job(spec)


def test_distill_a_student_from_a_teacher(tiny_config, shared, tmp_path):
    common = {"bert_config_file": tiny_config, "vocab_file": str(shared / "data/uncased_vocab.txt")}
    data = {"task_name": "sst-2", "train_file": str(shared / "data/sst2_train.tsv"), "layout": "sst2",
            "holdout_fraction": 0.02, "max_seq_length": 32}
    teacher = _spec("classify", tmp_path / "teacher", model=common, data=data,
                    training={"train_batch_size": 8, "num_train_steps": 3})
    run_job(teacher)
    student = parse_spec({"kind": "distill", "model": {"size": "L-2_H-128", "vocab_file": common["vocab_file"]},
                          "data": data, "training": {"train_batch_size": 8, "num_train_steps": 3},
                          "distill": {"teacher_checkpoint": str(tmp_path / "teacher/run/export"), "temperature": 2.0},
                          "output": {"output_dir": str(tmp_path / "student")}, "logging": {"wandb": False}})
    metrics = run_job(student)
    assert metrics["global_step"] == 3 and 0.0 <= metrics["eval_accuracy"] <= 1.0
    losses = [json.loads(line) for line in (tmp_path / "student/metrics.jsonl").read_text().splitlines()]
    assert any("train/loss" in row for row in losses)


def test_squad_v2_trains_predicts_and_evaluates_officially(tiny_config, shared, tmp_path):
    spec = _spec("squad", tmp_path,
                 model={"bert_config_file": tiny_config, "vocab_file": str(shared / "data/uncased_vocab.txt")},
                 data={"train_file": str(shared / "data/squad2_normans_complexity.json"), "holdout_fraction": 0.2,
                       "max_seq_length": 128, "doc_stride": 64},
                 squad={"version_2_with_negative": True},
                 training={"train_batch_size": 16, "num_train_steps": 2, "predict_batch_size": 64})
    metrics = run_job(spec)
    assert {"exact", "f1", "HasAns_exact", "NoAns_exact", "best_f1", "best_f1_thresh"} <= set(metrics)
    predictions = json.loads((tmp_path / "run/predictions.json").read_text())
    null_odds = json.loads((tmp_path / "run/null_odds.json").read_text())
    assert metrics["total"] == len(predictions) == len(null_odds) > 50
    nbest = json.loads((tmp_path / "run/nbest_predictions.json").read_text())
    assert set(nbest) == set(predictions)


def test_features_writes_the_original_json(minilm_dir, tmp_path):
    inputs = tmp_path / "input.txt"
    inputs.write_text("Who was Jim Henson ? ||| Jim Henson was a puppeteer\nHello world\n")
    spec = _spec("features", tmp_path, model={"init_checkpoint": str(minilm_dir)},
                 data={"predict_file": str(inputs), "max_seq_length": 32}, features={"layers": [-1, -2]})
    assert run_job(spec)["num_examples"] == 2
    lines = [json.loads(line) for line in (tmp_path / "run/features.jsonl").read_text().splitlines()]
    assert [line["linex_index"] for line in lines] == [0, 1]
    tokens = [f["token"] for f in lines[0]["features"]]
    assert tokens == ["[CLS]", "who", "was", "jim", "henson", "?", "[SEP]", "jim", "henson", "was", "a",
                      "puppet", "##eer", "[SEP]"]
    first = lines[0]["features"][0]["layers"]
    assert [layer["index"] for layer in first] == [-1, -2] and len(first[0]["values"]) == 384
    assert all(v == round(v, 6) for v in first[0]["values"])
    spec = _spec("features", tmp_path / "npz", model={"init_checkpoint": str(minilm_dir)},
                 data={"predict_file": str(inputs), "max_seq_length": 32},
                 features={"layers": [-1], "output_format": "npz"})
    run_job(spec)
    shard = np.load(tmp_path / "npz/run/features-00000.npz")
    assert shard["layer_-1"].shape == (2, 32, 384)
    np.testing.assert_allclose(shard["layer_-1"][0, 0].astype(np.float32), first[0]["values"], atol=2e-3)


def test_bad_input_fails_before_training(tiny_config, shared, tmp_path):
    bad_labels = tmp_path / "bad.tsv"
    bad_labels.write_text("a fine sentence\t1\nanother one\tmaybe\n")
    common = {"bert_config_file": tiny_config, "vocab_file": str(shared / "data/uncased_vocab.txt")}
    with pytest.raises(SpecError, match=r"data.train_file: .*bad.tsv.*line 2.*maybe"):
        run_job(_spec("classify", tmp_path, model=common,
                      data={"task_name": "cola", "train_file": str(bad_labels), "layout": "cola",
                            "holdout_fraction": 0.5}))
    with pytest.raises(SpecError, match="max_seq_length 512 is above the model's max_position_embeddings 128"):
        run_job(_spec("classify", tmp_path, model=common,
                      data={"task_name": "cola", "train_file": str(bad_labels), "max_seq_length": 512}))
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("[PAD]\n[UNK]\nhello\n")
    with pytest.raises(SpecError, match=r"3 tokens but the config's vocab_size is 30522"):
        run_job(_spec("classify", tmp_path, model={"bert_config_file": tiny_config, "vocab_file": str(vocab)},
                      data={"task_name": "cola", "train_file": str(bad_labels)}))
    empty = tmp_path / "empty.json"
    empty.write_text('{"version": "v2.0"}')
    with pytest.raises(SpecError, match="empty.json"):
        run_job(_spec("squad", tmp_path, model=common, data={"train_file": str(empty)}))
    other = tmp_path / "other_config.json"
    BertConfig(vocab_size=30522, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
               intermediate_size=37, max_position_embeddings=128).to_google_json(other)
    with pytest.raises(SpecError, match="does not match the model config"):
        run_job(_spec("classify", tmp_path, model={"bert_config_file": str(other),
                                                   "init_checkpoint": str(shared / "fixtures/tf_checkpoint_small"),
                                                   "vocab_file": common["vocab_file"]},
                      data={"task_name": "cola", "train_file": str(shared / "data/cola_dev.tsv"),
                            "layout": "cola", "holdout_fraction": 0.5}))


def test_two_phase_pretraining_128_then_512(shared, tmp_path):
    from jobs.data.pretraining import PretrainingDataConfig, create_pretraining_data
    from models.tokenization import FullTokenizer

    config = tmp_path / "bert_config.json"
    write_tiny_config(config, max_position_embeddings=512)
    vocab = str(shared / "data/uncased_vocab.txt")
    data_512 = tmp_path / "sample_512.tfrecord"
    create_pretraining_data([str(shared / "data/sample_text.txt")], [str(data_512)], FullTokenizer(vocab),
                            PretrainingDataConfig(max_seq_length=512, max_predictions_per_seq=80, dupe_factor=2))
    phase1 = parse_spec({"kind": "pretrain", "model": {"bert_config_file": str(config), "vocab_file": vocab},
                         "data": {"train_file": str(shared / "fixtures/sample_text_wwmFalse.tfrecord")},
                         "training": {"train_batch_size": 8, "num_train_steps": 2, "do_eval": False},
                         "output": {"output_dir": str(tmp_path / "phase1")}, "logging": {"wandb": False}})
    run_job(phase1)
    phase2 = parse_spec({"kind": "pretrain",
                         "model": {"init_checkpoint": str(tmp_path / "phase1/export"), "vocab_file": vocab},
                         "data": {"train_file": str(data_512), "max_seq_length": 512, "max_predictions_per_seq": 80},
                         "training": {"train_batch_size": 4, "num_train_steps": 2, "eval_batch_size": 4,
                                      "max_eval_steps": 1},
                         "output": {"output_dir": str(tmp_path / "phase2")}, "logging": {"wandb": False}})
    metrics = run_job(phase2)
    assert metrics["global_step"] == 2 and metrics["masked_lm_loss"] > 0
    from models import load_pretrained

    start = load_pretrained(tmp_path / "phase1/export", head="pretraining")
    assert start.bert.embeddings.position_embeddings.weight.shape == (512, 32)


def test_dynamic_padding_changes_the_cost_not_the_result(tiny_config, shared, tmp_path):
    """Batches cut to their longest sequence train and evaluate to what max_seq_length padding gives
    (float rounding aside): the positions cut are padding, masked out of attention in every row."""
    common = {"bert_config_file": tiny_config, "vocab_file": str(shared / "data/uncased_vocab.txt")}
    data = {"task_name": "sst-2", "train_file": str(shared / "data/sst2_train.tsv"), "layout": "sst2",
            "eval_file": str(shared / "data/sst2_dev.tsv"), "max_eval_examples": 64, "max_seq_length": 128}
    training = {"train_batch_size": 8, "num_train_steps": 4, "eval_batch_size": 32}
    results = [run_job(_spec("classify", tmp_path / str(dynamic), model=common, data=data | {"dynamic_padding": dynamic},
                             training=training, resources={"backend": "local"})) for dynamic in (False, True)]
    static, dynamic = results
    assert dynamic["eval_loss"] == pytest.approx(static["eval_loss"], abs=1e-5)
    assert dynamic["eval_accuracy"] == static["eval_accuracy"]

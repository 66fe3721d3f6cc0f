"""Loading and saving weights: Google's TF checkpoints (against the original code's outputs) and
Hugging Face directories (against the transformers package and a real pretrained BERT)."""

from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pytest
import torch

from models import BertConfig, BertForPreTraining, FullTokenizer, load_pretrained
from models.checkpoints import (CheckpointError, ours_to_tf_name, read_google_checkpoint, tf_name_to_ours,
                                write_google_checkpoint, write_hf_directory)
from models.tf_bundle import read_tf_checkpoint, write_tf_checkpoint

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def google_dir(shared):
    return shared / "fixtures" / "tf_checkpoint_small"


def _reference_run(model, ref):
    t = {k: torch.from_numpy(ref[k]).long() for k in ("input_ids", "input_mask", "segment_ids",
                                                      "masked_lm_positions", "masked_lm_ids", "next_sentence_labels")}
    with torch.no_grad():
        bert = model.bert(t["input_ids"], t["segment_ids"], t["input_mask"], output_all_encoded_layers=True)
        out = model(t["input_ids"], t["segment_ids"], t["input_mask"], t["masked_lm_positions"],
                    t["masked_lm_ids"], torch.from_numpy(ref["masked_lm_weights"]), t["next_sentence_labels"])
    return bert, out


@pytest.mark.parametrize("path", ["dir", "prefix", "index"])
def test_google_checkpoint_reproduces_the_original_outputs(google_dir, path):
    target = {"dir": google_dir, "prefix": google_dir / "bert_model.ckpt",
              "index": google_dir / "bert_model.ckpt.index"}[path]
    model = load_pretrained(target, head="pretraining")
    assert model.config.hidden_act == "gelu_tanh"
    ref = np.load(google_dir / "reference_outputs.npz")
    bert, out = _reference_run(model, ref)
    close = dict(atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(bert.sequence_output.numpy(), ref["sequence_output"], **close)
    np.testing.assert_allclose(bert.pooled_output.numpy(), ref["pooled_output"], **close)
    np.testing.assert_allclose(torch.stack(bert.all_encoder_layers).numpy(), ref["all_encoder_layers"], **close)
    np.testing.assert_allclose(out.masked_lm_log_probs.numpy(), ref["masked_lm_log_probs"], **close)
    np.testing.assert_allclose(out.next_sentence_log_probs.numpy(), ref["next_sentence_log_probs"], **close)
    np.testing.assert_allclose(out.masked_lm_loss.item(), ref["masked_lm_loss"], **close)
    np.testing.assert_allclose(out.next_sentence_loss.item(), ref["next_sentence_loss"], **close)


def test_erf_gelu_would_not_match_the_original(google_dir):
    """Guards the GELU decision: the fixture's small random model tells tanh from erf."""
    model = load_pretrained(google_dir)
    for layer in model.bert.encoder.layer:
        layer.intermediate.act = torch.nn.functional.gelu
    ref = np.load(google_dir / "reference_outputs.npz")
    bert, _ = _reference_run(model, ref)
    assert np.abs(bert.sequence_output.numpy() - ref["sequence_output"]).max() > 1e-5


def test_every_google_variable_is_mapped_both_ways(google_dir):
    variables = read_tf_checkpoint(google_dir / "bert_model.ckpt")
    for name in variables:
        if name == "global_step" or "adam" in name:
            continue
        ours, _ = tf_name_to_ours(name)
        assert ours_to_tf_name(ours)[0] == name
    state = read_google_checkpoint(google_dir / "bert_model.ckpt")
    assert set(state) == set(BertForPreTraining(BertConfig.from_google_json(google_dir / "bert_config.json")).state_dict())


def test_google_export_round_trips(google_dir, tmp_path):
    model = load_pretrained(google_dir)
    write_google_checkpoint(model, tmp_path / "out" / "bert_model.ckpt")
    original = read_tf_checkpoint(google_dir / "bert_model.ckpt")
    written = read_tf_checkpoint(tmp_path / "out" / "bert_model.ckpt")
    assert set(written) == {n for n in original if n != "global_step" and "adam" not in n}
    for name, array in written.items():
        np.testing.assert_array_equal(array, original[name], err_msg=name)
    again = load_pretrained(tmp_path / "out")
    for (name, a), b in zip(model.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), name


def test_fine_tuned_google_heads_load(tmp_path):
    config = BertConfig(vocab_size=30, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=20)
    base = BertForPreTraining(config)
    write_google_checkpoint(base, tmp_path / "bert_model.ckpt")
    tensors = read_tf_checkpoint(tmp_path / "bert_model.ckpt")
    tensors["output_weights"] = np.arange(3 * 16, dtype=np.float32).reshape(3, 16)  # run_classifier.py
    tensors["output_bias"] = np.array([1, 2, 3], dtype=np.float32)
    tensors["cls/squad/output_weights"] = np.ones((2, 16), dtype=np.float32)  # run_squad.py
    tensors["cls/squad/output_bias"] = np.array([5, 6], dtype=np.float32)
    tensors["bert/pooler/dense/kernel/adam_m"] = np.zeros((16, 16), dtype=np.float32)
    tensors["global_step"] = np.array(7, dtype=np.int64)
    write_tf_checkpoint(tmp_path / "bert_model.ckpt", tensors)
    cls = load_pretrained(tmp_path, head="classification", num_labels=3)
    assert torch.equal(cls.classifier.weight, torch.arange(48, dtype=torch.float32).reshape(3, 16))
    assert torch.equal(cls.classifier.bias, torch.tensor([1.0, 2.0, 3.0]))
    qa = load_pretrained(tmp_path, head="question_answering")
    assert torch.equal(qa.qa_outputs.bias, torch.tensor([5.0, 6.0]))
    bare = load_pretrained(tmp_path, head="model")
    assert torch.equal(bare.pooler.dense.weight, base.bert.pooler.dense.weight)


def test_unknown_variables_are_listed(tmp_path):
    config = BertConfig(vocab_size=30, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=20)
    write_google_checkpoint(BertForPreTraining(config), tmp_path / "bert_model.ckpt")
    tensors = read_tf_checkpoint(tmp_path / "bert_model.ckpt")
    tensors["my_extra/thing"] = np.zeros(3, dtype=np.float32)
    write_tf_checkpoint(tmp_path / "bert_model.ckpt", tensors)
    with pytest.raises(CheckpointError, match="my_extra/thing"):
        load_pretrained(tmp_path)
    with pytest.warns(UserWarning, match="my_extra/thing"):
        load_pretrained(tmp_path, strict=False)


def test_bad_inputs_name_the_problem(google_dir, tmp_path):
    bad = tmp_path / "ckpt"
    shutil.copytree(google_dir, bad)
    (bad / "vocab.txt").write_text("\n".join(f"tok{i}" for i in range(100)) + "\n")
    with pytest.raises(CheckpointError, match=r"100 tokens.*vocab_size is 99"):
        load_pretrained(bad)
    (bad / "vocab.txt").unlink()
    config = json.loads((bad / "bert_config.json").read_text())
    (bad / "bert_config.json").write_text(json.dumps(dict(config, intermediate_size=40)))
    with pytest.raises(CheckpointError, match=r"intermediate.dense.weight has shape \(37, 32\).*\(40, 32\)"):
        load_pretrained(bad)
    (bad / "bert_config.json").write_text(json.dumps(config))
    (bad / "bert_model.ckpt.data-00000-of-00001").unlink()
    with pytest.raises(CheckpointError, match="data-00000-of-00001"):
        load_pretrained(bad)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_pretrained(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="head"):
        load_pretrained(google_dir, head="summarization")


def test_minilm_matches_transformers(minilm_dir, shared):
    ours = load_pretrained(minilm_dir, head="model")
    assert ours.config.hidden_act == "gelu"  # HF "gelu" is erf
    theirs = transformers.BertModel.from_pretrained(minilm_dir, attn_implementation="eager").eval()
    tokenizer = FullTokenizer(shared / "data" / "uncased_vocab.txt", do_lower_case=True)
    lines = [line for line in (shared / "data" / "sst2_dev.tsv").read_text().splitlines()[:8]]
    batch = tokenizer.encode_batch([line.split("\t", 1)[1] for line in lines], max_seq_length=48)
    ids, types, mask = (torch.as_tensor(getattr(batch, k)) for k in ("input_ids", "token_type_ids", "attention_mask"))
    assert mask.sum(1).min() < 48, "the batch should contain padding"
    with torch.no_grad():
        a = ours(ids, types, mask, output_all_encoded_layers=True)
        b = theirs(input_ids=ids, token_type_ids=types, attention_mask=mask, output_hidden_states=True)
    real = mask.bool()
    for layer_ours, layer_theirs in zip(a.all_encoder_layers, b.hidden_states[1:]):
        torch.testing.assert_close(layer_ours[real], layer_theirs[real], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(a.pooled_output, b.pooler_output, atol=1e-4, rtol=1e-4)


def test_hf_export_transformers_import_round_trip(minilm_dir, tmp_path):
    torch.manual_seed(0)
    model = load_pretrained(minilm_dir, head="pretraining")  # MLM/NSP heads fresh, encoder real
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        write_hf_directory(model, tmp_path / "ours")
    theirs = transformers.BertForPreTraining.from_pretrained(tmp_path / "ours").eval()
    ids = torch.randint(0, 30522, (2, 12))
    with torch.no_grad():
        ref = theirs(input_ids=ids).prediction_logits
        positions = torch.arange(12).repeat(2, 1)
        ours = model(ids, masked_lm_positions=positions).masked_lm_log_probs
    torch.testing.assert_close(ours, torch.log_softmax(ref.reshape(-1, 30522), -1), atol=1e-4, rtol=1e-4)
    theirs.save_pretrained(tmp_path / "theirs")
    back = load_pretrained(tmp_path / "theirs", head="pretraining")
    for (name, a), b in zip(model.state_dict().items(), back.state_dict().values()):
        assert torch.equal(a, b), name


def test_tanh_gelu_survives_the_trip_through_transformers(google_dir, tmp_path):
    model = load_pretrained(google_dir)
    write_hf_directory(model, tmp_path)
    theirs = transformers.BertForPreTraining.from_pretrained(tmp_path).eval()
    ref = np.load(google_dir / "reference_outputs.npz")
    with torch.no_grad():
        out = theirs(input_ids=torch.from_numpy(ref["input_ids"]).long(),
                     token_type_ids=torch.from_numpy(ref["segment_ids"]).long(),
                     attention_mask=torch.from_numpy(ref["input_mask"]).long())
    np.testing.assert_allclose(out.seq_relationship_logits.log_softmax(-1).numpy(),
                               ref["next_sentence_log_probs"], atol=1e-5, rtol=1e-5)
    assert load_pretrained(tmp_path).config == model.config


def test_legacy_pytorch_model_bin(minilm_dir, tmp_path):
    from safetensors.torch import load_file

    state = load_file(minilm_dir / "model.safetensors")
    torch.save(state, tmp_path / "pytorch_model.bin")
    shutil.copy(minilm_dir / "config.json", tmp_path / "config.json")
    a = load_pretrained(tmp_path, head="model")
    b = load_pretrained(minilm_dir, head="model")
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name

"""The model itself: shapes, masking, heads and losses, initialisation, gradient checkpointing,
and the rule that models/ imports nothing distributed."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from models import (BertConfig, BertForPreTraining, BertForQuestionAnswering, BertForSequenceClassification,
                    BertForTokenClassification, BertModel)

# The original BERT tester's sizes: batch 13, seq 7, vocab 99, hidden 32, intermediate 37.
B, T, V = 13, 7, 99
CONFIG = BertConfig(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                    intermediate_size=37, max_position_embeddings=64)


def _inputs(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[::2, 5:] = 0
    return {"input_ids": torch.randint(0, V, (B, T), generator=g),
            "token_type_ids": torch.randint(0, 2, (B, T), generator=g), "attention_mask": mask}


def test_bert_model_shapes_and_layers():
    model = BertModel(CONFIG).eval()
    out = model(**_inputs(), output_all_encoded_layers=True)
    assert out.sequence_output.shape == (B, T, 32) and out.pooled_output.shape == (B, 32)
    assert len(out.all_encoder_layers) == 2
    assert torch.equal(out.all_encoder_layers[-1], out.sequence_output)
    assert model(_inputs()["input_ids"]).all_encoder_layers is None


def test_padding_does_not_change_real_tokens():
    model = BertModel(CONFIG).eval()
    inputs = _inputs()
    short = {k: v[:, :5] for k, v in inputs.items()}
    padded = dict(short, input_ids=torch.cat([short["input_ids"], torch.randint(0, V, (B, 3))], 1),
                  token_type_ids=torch.cat([short["token_type_ids"], torch.zeros(B, 3, dtype=torch.long)], 1),
                  attention_mask=torch.cat([torch.ones(B, 5, dtype=torch.long), torch.zeros(B, 3, dtype=torch.long)], 1))
    with torch.no_grad():
        a = model(**dict(short, attention_mask=torch.ones(B, 5, dtype=torch.long))).sequence_output
        b = model(**padded).sequence_output[:, :5]
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_too_long_input_is_refused():
    with pytest.raises(ValueError, match="max_position_embeddings"):
        BertModel(CONFIG)(torch.zeros(1, 65, dtype=torch.long))


def test_pretraining_losses_follow_the_original():
    torch.manual_seed(0)
    model = BertForPreTraining(CONFIG).eval()
    positions = torch.randint(0, T, (B, 3))
    ids = torch.randint(0, V, (B, 3))
    weights = torch.tensor([[1.0, 1.0, 0.0]]).repeat(B, 1)
    labels = torch.randint(0, 2, (B, 1))
    out = model(**_inputs(), masked_lm_positions=positions, masked_lm_ids=ids, masked_lm_weights=weights,
                next_sentence_labels=labels)
    assert out.masked_lm_log_probs.shape == (B * 3, V) and out.next_sentence_log_probs.shape == (B, 2)
    per = -out.masked_lm_log_probs[torch.arange(B * 3), ids.reshape(-1)]
    expected_mlm = (per * weights.reshape(-1)).sum() / (weights.sum() + 1e-5)
    expected_nsp = -out.next_sentence_log_probs[torch.arange(B), labels.reshape(-1)].mean()
    torch.testing.assert_close(out.masked_lm_loss, expected_mlm)
    torch.testing.assert_close(out.loss, expected_mlm + expected_nsp)
    # Logits are only computed at the masked positions, through the tied embedding matrix.
    seq = out.bert.sequence_output[torch.arange(B)[:, None], positions].reshape(-1, 32)
    logits = model.cls.predictions.transform(seq) @ model.bert.embeddings.word_embeddings.weight.T
    torch.testing.assert_close(out.masked_lm_log_probs, torch.log_softmax(logits + model.cls.predictions.bias, -1))
    assert model(**_inputs(), masked_lm_positions=positions).loss is None


def test_decoder_is_tied_to_word_embeddings():
    model = BertForPreTraining(CONFIG)
    names = dict(model.named_parameters())
    assert not any("decoder" in n for n in names)
    out = model(**_inputs(), masked_lm_positions=torch.zeros(B, 2, dtype=torch.long),
                masked_lm_ids=torch.zeros(B, 2, dtype=torch.long))
    out.loss.backward()
    assert model.bert.embeddings.word_embeddings.weight.grad[0].abs().sum() > 0


def test_fine_tuning_heads():
    inputs = _inputs()
    cls = BertForSequenceClassification(CONFIG, num_labels=3).eval()
    out = cls(**inputs, labels=torch.randint(0, 3, (B,)))
    assert out.logits.shape == (B, 3) and out.loss > 0
    reg = BertForSequenceClassification(CONFIG, num_labels=1).eval()
    target = torch.rand(B) * 5
    out = reg(**inputs, labels=target)
    assert out.logits.shape == (B,)
    torch.testing.assert_close(out.loss, ((out.logits - target) ** 2).mean())
    qa = BertForQuestionAnswering(CONFIG).eval()
    out = qa(**inputs, start_positions=torch.zeros(B, dtype=torch.long), end_positions=torch.ones(B, dtype=torch.long))
    assert out.logits.shape == (B, T, 2) and out.loss > 0
    tok = BertForTokenClassification(CONFIG, num_labels=5).eval()
    labels = torch.randint(0, 5, (B, T))
    out = tok(**inputs, labels=labels)
    keep = inputs["attention_mask"].bool()
    expected = torch.nn.functional.cross_entropy(out.logits[keep], labels[keep])
    torch.testing.assert_close(out.loss, expected)


def test_initialisation_is_truncated_normal():
    config = BertConfig(vocab_size=500, hidden_size=64, num_hidden_layers=1, num_attention_heads=4,
                        intermediate_size=256, initializer_range=0.02)
    model = BertForPreTraining(config)
    w = model.bert.embeddings.word_embeddings.weight
    assert w.abs().max() <= 0.04 + 1e-7
    assert 0.012 < w.std() < 0.02  # a normal truncated at 2 std has std 0.88 * 0.02
    assert torch.all(model.bert.encoder.layer[0].output.dense.bias == 0)
    assert torch.all(model.cls.predictions.bias == 0)
    assert torch.all(model.bert.encoder.layer[0].output.LayerNorm.weight == 1)


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    config = BertConfig(**{**CONFIG.__dict__, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0})
    model = BertForPreTraining(config).train()
    args = dict(_inputs(), masked_lm_positions=torch.ones(B, 2, dtype=torch.long),
                masked_lm_ids=torch.ones(B, 2, dtype=torch.long), next_sentence_labels=torch.zeros(B, dtype=torch.long))
    model(**args).loss.backward()
    plain = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.set_gradient_checkpointing(True)
    assert model.bert.encoder.gradient_checkpointing
    model(**args).loss.backward()
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.grad, plain[name], msg=name)


def _pretraining_args(positions: torch.Tensor) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return dict(_inputs(), masked_lm_positions=positions,
                masked_lm_ids=torch.randint(0, V, positions.shape, generator=g),
                masked_lm_weights=(torch.rand(positions.shape, generator=g) > 0.3).float(),
                next_sentence_labels=torch.randint(0, 2, (B,), generator=g))


def _loss_and_grads(model: BertForPreTraining, args: dict[str, torch.Tensor]):
    model.zero_grad()
    out = model(**args)
    out.loss.backward()
    return out, {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("checkpointing", [False, True])
def test_last_layer_at_masked_positions_only_gives_the_same_losses_and_gradients(checkpointing):
    # Training runs the last layer only at [CLS] and the masked positions; eval runs it everywhere.
    # Without dropout the two must agree. Positions repeat, include 0 and fall on padding too.
    torch.manual_seed(0)
    # A wide initialisation makes attention far from uniform, so a wrong row or key would show.
    config = BertConfig(**{**CONFIG.__dict__, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0,
                           "initializer_range": 0.5})
    model = BertForPreTraining(config)
    model.set_gradient_checkpointing(checkpointing)
    positions = torch.cat([torch.randint(0, T, (B, 4)), torch.zeros(B, 1, dtype=torch.long)], 1)
    args = _pretraining_args(positions)
    short, short_grads = _loss_and_grads(model.train(), args)
    full, full_grads = _loss_and_grads(model.eval(), args)
    assert short.bert.sequence_output.shape == (B, 5, 32) and full.bert.sequence_output.shape == (B, T, 32)
    close = dict(atol=1e-5, rtol=1e-5)
    for name in ("loss", "masked_lm_loss", "next_sentence_loss", "masked_lm_log_probs", "next_sentence_log_probs"):
        torch.testing.assert_close(getattr(short, name), getattr(full, name), **close, msg=name)
    for name, grad in full_grads.items():
        torch.testing.assert_close(short_grads[name], grad, **close, msg=name)


def test_bert_model_output_positions_are_rows_of_the_full_output():
    model = BertModel(CONFIG).eval()
    positions = torch.randint(0, T, (B, 3))
    full = model(**_inputs())
    rows = model(**_inputs(), output_positions=positions)
    torch.testing.assert_close(rows.sequence_output, full.sequence_output[torch.arange(B)[:, None], positions])
    torch.testing.assert_close(rows.pooled_output, full.pooled_output)
    with pytest.raises(ValueError, match="output_all_encoded_layers"):
        model(**_inputs(), output_positions=positions, output_all_encoded_layers=True)


def test_cpu_dropout_path_matches_the_plain_model_when_nothing_is_dropped():
    # p = 1e-9 takes the CPU dropout path (hand-written attention, cheaper masks) while dropping
    # nothing with this seed: training must then give exactly what eval gives.
    torch.manual_seed(0)
    config = BertConfig(**{**CONFIG.__dict__, "hidden_dropout_prob": 1e-9, "attention_probs_dropout_prob": 1e-9,
                           "initializer_range": 0.5})
    model = BertForPreTraining(config)
    args = _pretraining_args(torch.randint(0, T, (B, 3)))
    train, train_grads = _loss_and_grads(model.train(), args)
    plain, plain_grads = _loss_and_grads(model.eval(), args)
    torch.testing.assert_close(train.loss, plain.loss, atol=1e-5, rtol=1e-5)
    for name, grad in plain_grads.items():
        torch.testing.assert_close(train_grads[name], grad, atol=1e-5, rtol=1e-5, msg=name)


def test_gradient_checkpointing_replays_the_cpu_dropout_masks():
    torch.manual_seed(0)
    model = BertForPreTraining(CONFIG).train()
    args = _pretraining_args(torch.randint(0, T, (B, 3)))
    torch.manual_seed(5)
    plain, plain_grads = _loss_and_grads(model, args)
    model.set_gradient_checkpointing(True)
    torch.manual_seed(5)
    recomputed, recomputed_grads = _loss_and_grads(model, args)
    torch.testing.assert_close(recomputed.loss, plain.loss)
    for name, grad in plain_grads.items():
        torch.testing.assert_close(recomputed_grads[name], grad, msg=name)


def test_cpu_dropout_keeps_each_value_with_probability_1_minus_p():
    from models.bert import _dropout

    x, residual = torch.rand(1_000_000) + 1.0, torch.randn(1_000_000)
    torch.manual_seed(0)
    y = _dropout(x, 0.1, True)
    kept = y != 0
    assert abs(kept.double().mean().item() - 0.9) < 0.002  # 7 standard deviations
    torch.testing.assert_close(y[kept], x[kept] / 0.9)
    torch.manual_seed(0)  # same generator state, same mask; the residual rides along
    torch.testing.assert_close(_dropout(x, 0.1, True, residual), y + residual)
    assert abs((_dropout(x, 0.5, True) != 0).double().mean().item() - 0.5) < 0.002
    assert torch.equal(_dropout(x, 1.0, True), torch.zeros_like(x))
    assert torch.equal(_dropout(x, 0.1, False, residual), x + residual)


def test_dropout_is_active_only_in_training():
    model = BertModel(CONFIG)
    inputs = _inputs()
    model.train()
    assert not torch.equal(model(**inputs).sequence_output, model(**inputs).sequence_output)
    model.eval()
    assert torch.equal(model(**inputs).sequence_output, model(**inputs).sequence_output)


def _ragged_inputs(all_padding_row: bool = False) -> dict[str, torch.Tensor]:
    """Sequences of lengths 1..T, padding tokens random ids; row 3 all padding if asked (eval
    batches are filled up with such rows: their outputs mean nothing, padded or packed)."""
    inputs = _inputs()
    lengths = torch.arange(B) % T + 1
    inputs["attention_mask"] = (torch.arange(T)[None] < lengths[:, None]).long()
    if all_padding_row:
        inputs["attention_mask"][3] = 0
    return inputs


@pytest.mark.parametrize("attention", ["padded", "jagged"])
def test_unpadding_keeps_real_tokens_outputs_and_zeroes_padding(attention):
    torch.manual_seed(0)
    config = BertConfig(**{**CONFIG.__dict__, "initializer_range": 0.5})
    model = BertModel(config).eval()
    inputs = _ragged_inputs(all_padding_row=True)
    with torch.no_grad():
        padded = model(**inputs, output_all_encoded_layers=True)
        model.set_unpadding(True, attention)
        packed = model(**inputs, output_all_encoded_layers=True)
    real = inputs["attention_mask"].bool()
    rows = real.any(1)  # all but row 3, which keeps only its [CLS] when packed
    assert rows.sum() == B - 1
    kept = real.clone()
    kept[3, 0] = True
    for a, b in zip(padded.all_encoder_layers, packed.all_encoder_layers, strict=True):
        torch.testing.assert_close(b[real], a[real], atol=1e-5, rtol=1e-5)
        assert not b[~kept].any() and b[3, 0].abs().sum() > 0  # padding zeros, row 3's [CLS] kept
    torch.testing.assert_close(packed.pooled_output[rows], padded.pooled_output[rows], atol=1e-5, rtol=1e-5)
    assert packed.pooled_output.isfinite().all()
    assert packed.sequence_output.data_ptr() == packed.all_encoder_layers[-1].data_ptr()


@pytest.mark.parametrize(("attention", "checkpointing"), [("padded", False), ("padded", True), ("jagged", False)])
def test_unpadded_pretraining_gives_the_same_losses_and_gradients(attention, checkpointing):
    # In training the last layer runs only at masked positions, here through the packed rows.
    torch.manual_seed(0)
    config = BertConfig(**{**CONFIG.__dict__, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0,
                           "initializer_range": 0.5})
    model = BertForPreTraining(config).train()
    model.set_gradient_checkpointing(checkpointing)
    inputs = _ragged_inputs()
    lengths = inputs["attention_mask"].sum(1).clamp(min=1)
    positions = (torch.rand(B, 4) * lengths[:, None]).long()  # real tokens only
    args = dict(_pretraining_args(positions), attention_mask=inputs["attention_mask"])
    padded, padded_grads = _loss_and_grads(model, args)
    model.set_unpadding(True, attention)
    packed, packed_grads = _loss_and_grads(model, args)
    for name in ("loss", "masked_lm_log_probs", "next_sentence_log_probs"):
        torch.testing.assert_close(getattr(packed, name), getattr(padded, name), atol=1e-5, rtol=1e-5, msg=name)
    for name, grad in padded_grads.items():
        torch.testing.assert_close(packed_grads[name], grad, atol=1e-5, rtol=1e-5, msg=name)


def test_unpadded_fine_tuning_heads_match_on_real_tokens():
    torch.manual_seed(0)
    inputs = _ragged_inputs()
    real = inputs["attention_mask"].bool()
    for model in (BertForSequenceClassification(CONFIG, 3).eval(), BertForQuestionAnswering(CONFIG).eval()):
        with torch.no_grad():
            padded = model(**inputs).logits
            model.set_unpadding(True)
            packed = model(**inputs).logits
        if padded.dim() == 3:  # span logits: only real tokens can be answers
            padded, packed = padded[real], packed[real]
        torch.testing.assert_close(packed, padded, atol=1e-5, rtol=1e-5)


def test_unpadding_refuses_an_unknown_kernel_and_jagged_checkpointing_on_cpu():
    model = BertForPreTraining(CONFIG).train()
    with pytest.raises(ValueError, match="auto, jagged or padded"):
        model.set_unpadding(True, "flash")
    model.set_unpadding(True, "jagged")
    model.set_gradient_checkpointing(True)
    with pytest.raises(ValueError, match="attention='padded'"):
        model(**_ragged_inputs(all_padding_row=True))


def test_models_package_imports_nothing_distributed():
    forbidden = {"ray", "deepspeed", "torch_xla", "fsspec", "wandb", "gcsfs", "s3fs", "torch.distributed"}
    root = Path(__file__).resolve().parents[2] / "models"
    for path in root.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                assert not any(name == f or name.startswith(f + ".") for f in forbidden), f"{path.name} imports {name}"
    # And at run time: loading every module pulls none of them in.
    code = ("import sys, models.bert, models.checkpoints, models.tokenization, models.config;"
            "bad = [m for m in ('ray', 'deepspeed', 'torch_xla', 'fsspec', 'wandb') if m in sys.modules];"
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root.parent)

"""Optimizers and schedule against the original's formulas (optimization.py)."""

from __future__ import annotations

import numpy as np
import torch

from jobs.optim import BertAdam, Lamb, parameter_groups, warmup_linear_decay
from models import BertConfig, BertModel


def test_bert_adam_is_the_original_adam_weight_decay():
    torch.manual_seed(0)
    w0 = torch.randn(5, 3, dtype=torch.float64)
    param = torch.nn.Parameter(w0.clone())
    opt = BertAdam([param], lr=0.01, weight_decay=0.01)
    p, m, v = w0.numpy().copy(), np.zeros((5, 3)), np.zeros((5, 3))
    for step in range(5):
        grad = torch.randn(5, 3, dtype=torch.float64)
        param.grad = grad.clone()
        opt.step()
        g = grad.numpy()
        # google-research/bert AdamWeightDecayOptimizer.apply_gradients, written out:
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        update = m / (np.sqrt(v) + 1e-6) + 0.01 * p
        p = p - 0.01 * update
    np.testing.assert_allclose(param.detach().numpy(), p, rtol=1e-12, atol=1e-12)


def test_no_decay_for_layer_norm_and_biases():
    model = BertModel(BertConfig(vocab_size=20, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                 intermediate_size=16))
    decay, no_decay = parameter_groups(model, 0.01)
    names = {id(p): n for n, p in model.named_parameters()}
    assert all("LayerNorm" in names[id(p)] or names[id(p)].endswith("bias") for p in no_decay["params"])
    assert not any("LayerNorm" in names[id(p)] or names[id(p)].endswith("bias") for p in decay["params"])
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0


def test_schedule_is_warmup_then_linear_decay_to_zero():
    factor = warmup_linear_decay(num_warmup_steps=10, num_train_steps=100)
    # The original: polynomial_decay(init, step, total, 0, power=1) overridden by init*step/warmup in warmup.
    for step in (0, 1, 5, 9):
        assert factor(step) == step / 10
    for step in (10, 50, 99, 100):
        assert abs(factor(step) - (1 - step / 100)) < 1e-12
    assert factor(150) == 0.0


def test_lamb_scales_each_update_by_the_trust_ratio():
    torch.manual_seed(0)
    big = torch.nn.Parameter(torch.full((4,), 10.0))
    small = torch.nn.Parameter(torch.full((4,), 0.1))
    opt = Lamb([big, small], lr=0.1)
    big.grad = torch.ones(4)
    small.grad = torch.ones(4)
    opt.step()
    # The first Adam update is ~1 per element, so each step is lr * ||w|| / ||u|| ~ lr * |w|.
    torch.testing.assert_close(big.detach(), torch.full((4,), 10.0 - 0.1 * 10.0), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(small.detach(), torch.full((4,), 0.1 - 0.1 * 0.1), rtol=1e-4, atol=1e-4)

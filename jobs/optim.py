"""Optimizers and the learning-rate schedule of the original BERT, plus LAMB and torch AdamW.

- `BertAdam` is the original's AdamWeightDecayOptimizer: Adam moments *without* bias correction,
  weight decay added to the update (decoupled, not L2 in the gradient), eps 1e-6.
- `Lamb` is Adam with bias correction and a per-tensor trust ratio ||w|| / ||update||, for large
  batch pretraining (You et al., 2019).
- The schedule is the original's: linear warmup to the peak, then linear decay to 0 at the end.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from jobs.spec import TrainingSpec

# The original excludes LayerNorm and biases from weight decay.
_NO_DECAY = ("LayerNorm", "layer_norm", "bias")


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: decayed weights, and LayerNorm/bias parameters without decay."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if any(k in name for k in _NO_DECAY) else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class BertAdam(torch.optim.Optimizer):
    """AdamWeightDecayOptimizer of google-research/bert optimization.py."""

    def __init__(self, params: Iterable, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-6, weight_decay: float = 0.0):
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        for group in self.param_groups:
            params, m, v = self._update_moments(group)
            if not params:
                continue
            update = torch._foreach_div(m, torch._foreach_add(torch._foreach_sqrt(v), group["eps"]))
            if group["weight_decay"]:
                torch._foreach_add_(update, params, alpha=group["weight_decay"])
            torch._foreach_add_(params, update, alpha=-group["lr"])

    def _update_moments(self, group: dict) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        """Adam's moment updates for a group's parameters that have gradients: (params, m, v)."""
        params = [p for p in group["params"] if p.grad is not None]
        for p in params:
            if not self.state[p]:
                self.state[p]["exp_avg"] = torch.zeros_like(p)
                self.state[p]["exp_avg_sq"] = torch.zeros_like(p)
            # setdefault: optimizer states saved before the step count was kept resume too.
            self.state[p]["step"] = self.state[p].get("step", 0) + 1
        if not params:
            return params, [], []
        grads = [p.grad for p in params]
        m = [self.state[p]["exp_avg"] for p in params]
        v = [self.state[p]["exp_avg_sq"] for p in params]
        beta1, beta2 = group["betas"]
        torch._foreach_lerp_(m, grads, 1 - beta1)  # m = b1 m + (1 - b1) g
        torch._foreach_mul_(v, beta2)
        torch._foreach_addcmul_(v, grads, grads, value=1 - beta2)
        return params, m, v


class Lamb(BertAdam):
    """LAMB: Adam (bias-corrected) with the update of each tensor scaled by ||w|| / ||update||."""

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        for group in self.param_groups:
            params, m, v = self._update_moments(group)
            if not params:
                continue
            t = self.state[params[0]]["step"]
            beta1, beta2 = group["betas"]
            denom = torch._foreach_add(torch._foreach_sqrt(torch._foreach_div(v, 1 - beta2 ** t)), group["eps"])
            update = torch._foreach_div(torch._foreach_div(m, 1 - beta1 ** t), denom)
            if group["weight_decay"]:
                torch._foreach_add_(update, params, alpha=group["weight_decay"])
            w_norms = torch._foreach_norm(params)
            u_norms = torch._foreach_norm(update)
            for p, u, wn, un in zip(params, update, w_norms, u_norms):
                # Trust ratio 1 where either norm is 0 (fresh zero-initialised biases, zero updates).
                ratio = torch.where((wn > 0) & (un > 0), wn / un, torch.ones_like(wn))
                p.add_(u * ratio, alpha=-group["lr"])


def build_optimizer(model: nn.Module, spec: TrainingSpec) -> torch.optim.Optimizer:
    """The optimizer the spec names, with the original's no-decay groups."""
    groups = parameter_groups(model, spec.weight_decay)
    if spec.optimizer == "adam_bert":
        return BertAdam(groups, lr=spec.learning_rate)
    if spec.optimizer == "lamb":
        return Lamb(groups, lr=spec.learning_rate)
    device = next(model.parameters()).device
    # Fused AdamW where the device has the kernel (CUDA; CPU in recent torch), else foreach.
    fused = device.type in ("cuda", "cpu") and not spec.deterministic
    return torch.optim.AdamW(groups, lr=spec.learning_rate, betas=(0.9, 0.999), eps=1e-6, fused=fused)


def warmup_linear_decay(num_warmup_steps: int, num_train_steps: int):
    """The original schedule as a multiplier of the peak learning rate at (0-based) step s:
    s / warmup during warmup, then 1 - s / total (polynomial decay, power 1, to 0)."""

    def factor(step: int) -> float:
        if step < num_warmup_steps:
            return step / max(1, num_warmup_steps)
        return max(0.0, 1.0 - step / max(1, num_train_steps))

    return factor


def build_schedule(optimizer: torch.optim.Optimizer, num_warmup_steps: int,
                   num_train_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_linear_decay(num_warmup_steps, num_train_steps))

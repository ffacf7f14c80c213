"""Muon for the hidden weight matrices, AdamW for everything else, as one torch optimizer.

    from mnisttext.muon import MuonAdamW, split_params
    opt = MuonAdamW(split_params(model, weight_decay=0.1, muon_lr_mult=10.0), lr=2e-3)
    loss.backward(); opt.step(); opt.zero_grad()

Muon (momentum orthogonalized by Newton-Schulz, Keller Jordan et al., 2024) updates each 2-D
hidden matrix with its momentum made approximately orthogonal: every direction of the update
gets a similar step, where Adam's per-entry scaling lets a few directions dominate. Embeddings,
the (tied) output head, biases and norm gains keep AdamW. Every group's "lr" is set by the
trainer's schedule; a Muon group steps by lr * lr_mult, so one schedule drives both.
The state is plain tensors per parameter (the trainer saves and restores it like AdamW's).
"""
from __future__ import annotations

import torch
import torch.nn as nn

NS_COEFFS = (3.4445, -4.7750, 2.0315)   # quintic Newton-Schulz: fast to ~1, not exactly 1
HIDDEN = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


@torch.no_grad()
def orthogonalize(g: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """An approximately orthogonal matrix with g's singular vectors (singular values pushed into
    roughly [0.7, 1.2] rather than exactly 1), in bf16 where the matmuls are cheap."""
    a, b, c = NS_COEFFS
    x = g.bfloat16()
    wide = x.shape[0] <= x.shape[1]
    if not wide:
        x = x.T
    x = x / (x.norm() + 1e-7)                     # the spectral norm is at most the Frobenius
    for _ in range(steps):
        s = x @ x.T                               # (rows, rows), rows <= cols
        x = a * x + (b * s + c * s @ s) @ x
    return (x if wide else x.T).to(g.dtype)


def split_params(model: nn.Module, weight_decay: float, muon_lr_mult: float) -> list[dict]:
    """Param groups: the blocks' hidden matrices for Muon; other matrices (embeddings, head)
    with weight decay and AdamW; vectors (biases, gains) AdamW without decay."""
    muon, decay, no_decay = [], [], []
    for name, p in model.named_parameters():      # (tied weights come once)
        if name.endswith(HIDDEN) and p.dim() == 2:
            muon.append(p)
        elif p.dim() >= 2:
            decay.append(p)
        else:
            no_decay.append(p)
    return [{"params": muon, "use_muon": True, "lr_mult": muon_lr_mult, "weight_decay": weight_decay},
            {"params": decay, "use_muon": False, "lr_mult": 1.0, "weight_decay": weight_decay},
            {"params": no_decay, "use_muon": False, "lr_mult": 1.0, "weight_decay": 0.0}]


class MuonAdamW(torch.optim.Optimizer):
    def __init__(self, groups, lr: float, momentum: float = 0.95, betas=(0.9, 0.95), eps: float = 1e-8):
        super().__init__(groups, dict(lr=lr, momentum=momentum, betas=betas, eps=eps,
                                      use_muon=False, lr_mult=1.0, weight_decay=0.0))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            lr = group["lr"] * group["lr_mult"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if group["weight_decay"]:
                    p.mul_(1 - lr * group["weight_decay"])      # decoupled, as AdamW
                if group["use_muon"]:
                    self._muon(p, lr, group["momentum"])
                else:
                    self._adamw(p, lr, group["betas"], group["eps"])

    def _muon(self, p, lr: float, momentum: float) -> None:
        st = self.state[p]
        buf = st.setdefault("momentum_buffer", torch.zeros_like(p))
        buf.mul_(momentum).add_(p.grad)
        update = orthogonalize(p.grad.add(buf, alpha=momentum))   # Nesterov
        rows, cols = p.shape
        p.add_(update, alpha=-lr * max(1.0, rows / cols) ** 0.5)

    def _adamw(self, p, lr: float, betas, eps: float) -> None:
        st = self.state[p]
        if not st:
            st["step"] = torch.zeros(())
            st["exp_avg"], st["exp_avg_sq"] = torch.zeros_like(p), torch.zeros_like(p)
        st["step"] += 1
        b1, b2 = betas
        st["exp_avg"].lerp_(p.grad, 1 - b1)
        st["exp_avg_sq"].mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
        t = float(st["step"])
        denom = (st["exp_avg_sq"] / (1 - b2 ** t)).sqrt_().add_(eps)
        p.addcdiv_(st["exp_avg"], denom, value=-lr / (1 - b1 ** t))

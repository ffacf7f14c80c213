"""The pixel-RNN baseline: a stacked GRU language model behind the GPT's interface.

    from mnisttext.model import GPTConfig, build_model
    model = build_model(GPTConfig(arch="gru", n_layer=2, n_embd=512))
    logits, loss = model(idx, targets)
    cache = model.new_cache(1)                  # its "cache" is the hidden state

Kept to compare against: the transformer is the project's model (docs/variants.md).
"""
from __future__ import annotations

import torch
import torch.nn as nn
from torch.nn import functional as F


class GRUCache:
    """The GRU's 'cache': its hidden state after the tokens seen so far."""

    def __init__(self, h: torch.Tensor | None, pos: int = 0):
        self.h, self.pos = h, pos

    @property
    def batch_size(self) -> int:
        return self.h.shape[1]

    def expand(self, n: int) -> "GRUCache":
        return GRUCache(self.h.expand(-1, n, -1).contiguous(), self.pos)


class GRU(nn.Module):
    """Embedding -> n_layer GRU -> LayerNorm -> linear head."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.rnn = nn.GRU(config.n_embd, config.n_embd, num_layers=config.n_layer,
                          dropout=config.dropout if config.n_layer > 1 else 0.0, batch_first=True)
        self.ln_f = nn.LayerNorm(config.n_embd)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)

    def num_params(self, non_embedding: bool = True) -> int:
        return sum(p.numel() for p in self.parameters())

    def new_cache(self, batch_size: int) -> GRUCache:
        return GRUCache(None)

    def forward(self, idx, targets=None, kv_cache: GRUCache | None = None):
        h0 = kv_cache.h if kv_cache is not None else None
        x, h = self.rnn(self.wte(idx), h0)                       # (B, T, C), (L, B, C)
        if kv_cache is not None:
            kv_cache.h, kv_cache.pos = h, kv_cache.pos + idx.shape[1]
        logits = self.lm_head(self.ln_f(x))                      # (B, T, V)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1),
                                   ignore_index=-1)
        return logits, loss

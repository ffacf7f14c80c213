"""The KV cache of the GPT: keys and values of every layer for the positions seen so far.

    cache = model.new_cache(batch_size=1)
    logits, _ = model(prefix, kv_cache=cache)        # prefill: the cache advances by len(prefix)
    cache = cache.expand(64)                         # the same prefix for 64 candidates
    logits, _ = model(next_tokens[:, None], kv_cache=cache)   # one decode step

The model writes each layer's new keys/values with `write` and, for a one-token decode step,
lets the cache do the attention (`attend_one`), so the layout of the stored keys is the cache's
business alone.
"""
from __future__ import annotations

import math

import torch


class KVCache:
    """k, v: (n_layer, B, nh, capacity, hs), filled up to `pos`, in the dtype the layers compute
    in. The capacity starts at `min_capacity` positions and doubles as needed (up to the block
    size): reading the cache is most of a decode step's memory traffic, so short lines (BPE
    tokens) read a short buffer, and doubling keeps the copies on growth few."""

    min_capacity = 16

    def __init__(self, n_layer: int, batch_size: int, n_head: int, block_size: int, head_size: int,
                 dtype=None):
        self.shape = (n_layer, batch_size, n_head, block_size, head_size)
        self.dtype = dtype
        self.k = self.v = None
        self.pos = 0
        self._mask = None
        self._mask_key = None

    @property
    def batch_size(self) -> int:
        return self.shape[1]

    @property
    def capacity(self) -> int:
        return 0 if self.k is None else self.k.shape[3]

    def _grow(self, need: int, like: torch.Tensor):
        cap = max(self.min_capacity, self.capacity)
        while cap < need:
            cap *= 2
        cap = min(self.shape[3], cap)
        shape = self.shape[:3] + (cap,) + self.shape[4:]
        dtype = self.dtype or like.dtype
        k = torch.empty(shape, device=like.device, dtype=dtype)
        v = torch.empty(shape, device=like.device, dtype=dtype)
        p = self.pos
        if self.k is not None:
            k[:, :, :, :p] = self.k[:, :, :, :p]
            v[:, :, :, :p] = self.v[:, :, :, :p]
        # the unwritten tail is masked, but it must hold finite numbers: -inf + NaN is NaN
        k[:, :, :, p:] = 0
        v[:, :, :, p:] = 0
        self.k, self.v = k, v

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        """Store k, v (B, nh, T, hs) at pos..pos+T; return all keys and values so far."""
        p, T = self.pos, k.shape[2]
        if p + T > self.capacity:
            self._grow(p + T, k)
        self.k[layer, :, :, p:p + T] = k
        self.v[layer, :, :, p:p + T] = v
        return self.k[layer, :, :, :p + T], self.v[layer, :, :, :p + T]   # (B, nh, p+T, hs)

    def tail_mask(self, dtype) -> torch.Tensor:
        """(capacity,) 0 for the positions written up to and including pos, -inf after: the
        additive mask of a one-token decode step, made once per step and shared by the layers."""
        key = (self.pos, self.capacity, dtype)
        if self._mask_key != key:
            self._mask = torch.zeros(self.capacity, dtype=dtype, device=self.k.device)
            self._mask[self.pos + 1:] = float("-inf")
            self._mask_key = key
        return self._mask

    def attend_one(self, layer: int, q: torch.Tensor) -> torch.Tensor:
        """Attention of one new query per row over everything cached (its own key included,
        written first): q (B, nh, 1, hs) -> (B, nh, 1, hs).

        It reads the whole contiguous buffer with the unwritten tail masked: contiguous
        (B*nh, cap, hs) views need no copies, where a sliced (strided) matmul would copy the keys."""
        B, nh, _, hs = q.shape
        kf, vf = self.k[layer], self.v[layer]                          # (B, nh, cap, hs)
        cap = kf.shape[2]
        att = torch.baddbmm(self.tail_mask(q.dtype), q.reshape(B * nh, 1, hs),
                            kf.view(B * nh, cap, hs).transpose(1, 2),
                            alpha=1.0 / math.sqrt(hs))                 # (B*nh, 1, cap)
        return torch.bmm(att.softmax(-1), vf.view(B * nh, cap, hs)).view(B, nh, 1, hs)

    def expand(self, n: int) -> "KVCache":
        """A cache of batch n from one of batch 1 (the prefilled class prefix)."""
        if self.batch_size != 1:
            raise ValueError("expand a cache of batch 1")
        new = object.__new__(KVCache)
        new.__dict__.update(self.__dict__)
        new.shape = (self.shape[0], n) + self.shape[2:]
        if self.k is not None:
            new.k = self.k.expand(-1, n, -1, -1, -1).contiguous()
            new.v = self.v.expand(-1, n, -1, -1, -1).contiguous()
        return new

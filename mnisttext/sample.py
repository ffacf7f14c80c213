"""Sampling: batched autoregressive generation with a KV cache, and classifier reranking.

    python cli.py generate --digits 0-9                 # 64 candidates each, best 8 kept
    python cli.py complete --indices 0,1,2 --rows 14     # finish half-drawn test digits

Every generated line is well-formed by construction: the body may only be symbols (or BPE runs
of them) that spell exactly 150*bpp symbols, then ')'. The class prefix is run through the
model once and its cache is then copied to all candidates.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from . import codec
from . import tokenizer as tk
from . import classifier


def sample_next_token(logits: torch.Tensor, generator: torch.Generator | None = None,
                      temperature: float = 1.0, top_k: int | None = None,
                      top_p: float | None = None) -> torch.Tensor:
    """logits (B, V) -> next token ids (B,). temperature 0 is greedy. Pure: no model, no state."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k > 0 and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]           # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)                        # (B, V)
        # drop a token once the mass before it already reaches top_p (the first always stays)
        drop_sorted = (cum - sorted_logits.softmax(-1)) >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    # Inverse-CDF sampling, one uniform per row: torch.multinomial draws an exponential for every
    # vocabulary entry, which with 512 BPE tokens took ~10% of a decode step on a CPU.
    probs = F.softmax(logits, dim=-1)                                     # (B, V)
    # flat across zero-probability tokens even where cumsum is a parallel scan (CUDA)
    cdf = torch.where(probs > 0, probs.cumsum(-1), 0).cummax(-1).values      # (B, V)
    u = torch.rand(cdf.shape[0], 1, generator=generator, device=cdf.device) * cdf[:, -1:]
    # the first index whose cdf exceeds u has non-zero probability: masked tokens are never drawn
    return torch.searchsorted(cdf, u, right=True).squeeze(-1).clamp_(max=cdf.shape[-1] - 1)


@dataclass
class SampleSettings:
    temperature: float = 0.8
    top_k: int | None = None
    top_p: float | None = None
    use_cache: bool = True
    bpp: int = 1


class SamplingError(RuntimeError):
    """The model gave logits that cannot be sampled (NaN or all -inf); says what produced them."""


def _allowed(body, sym_len, remaining, ended, rows):
    """(n, V) bool: the tokens each row may take next under the line grammar."""
    fin = remaining == 0                      # spelled out: ')' now, <pad> after it
    allowed = body & (sym_len <= remaining[:, None])                    # (n, V)
    if fin.any():
        allowed[fin] = False
        allowed[rows[fin], torch.where(ended[fin], tk.PAD_ID, tk.END_ID)] = True
    return allowed, fin


def _check_prefix(prefix, sym_len, n_sym) -> int:
    body = sym_len > 0
    if not prefix or not 0 <= prefix[0] <= 9 or not all(body[i] for i in prefix[1:]):
        raise ValueError("prefix must be a class digit followed by body tokens")
    given = int(sym_len[prefix[1:]].sum())
    if given >= n_sym:
        raise ValueError(f"prefix spells {given} symbols; at most {n_sym - 1} may be given")
    return given


@torch.inference_mode()
def generate(model, prefix: list[int], n: int, generator: torch.Generator,
             settings: SampleSettings = SampleSettings(), device="cpu", on_step=None,
             grammar: tk.Grammar | None = None) -> torch.Tensor:
    """Complete `prefix` (class digit, then tokens of the first symbols) into n full lines
    -> (n, L) token ids; with BPE tokens, lines end at different places and <pad> follows ')'.

    Constrained decoding: a row may only take body tokens that fit in its remaining symbols, and
    once its 150*bpp symbols are spelled, ')' and then <pad>. on_step(t, tokens) is called after
    position t is filled. The model runs in its own dtype (see packing.prepare_for_sampling)."""
    n_sym = codec.n_symbols(settings.bpp)
    grammar = grammar or tk.Grammar.character()
    device = torch.device(device)
    sym_len = torch.as_tensor(grammar.sym_len, device=device)                  # (V,)
    given = _check_prefix(prefix, sym_len, n_sym)
    L = len(prefix) + (n_sym - given) + 1        # the longest a line can get: 1 symbol a token
    out = torch.full((n, L), tk.PAD_ID, dtype=torch.long, device=device)
    out[:, :len(prefix)] = torch.tensor(prefix, device=device)
    remaining = torch.full((n,), n_sym - given, dtype=torch.long, device=device)
    ended = torch.zeros(n, dtype=torch.bool, device=device)
    rows = torch.arange(n, device=device)
    x = torch.tensor([prefix], device=device)                            # (1, P)
    cache = model.new_cache(1) if settings.use_cache else None
    logits = model(x, kv_cache=cache)[0][:, -1].expand(n, -1)           # (n, V): prefill once
    if cache is not None:
        cache = cache.expand(n)
    t = len(prefix)
    while True:
        allowed, fin = _allowed(sym_len > 0, sym_len, remaining, ended, rows)
        logits = logits.float()
        if not bool(torch.isfinite(logits).any(-1).all()) or bool(logits.isnan().any()):
            raise SamplingError("the model produced NaN or infinite logits: its weights are "
                                "broken (a diverged or corrupt checkpoint)")
        logits = logits.masked_fill(~allowed, float("-inf"))
        tok = sample_next_token(logits, generator, settings.temperature, settings.top_k,
                                settings.top_p)                     # (n,)
        out[:, t] = tok
        remaining -= sym_len[tok]
        ended |= fin
        if on_step:
            on_step(t, out)
        t += 1
        if bool((remaining == 0).all()):   # the rest is ')' (or <pad>), nothing to sample
            out[:, t] = torch.where(ended, tk.PAD_ID, tk.END_ID)
            break
        if cache is not None:
            logits = model(tok[:, None], kv_cache=cache)[0][:, -1]      # (n, V)
        else:
            logits = model(out[:, :t])[0][:, -1]                        # (n, V)
    return out[:, :t + 1]


def digit_seed(seed: int, digit: int) -> int:
    """The seed contract: digit d's candidates come from generator seed*100 + d, so
    `--digits 3` gives the same 3s as `--digits 0-9`."""
    return seed * 100 + digit


def sample_digits(model, digits: list[int], n: int, settings: SampleSettings, seed: int = 0,
                  device="cpu", grammar: tk.Grammar | None = None, on_step=None) -> dict[int, list[str]]:
    """n lines for each class digit -> {digit: lines}. The one entry point for unconditional
    generation (CLI, evaluation, API, benchmarks): it owns the seed contract (digit_seed).
    on_step(digit, t, tokens) is called after each position of each digit."""
    out = {}
    for d in digits:
        gen = make_generator(digit_seed(seed, d), device)
        step = (lambda t, toks, d=d: on_step(d, t, toks)) if on_step else None
        toks = generate(model, [d], n, gen, settings, device, step, grammar)
        out[d] = tokens_to_lines(toks, grammar)
    return out


def complete_prefixes(model, prefixes: list[list[int]], n: int, settings: SampleSettings,
                      seed: int = 0, device="cpu", grammar: tk.Grammar | None = None,
                      on_step=None) -> list[list[str]]:
    """n completions of each token prefix (class digit + given body tokens) -> lines per prefix;
    prefix j samples from generator seed*100 + j."""
    out = []
    for j, prefix in enumerate(prefixes):
        gen = make_generator(digit_seed(seed, j), device)
        step = (lambda t, toks, j=j: on_step(j, t, toks)) if on_step else None
        out.append(tokens_to_lines(generate(model, prefix, n, gen, settings, device, step, grammar),
                                   grammar))
    return out


def tokens_to_lines(tokens: torch.Tensor, grammar: tk.Grammar | None = None) -> list[str]:
    """(N, L) ids of well-formed lines -> text (equals the tokenizer's decode)."""
    if grammar is not None and not grammar.is_character:
        return [grammar.decode(r) for r in tokens.cpu().tolist()]
    table = np.frombuffer("".join(tk.VOCAB[:tk.PAD_ID]).encode("ascii"), dtype=np.uint8)
    arr = table[tokens.cpu().numpy()]      # one character per token: vectorized
    return [r.tobytes().decode("ascii") for r in arr]


def make_generator(seed: int, device="cpu") -> torch.Generator:
    return torch.Generator(device=torch.device(device)).manual_seed(seed)


@dataclass
class Reranked:
    digit: int
    lines: list[str]          # all candidates, in generation order
    scores: np.ndarray        # p(digit | image) under the reranker, per candidate
    kept: np.ndarray          # indices into lines, best first, distinct images


def rerank(digit: int, lines: list[str], reranker, keep: int, temperature: float = 0.8,
           bpp: int = 1) -> Reranked:
    """Score candidates by the classifier's p(digit | image) at `temperature`, keep the best
    `keep` distinct images. temperature must be > 0 (0 would divide by zero, a negative one
    would invert the ranking)."""
    if not temperature > 0 or not np.isfinite(temperature):
        raise ValueError(f"classifier temperature must be a finite number > 0, got {temperature}")
    levels = codec.binarize(codec.decode_batch(lines, bpp)[1], bpp)
    p = classifier.probs(reranker, levels, temperature)[:, digit].cpu().numpy()
    order = np.argsort(-p, kind="stable")
    kept, seen = [], set()
    for i in order:
        if lines[i] in seen:
            continue
        seen.add(lines[i])
        kept.append(i)
        if len(kept) == keep:
            break
    return Reranked(digit, lines, p, np.asarray(kept))

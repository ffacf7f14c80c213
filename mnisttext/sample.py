"""Sampling: batched autoregressive generation with a KV cache, and classifier reranking.

    python cli.py generate --digits 0-9                 # 64 candidates each, best 8 kept
    python cli.py complete --indices 0,1,2 --rows 14     # finish half-drawn test digits

Every generated line is well-formed by construction: the body may only be symbols (or BPE runs
of them) that spell exactly 150*bpp symbols, then ')', and that keep the padding pixels at 0.
The class prefix (with one token per character, also the first pixel row: all padding) is run
through the model once and its cache is then copied to all candidates; the last pixel row is
written without decode steps.
"""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
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
    probs = _probs(logits, temperature, top_k, top_p)                     # (B, V)
    u = torch.rand(probs.shape[0], 1, generator=generator, device=probs.device)
    return _draw(probs, u)


@dataclass
class SampleSettings:
    temperature: float = 0.8
    top_k: int | None = None
    top_p: float | None = None
    use_cache: bool = True
    bpp: int = 1


class SamplingError(RuntimeError):
    """The model gave logits that cannot be sampled (NaN or all -inf); says what produced them."""


def _allowed(body, sym_len, remaining, ended, rows, padding):
    """(n, V) bool: the tokens each row may take next under the line grammar; padding (n_sym+1,
    V) says which keep the padding pixels at 0 after each number of symbols spelled (a row
    that no such token fits, which only a grammar without single symbols can lead to, keeps
    the grammar alone)."""
    fin = remaining == 0                      # spelled out: ')' now, <pad> after it
    allowed = body & (sym_len <= remaining[:, None])                    # (n, V)
    kept = allowed & padding[len(padding) - 1 - remaining]
    allowed = torch.where(kept.any(-1, keepdim=True), kept, allowed)
    if fin.any():
        allowed[fin] = False
        allowed[rows[fin], torch.where(ended[fin], tk.PAD_ID, tk.END_ID)] = True
    return allowed, fin


def _check_prefix(prefix, sym_len, n_sym) -> int:
    body = sym_len > 0
    if not prefix or not 0 <= prefix[0] <= 9 or not all(
            0 <= i < len(body) and body[i] for i in prefix[1:]):
        raise ValueError("prefix must be a class digit followed by body tokens")
    given = int(sym_len[prefix[1:]].sum())
    if given >= n_sym:
        raise ValueError(f"prefix spells {given} symbols; at most {n_sym - 1} may be given")
    return given


# Rows of a decode batch are computed independently of each other only above a few rows: with
# fewer, MKL's fp32 GEMM takes another kernel (at M <= 3 on one thread, at M < 12 and not a
# multiple of 4 on two). Batches are padded to this many rows, so a row's logits are the same
# whatever else is decoded beside it (tuning.decode_plan checks it on the real model).
MIN_ROWS = 16


@dataclass
class Group:
    """n candidates of one prefix, their random numbers from their own generator."""
    prefix: list[int]
    n: int
    generator: torch.Generator
    on_step: object = None          # on_step(t, tokens of this group) or None


@torch.inference_mode()
def generate(model, prefix: list[int], n: int, generator: torch.Generator,
             settings: SampleSettings = SampleSettings(), device="cpu", on_step=None,
             grammar: tk.Grammar | None = None) -> torch.Tensor:
    """Complete `prefix` (class digit, then tokens of the first symbols) into n full lines
    -> (n, L) token ids; with BPE tokens, lines end at different places and <pad> follows ')'.

    Constrained decoding: a row may only take body tokens that fit in its remaining symbols and
    keep the padding pixels at 0, and once its 150*bpp symbols are spelled, ')' and then <pad>.
    on_step(t, tokens) is called after position t is filled (the padding written without decode
    steps: once per run of it, see generate_groups). The model runs in its own dtype (see
    tuning.prepare_for_sampling)."""
    return generate_groups(model, [Group(prefix, n, generator, on_step)], settings, device, grammar)[0]


@torch.inference_mode()
def generate_groups(model, groups: list[Group], settings: SampleSettings = SampleSettings(),
                    device="cpu", grammar: tk.Grammar | None = None, workers: int = 1,
                    kv_int8: bool = False) -> list[torch.Tensor]:
    """Several `generate` calls as one batch -> each group's (n, L) tokens, the same tokens as
    each group alone (row results do not depend on the batch: see MIN_ROWS). Prefixes must
    have the same length in tokens.

    Each group's prefix runs through the model once (batch 1) and its cache is copied to its n
    rows; then every step runs all rows at once, split into `workers` slices of rows, each
    slice's forward in its own thread with one torch thread (see Workers), in lockstep: the
    sampling, the random numbers and on_step stay in the calling thread. A group's uniforms are
    drawn from its own generator, n per step in row order, for as long as it would run alone:
    once all its lines are spelled out (BPE lines end at different steps) it draws nothing
    more, and its rows ride along on ')' and <pad> until the last group ends. With one token
    per character the leading and trailing all-padding symbols (':'; bpp 1: the first and last
    pixel rows) take no decode steps: the leading ones are prefilled with the prefix (on_step
    once, at their last position), the trailing ones written once the rest is sampled (on_step
    once, at the line's last symbol). kv_int8
    keeps the decode's keys and values in int8 (KVCache.cat; where the native kernel runs)."""
    n_sym = codec.n_symbols(settings.bpp)
    grammar = grammar or tk.Grammar.character()
    device = torch.device(device)
    _check_settings(settings)
    if not groups:
        return []
    sym_len = torch.as_tensor(grammar.sym_len, device=device)                  # (V,)
    padding = torch.as_tensor(grammar.padding_table(settings.bpp), device=device)   # (n_sym+1, V)
    lead, tail = grammar.forced_padding(settings.bpp)
    original = [len(g.prefix) for g in groups]
    groups = [_with_lead(g, lead, sym_len, n_sym) for g in groups]
    b = _layout(groups, n_sym, sym_len, device)
    logits, caches = _prefill(model, groups, b.counts, settings.use_cache, device)   # (Rp, V)
    if lead:
        _report_prefix(groups, b, original)
    slices = _slices(b.Rp, workers if device.type == "cpu" else 1)
    slice_caches = [_join_caches(caches, b.counts, s, kv_int8) for s in slices] if settings.use_cache else None
    active, ends = [True] * len(groups), list(b.lengths)
    t = b.P
    with Workers(len(slices)) as pool:
        while True:
            allowed, fin = _allowed(sym_len > 0, sym_len, b.remaining, b.ended, b.rows, padding)
            logits = _checked(logits).masked_fill(~allowed, float("-inf"))
            u = _uniforms(groups, b, active, device) if settings.temperature > 0 else None
            tok = _sample_rows(logits, u, settings.temperature, settings.top_k, settings.top_p)   # (Rp,)
            b.out[:, t] = tok
            b.remaining -= sym_len[tok]
            b.ended |= fin
            t += 1
            _close_groups(groups, b, t, active, ends, tail)
            if not any(active):
                break

            def forward(i, t=t, tok=tok):                  # one slice of rows -> (rows, V)
                s = slices[i]
                if slice_caches is not None:
                    return model(tok[s, None], kv_cache=slice_caches[i])[0][:, -1]
                return model(b.out[s, :t])[0][:, -1]

            logits = torch.cat(pool.map(forward, range(len(slices))))             # (Rp, V)
    return [b.out[r, :e] for r, e in zip(b.rows_of, ends)]


@dataclass
class _Batch:
    """The rows of several groups decoded together (and the dummy rows that pad it)."""
    P: int                    # prefix length in tokens, the same for every group
    lengths: list             # the longest each group's lines can get
    rows_of: list             # each group's rows (slices)
    counts: list              # rows holding each group's prefix (the last group's padding too)
    out: torch.Tensor         # (Rp, L) tokens
    remaining: torch.Tensor   # (Rp,) symbols still to spell
    ended: torch.Tensor       # (Rp,) ')' written
    rows: torch.Tensor        # (Rp,) row indices
    Rp: int


def _layout(groups, n_sym, sym_len, device) -> _Batch:
    P = len(groups[0].prefix)
    if any(len(g.prefix) != P for g in groups):
        raise ValueError("groups decoded together need prefixes of the same length")
    given = [_check_prefix(g.prefix, sym_len, n_sym) for g in groups]
    lengths = [P + (n_sym - gv) + 1 for gv in given]   # the longest a line can get: 1 symbol a token
    sizes = [g.n for g in groups]
    R = sum(sizes)
    pad = max(0, MIN_ROWS - R)                          # dummy rows: a copy of the last group's
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    rows_of = [slice(a, a + n) for a, n in zip(starts, sizes)]
    counts = sizes[:-1] + [sizes[-1] + pad]
    out = torch.full((R + pad, max(lengths)), tk.PAD_ID, dtype=torch.long, device=device)
    for g, r in zip(groups, rows_of):
        out[r, :P] = torch.tensor(g.prefix, device=device)
    out[R:, :P] = out[R - 1, :P]
    remaining = torch.tensor([n_sym - gv for gv, n in zip(given, counts) for _ in range(n)],
                             dtype=torch.long, device=device)
    return _Batch(P, lengths, rows_of, counts, out, remaining,
                  torch.zeros(R + pad, dtype=torch.bool, device=device),
                  torch.arange(R + pad, device=device), R + pad)


def _prefill(model, groups, counts, use_cache: bool, device):
    """Each prefix once, at batch 1 (as a group alone would), its logits copied to its rows."""
    logits, caches = [], []
    for g in groups:
        cache = model.new_cache(1) if use_cache else None
        logits.append(model(torch.tensor([g.prefix], device=device), kv_cache=cache)[0][:, -1])
        caches.append(cache)
    return torch.cat([lg.expand(c, -1) for lg, c in zip(logits, counts)]), caches


def _checked(logits: torch.Tensor) -> torch.Tensor:
    logits = logits.float()
    if not bool(torch.isfinite(logits).any(-1).all()) or bool(logits.isnan().any()):
        raise SamplingError("the model produced NaN or infinite logits (a diverged or corrupt "
                            "checkpoint; with --dtype bf16, try --dtype fp32)")
    return logits


def _uniforms(groups, b: _Batch, active, device) -> torch.Tensor:
    """(Rp, 1): each active group's n uniforms from its own generator, in row order."""
    u = torch.zeros(b.Rp, 1, device=device)
    for g, r, a in zip(groups, b.rows_of, active):
        if a:
            u[r] = torch.rand(g.n, 1, generator=g.generator, device=device)
    return u


def _with_lead(g: Group, lead: int, sym_len, n_sym: int) -> Group:
    """g with the all-padding symbols that follow its prefix (one token per character) appended
    to the prefix: they are ':' in every line, so the prefill writes them, not decode steps."""
    given = _check_prefix(g.prefix, sym_len, n_sym)
    if given >= lead:
        return g
    return Group(list(g.prefix) + [tk.SYMBOL_OFFSET] * (lead - given), g.n, g.generator, g.on_step)


def _report_prefix(groups, b: _Batch, original) -> None:
    """on_step for the position a lead of padding symbols ends at (as if decoded)."""
    for i, (g, r) in enumerate(zip(groups, b.rows_of)):
        if g.on_step and len(g.prefix) > original[i]:
            g.on_step(b.P - 1, b.out[r, :b.lengths[i]])


def _close_groups(groups, b: _Batch, t: int, active, ends, tail: int = 0) -> None:
    """on_step for each active group; a group whose lines are spelled but for the last `tail`
    symbols (all padding: ':' in every line; one token per character) gets them and its ')'
    now."""
    spelled = b.remaining <= tail
    for i, (g, r) in enumerate(zip(groups, b.rows_of)):
        if not active[i]:
            continue
        if g.on_step:
            g.on_step(t - 1, b.out[r, :b.lengths[i]])
        if bool(spelled[r].all()):        # the rest is padding and ')' (or <pad>): no sampling
            k = int(b.remaining[r].max())         # the same in every row (one token a symbol)
            if k:
                b.out[r, t:t + k] = tk.SYMBOL_OFFSET
                b.remaining[r] = 0
                if g.on_step:
                    g.on_step(t + k - 1, b.out[r, :b.lengths[i]])
            b.out[r, t + k] = torch.where(b.ended[r], tk.PAD_ID, tk.END_ID)
            active[i], ends[i] = False, t + k + 1


def _slices(rows: int, workers: int) -> list[slice]:
    """`workers` contiguous slices of rows (fewer where a slice would have under MIN_ROWS)."""
    w = max(1, min(workers, rows // MIN_ROWS))
    b = [rows * i // w for i in range(w + 1)]
    return [slice(b[i], b[i + 1]) for i in range(w)]


def _join_caches(caches, counts, rows: slice, int8: bool = False):
    """The cache of rows[start:stop] of the batch whose first counts[0] rows continue caches[0],
    the next counts[1] caches[1], and so on (int8: keys and values stored as int8)."""
    parts, start = [], 0
    for c, n in zip(caches, counts):
        lo, hi = max(start, rows.start), min(start + n, rows.stop)
        if hi > lo:
            parts.append((c, hi - lo))
        start += n
    join = getattr(type(parts[0][0]), "cat", None)
    if join is None:
        if len(parts) == 1:
            return parts[0][0].expand(parts[0][1])
        raise TypeError(f"{type(parts[0][0]).__name__} cannot join the caches of several prefixes")
    return join([c for c, _ in parts], [n for _, n in parts], int8=int8)


class Workers:
    """A decode step's forwards of several row slices at once: slice 0 in the calling thread,
    the others in threads of a pool, every thread (the calling one too, for the duration) with
    one torch thread. torch ops release the GIL, so the slices run in parallel; unlike torch's
    own threads (OpenMP, a barrier after every op) a slice never waits for another mid-step, so
    a core shared with another process slows one slice, not every op (docs/performance.md)."""

    def __init__(self, n: int):
        self.n = n
        self.pool = None

    def __enter__(self):
        if self.n > 1:
            self.old = torch.get_num_threads()
            torch.set_num_threads(1)
            self.pool = ThreadPoolExecutor(self.n - 1, initializer=_one_torch_thread)
        return self

    def map(self, fn, items) -> list:
        items = list(items)
        if self.pool is None:
            return [fn(i) for i in items]
        futures = [self.pool.submit(_inference, fn, i) for i in items[1:]]
        first = fn(items[0])
        return [first] + [f.result() for f in futures]

    def __exit__(self, *exc):
        if self.pool is not None:
            self.pool.shutdown()
            torch.set_num_threads(self.old)


def _one_torch_thread():
    torch.set_num_threads(1)


def _inference(fn, i):
    with torch.inference_mode():             # thread-local: the pool's threads need their own
        return fn(i)


def _check_settings(settings: SampleSettings) -> None:
    if settings.temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {settings.temperature}")
    if settings.top_p is not None and not 0 < settings.top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {settings.top_p}")


def _sample_rows(logits, u, temperature, top_k, top_p):
    """sample_next_token with the uniforms given: (B, V) logits, (B, 1) u in [0, 1)."""
    if temperature == 0:
        return logits.argmax(-1)
    probs = _probs(logits, temperature, top_k, top_p)
    return _draw(probs, u)


def _probs(logits, temperature, top_k, top_p):
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
    return F.softmax(logits, dim=-1)                                      # (B, V)


def _draw(probs, u):
    """Inverse-CDF sampling, one uniform per row: torch.multinomial draws an exponential for
    every vocabulary entry, which with 512 BPE tokens took ~10% of a decode step on a CPU."""
    # flat across zero-probability tokens even where cumsum is a parallel scan (CUDA)
    cdf = torch.where(probs > 0, probs.cumsum(-1), 0).cummax(-1).values      # (B, V)
    # the first index whose cdf exceeds u has non-zero probability: masked tokens are never drawn
    return torch.searchsorted(cdf, u * cdf[:, -1:], right=True).squeeze(-1).clamp_(max=cdf.shape[-1] - 1)


def digit_seed(seed: int, digit: int) -> int:
    """The seed contract: digit d's candidates come from generator seed*100 + d, so
    `--digits 3` gives the same 3s as `--digits 0-9`."""
    return seed * 100 + digit


DEFAULT_ROWS = 1024      # rows per decode batch where the model carries no measured plan


def _plan(model) -> dict:
    """The sampler's decode plan (tuning.prepare_for_sampling attaches one): rows per batch,
    whether groups may share a batch, the (workers, torch threads) for large batches and for
    small ones (up to small_rows rows; the large config where the plan has none), the keys' and
    values' storage; defaults for a bare model."""
    plan = getattr(model, "decode_plan", None) or {}
    large = (int(plan.get("workers") or 1), int(plan.get("threads") or 0))
    small = tuple(int(x) for x in plan.get("small") or large)
    return {"rows": int(plan.get("rows") or DEFAULT_ROWS),
            "together": bool(plan.get("row_invariant", True)),
            "large": large, "small": small, "small_rows": int(plan.get("small_rows") or 0),
            "kv_int8": plan.get("kv") == "int8"}


def _batches(idx: list[int], sizes: list[int], rows: int, together: bool):
    """Consecutive groups (their indices), whole, in batches of at most `rows` rows (a bigger
    group alone); one group a batch where groups may not share one."""
    batch, size = [], 0
    for i, n in zip(idx, sizes):
        if batch and (not together or size + n > rows):
            yield batch
            batch, size = [], 0
        batch.append(i)
        size += n
    if batch:
        yield batch


def _run(model, groups, settings, device, grammar):
    """generate_groups over batches sized by the sampler's plan, each with the plan's workers and
    threads for its size; prefixes of different lengths go in different batches. With several
    workers, a batch of at least as many groups is split between them by groups, each worker
    decoding its share on its own (no step waits for another: the workers drift apart, one
    reading its cache while another multiplies); a batch of fewer groups is split by rows, in
    lockstep (generate_groups)."""
    plan = _plan(model)
    together = plan["together"]
    if settings.use_cache and not hasattr(type(model.new_cache(1)), "cat"):
        together = False                  # a cache that cannot join others (the GRU's)
    by_len: dict[int, list[int]] = {}
    for i, g in enumerate(groups):
        by_len.setdefault(len(g.prefix), []).append(i)
    cpu = torch.device(device).type == "cpu"
    out = [None] * len(groups)
    lock = threading.Lock()

    def decode(batch, w):
        toks = generate_groups(model, [groups[i] for i in batch], settings, device, grammar, w,
                               plan["kv_int8"])
        for i, t in zip(batch, toks):
            out[i] = t

    for idx in by_len.values():
        for batch in _batches(idx, [groups[i].n for i in idx], plan["rows"], together):
            rows = sum(groups[i].n for i in batch)
            workers, threads = plan["small"] if rows <= plan["small_rows"] else plan["large"]
            workers = max(1, min(workers, torch.get_num_threads())) if cpu else 1
            with decode_threads(threads):
                if workers > 1 and together and len(batch) >= workers:
                    shares = _shares(batch, [groups[i].n for i in batch], workers)
                    for i in batch:               # callbacks one at a time, from any worker
                        groups[i] = _locked(groups[i], lock)
                    with Workers(len(shares)) as pool:
                        pool.map(lambda k: decode(shares[k], 1), range(len(shares)))
                else:
                    decode(batch, workers)
    return out


def _shares(batch: list[int], sizes: list[int], n: int) -> list[list[int]]:
    """batch (group indices) cut into n consecutive shares of about equal rows."""
    total, shares, acc = sum(sizes), [[] for _ in range(n)], 0
    for i, size in zip(batch, sizes):
        k = min(n - 1, acc * n // total)
        shares[k].append(i)
        acc += size
    return [s for s in shares if s]


def _locked(group: Group, lock) -> Group:
    if group.on_step is None:
        return group
    fn = group.on_step

    def step(t, toks):
        with lock:
            fn(t, toks)
    return Group(group.prefix, group.n, group.generator, step)


class decode_threads:
    """Run the block with n torch CPU threads where that is fewer than now (a caller's own
    limit stands; 0: as they are), then restore them."""

    def __init__(self, n: int):
        self.n = n

    def __enter__(self):
        self.old = torch.get_num_threads()
        if 0 < self.n < self.old:
            torch.set_num_threads(self.n)

    def __exit__(self, *exc):
        if torch.get_num_threads() != self.old:
            torch.set_num_threads(self.old)


def sample_digits(model, digits: list[int], n: int, settings: SampleSettings, seed: int = 0,
                  device="cpu", grammar: tk.Grammar | None = None, on_step=None) -> dict[int, list[str]]:
    """n lines for each class digit -> {digit: lines}. The one entry point for unconditional
    generation (CLI, evaluation, API, benchmarks): it owns the seed contract (digit_seed) and
    decodes the digits together, in batches sized by the sampler's measured plan.
    on_step(digit, t, tokens) is called after each decoded position of each digit (and once for
    each run of padding written without decoding), with that digit's (n, L) tokens."""
    groups = []
    for d in digits:
        step = (lambda t, toks, d=d: on_step(d, t, toks)) if on_step else None
        groups.append(Group([d], n, make_generator(digit_seed(seed, d), device), step))
    toks = _run(model, groups, settings, device, grammar)
    return {d: tokens_to_lines(t, grammar) for d, t in zip(digits, toks)}


def complete_prefixes(model, prefixes: list[list[int]], n: int, settings: SampleSettings,
                      seed: int = 0, device="cpu", grammar: tk.Grammar | None = None,
                      on_step=None) -> list[list[str]]:
    """n completions of each token prefix (class digit + given body tokens) -> lines per prefix;
    prefix j samples from generator seed*100 + j. Prefixes of the same length decode together."""
    groups = []
    for j, prefix in enumerate(prefixes):
        step = (lambda t, toks, j=j: on_step(j, t, toks)) if on_step else None
        groups.append(Group(list(prefix), n, make_generator(digit_seed(seed, j), device), step))
    return [tokens_to_lines(t, grammar) for t in _run(model, groups, settings, device, grammar)]


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

"""Evaluation: exact test NLL, generative classification, sample quality.

    python cli.py eval                                    # shipped checkpoints, rich table
    python cli.py eval --json --checkpoint runs/x/best
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REAL_PIXELS = 784      # bits per pixel are reported over the 28x28 real pixels


def autocast(device: str | torch.device, dtype: str = "auto"):
    """bf16 autocast where the hardware has it (CUDA, or a CPU with AVX-512 bf16 / AMX)."""
    device = torch.device(device)
    use = dtype == "bf16" or (dtype == "auto" and bf16_supported(device))
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=use)


def bf16_supported(device) -> bool:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        cap = torch.backends.cpu.get_cpu_capability()
        return "AVX512" in cap.upper() or "AMX" in cap.upper()
    return False


@torch.inference_mode()
def token_logprobs(model, tokens: torch.Tensor, batch_size: int = 256, device="cpu",
                   dtype: str = "auto") -> torch.Tensor:
    """(N, L) token ids -> (N, L-1) log p(token t | tokens < t), in float32; 0 at <pad>."""
    from .tokenizer import PAD_ID
    out = []
    for s in range(0, len(tokens), batch_size):
        x = tokens[s:s + batch_size].to(device, torch.long)
        with autocast(device, dtype):
            logits, _ = model(x[:, :-1])
        lp = F.log_softmax(logits.float(), dim=-1)
        lp = lp.gather(-1, x[:, 1:, None]).squeeze(-1)                   # (B, L-1)
        out.append(lp.masked_fill(x[:, 1:] == PAD_ID, 0.0).cpu())
    return torch.cat(out) if out else torch.zeros(0, tokens.shape[1] - 1)


def nll_per_image(model, tokens: torch.Tensor, batch_size: int = 256, device="cpu",
                  dtype: str = "auto") -> np.ndarray:
    """Negative log-likelihood in nats of each line given its class digit (symbols + ')').

    With BPE tokens this is the NLL of the line's own tokenization: the sum over its tokens, so
    per image like the character model's (an upper bound on -log p(image), as the model could
    also spell the image with other token sequences)."""
    return (-token_logprobs(model, tokens, batch_size, device, dtype).sum(1)).numpy()


def nats_to_bits_per_pixel(nats: float) -> float:
    return nats / (REAL_PIXELS * math.log(2))


# ---------------------------------------------------------------------------------------------
# generative classification

@torch.inference_mode()
def class_logprobs(model, tokens: torch.Tensor, batch_size: int = 256, device="cpu",
                   dtype: str = "auto") -> np.ndarray:
    """(N, L) lines -> (N, 10) log p(line body | class c) for every class prefix c."""
    out = np.zeros((len(tokens), 10))
    for c in range(10):
        t = tokens.clone()
        t[:, 0] = c
        out[:, c] = -nll_per_image(model, t, batch_size, device, dtype)
    return out


def generative_accuracy(logp: np.ndarray, labels: np.ndarray) -> float:
    """Bayes' rule with a uniform prior: predict argmax_c log p(x | c)."""
    return float((logp.argmax(1) == labels).mean())


# ---------------------------------------------------------------------------------------------
# sample statistics

def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to feature sets a (N, D) and b (M, D)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    # tr sqrt(s1 s2) from the eigenvalues of sqrt(s1) s2 sqrt(s1), which is symmetric PSD
    w, v = np.linalg.eigh(s1)
    r1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    ev = np.linalg.eigvalsh(r1 @ s2 @ r1)
    tr_sqrt = np.sqrt(np.clip(ev, 0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt)


def _bits(levels: np.ndarray) -> np.ndarray:
    return (np.asarray(levels).reshape(len(levels), -1) > 0).astype(np.float32)


def hamming_matrix(a: np.ndarray, b: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """Pairwise Hamming distances between binary images a (N, 30, 30) and b (M, 30, 30)."""
    x, y = _bits(a), _bits(b)
    xs, ys = x.sum(1), y.sum(1)
    out = np.empty((len(x), len(y)), dtype=np.float32)
    for s in range(0, len(y), chunk):
        out[:, s:s + chunk] = xs[:, None] + ys[None, s:s + chunk] - 2 * (x @ y[s:s + chunk].T)
    return np.rint(out)


def mean_pairwise_hamming(levels: np.ndarray) -> float:
    n = len(levels)
    if n < 2:
        return 0.0
    d = hamming_matrix(levels, levels)
    return float(d.sum() / (n * (n - 1)))


def diversity(levels: np.ndarray, labels: np.ndarray, reference: np.ndarray,
              ref_labels: np.ndarray) -> float:
    """Mean within-class pairwise Hamming distance of samples over the same for `reference`."""
    ours = [mean_pairwise_hamming(levels[labels == c]) for c in range(10) if (labels == c).sum() > 1]
    ref = [mean_pairwise_hamming(reference[ref_labels == c]) for c in range(10)
           if (ref_labels == c).sum() > 1]
    return float(np.mean(ours) / np.mean(ref))


def copies(sample_lines: list[str], sample_levels: np.ndarray, train_lines: set[str],
           train_levels: np.ndarray) -> dict:
    """Share of samples identical to a training line, and nearest-neighbour Hamming distances."""
    exact = float(np.mean([l in train_lines for l in sample_lines]))
    nn = hamming_matrix(sample_levels, train_levels).min(1)
    q = np.percentile(nn, [0, 5, 25, 50, 75, 95])
    return {"copy_rate": exact, "nn_hamming_min": float(q[0]), "nn_hamming_p5": float(q[1]),
            "nn_hamming_p25": float(q[2]), "nn_hamming_median": float(q[3]),
            "nn_hamming_p75": float(q[4]), "nn_hamming_p95": float(q[5])}


# ---------------------------------------------------------------------------------------------
# the whole evaluation of one checkpoint

class Timer:
    def __init__(self):
        self.seconds = {}

    def __call__(self, name):
        import contextlib
        import time

        @contextlib.contextmanager
        def cm():
            t0 = time.perf_counter()
            yield
            self.seconds[name] = round(time.perf_counter() - t0, 3)
        return cm()


def evaluate_checkpoint(model_dir, corpus_dir="corpus", classifier_dir="checkpoints/classifier",
                        eval_classifier_dir="checkpoints/eval_classifier", samples_per_class=100,
                        temperatures=(1.0, 0.8), gen_class_images=1000, rerank_candidates=64,
                        rerank_keep=8, seed=0, device="cpu", dtype="auto", log=None,
                        reference_cache: dict | None = None) -> dict:
    """Every number of the evaluation for one character-model checkpoint, as a flat dict."""
    from . import checkpoint, codec, data, sample
    from . import tokenizer as tk
    from .classifier import features, load_classifier, predict_logits
    log = log or (lambda s: None)
    timer = Timer()
    model, config, tok = checkpoint.load_model(model_dir, device)
    grammar = tk.Grammar.of(tok)
    bpp = codec.bpp_of_length(config.block_size)
    res = {"checkpoint": str(model_dir), "corpus": str(corpus_dir), "arch": config.arch,
           "params": model.num_params(), "bpp": bpp, "vocab_size": config.vocab_size}
    # reference statistics are per corpus (a 4-bit or a dynamically binarized one differs)
    shared = reference_cache if reference_cache is not None else {}
    cache = shared.setdefault(str(Path(corpus_dir).resolve()), {})

    with timer("test_nll"):
        test_tokens = torch.from_numpy(data.load_split(corpus_dir, "test", tok))
        nll = nll_per_image(model, test_tokens, device=device, dtype=dtype)
    res.update(test_nll_nats=float(nll.mean()), test_nll_images=len(nll),
               tokens_per_image=float((test_tokens != tk.PAD_ID).sum() / len(test_tokens)),
               test_bits_per_pixel=nats_to_bits_per_pixel(float(nll.mean())))
    log(f"test NLL {nll.mean():.2f} nats/image")

    with timer("generative_classification"):
        sub = test_tokens[:gen_class_images]
        labels = sub[:, 0].numpy()
        lp = class_logprobs(model, sub, device=device, dtype=dtype)
    res.update(generative_accuracy=generative_accuracy(lp, labels),
               generative_accuracy_images=len(sub))
    log(f"generative classification {res['generative_accuracy']:.4f}")

    clf, _ = load_classifier(eval_classifier_dir, device)
    reranker, _ = load_classifier(classifier_dir, device)
    with timer("reference_features"):
        if "test" not in cache:
            test_lines = data.read_lines(Path(corpus_dir) / "test.txt")
            train_lines = data.read_lines(Path(corpus_dir) / "train.txt")
            tl, tv = codec.decode_batch(test_lines, bpp)
            rl, rv = codec.decode_batch(train_lines, bpp)
            cache.update(test=(tl, codec.binarize(tv, bpp)), train=(rl, codec.binarize(rv, bpp)),
                         train_set=set(train_lines))
            cache["test_feat"] = features(clf, cache["test"][1])
            cache["train_feat"] = features(clf, cache["train"][1][:10_000])
            cache["floor"] = frechet_distance(cache["train_feat"], cache["test_feat"])
    res["frechet_floor_train_vs_test"] = cache["floor"]
    test_labels, test_levels = cache["test"]
    train_labels, train_levels = cache["train"]

    def sample_stats(prefix, lines, digits):
        labels_, levels_ = codec.decode_batch(lines, bpp)
        levels_ = codec.binarize(levels_, bpp)
        pred = predict_logits(clf, levels_).argmax(-1).cpu().numpy()
        res[f"{prefix}_conditional_accuracy"] = float((pred == np.asarray(digits)).mean())
        res[f"{prefix}_frechet"] = frechet_distance(features(clf, levels_), cache["test_feat"])
        res[f"{prefix}_diversity"] = diversity(levels_, labels_, test_levels, test_labels)
        for k, v in copies(lines, levels_, cache["train_set"], train_levels).items():
            res[f"{prefix}_{k}"] = v
        res[f"{prefix}_samples"] = len(lines)

    sampler = sample.for_sampling(model, dtype)
    for temp in temperatures:
        name = f"raw_t{temp:g}".replace(".", "")
        with timer(f"sample_{name}"):
            lines, digits = [], []
            for d in range(10):
                gen = sample.make_generator(seed * 100 + d, device)
                st = sample.SampleSettings(temperature=temp, bpp=bpp)
                toks = sample.generate(sampler, [d], samples_per_class, gen, st, device, "fp32",
                                       grammar=grammar)
                lines += sample.tokens_to_lines(toks, grammar)
                digits += [d] * samples_per_class
        with timer(f"stats_{name}"):
            sample_stats(name, lines, digits)
        log(f"{name}: conditional accuracy {res[f'{name}_conditional_accuracy']:.4f}, "
            f"Fréchet {res[f'{name}_frechet']:.3f}")

    with timer("sample_reranked"):
        lines, digits = [], []
        for d in range(10):
            gen = sample.make_generator(seed * 100 + d, device)
            toks = sample.generate(sampler, [d], rerank_candidates, gen,
                                   sample.SampleSettings(temperature=0.8, bpp=bpp), device, "fp32",
                                   grammar=grammar)
            cand = sample.tokens_to_lines(toks, grammar)
            r = sample.rerank(d, cand, reranker, rerank_keep, 0.8, bpp)
            lines += [cand[i] for i in r.kept]
            digits += [d] * len(r.kept)
    res["rerank_seconds_per_digit"] = timer.seconds["sample_reranked"] / 10
    with timer("stats_reranked"):
        sample_stats("reranked", lines, digits)
    log(f"reranked: conditional accuracy {res['reranked_conditional_accuracy']:.4f}")
    res["seconds"] = timer.seconds
    return res

"""Metrics of a character model and of its samples: exact NLL, generative classification,
Frechet distance, diversity, copies of the training set.

    from mnisttext import metrics
    nll = metrics.nll_per_image(model, tokens)               # (N,) nats per line
    acc = metrics.generative_accuracy(metrics.class_logprobs(model, tokens), labels)

Pure functions of tensors and arrays; evaluate.py runs them over a checkpoint.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from .runtime import autocast
from .tokenizer import PAD_ID

REAL_PIXELS = 784      # bits per pixel are reported over the 28x28 real pixels


@torch.inference_mode()
def token_logprobs(model, tokens: torch.Tensor, batch_size: int = 256, device="cpu",
                   dtype: str = "auto", progress=None) -> torch.Tensor:
    """(N, L) token ids -> (N, L-1) log p(token t | tokens < t), in float32; 0 at <pad>.
    progress(lines done, lines) is called after each batch."""
    out = []
    for s in range(0, len(tokens), batch_size):
        x = tokens[s:s + batch_size].to(device, torch.long)
        with autocast(device, dtype):
            logits, _ = model(x[:, :-1])
        lp = F.log_softmax(logits.float(), dim=-1)
        lp = lp.gather(-1, x[:, 1:, None]).squeeze(-1)                   # (B, L-1)
        out.append(lp.masked_fill(x[:, 1:] == PAD_ID, 0.0).cpu())
        if progress:
            progress(min(s + batch_size, len(tokens)), len(tokens))
    return torch.cat(out) if out else torch.zeros(0, tokens.shape[1] - 1)


def nll_per_image(model, tokens: torch.Tensor, batch_size: int = 256, device="cpu",
                  dtype: str = "auto", progress=None) -> np.ndarray:
    """Negative log-likelihood in nats of each line given its class digit (symbols + ')').

    With BPE tokens this is the NLL of the line's own tokenization: the sum over its tokens, so
    per image like the character model's (an upper bound on -log p(image), as the model could
    also spell the image with other token sequences)."""
    return (-token_logprobs(model, tokens, batch_size, device, dtype, progress).sum(1)).numpy()


def nats_to_bits_per_pixel(nats: float) -> float:
    return nats / (REAL_PIXELS * math.log(2))


# ---------------------------------------------------------------------------------------------
# generative classification

@torch.inference_mode()
def class_logprobs(model, tokens: torch.Tensor, batch_size: int = 256, device="cpu",
                   dtype: str = "auto", progress=None) -> np.ndarray:
    """(N, L) lines -> (N, 10) log p(line body | class c) for every class prefix c.
    progress(passes done, 10) is called after each class."""
    out = np.zeros((len(tokens), 10))
    for c in range(10):
        t = tokens.clone()
        t[:, 0] = c
        out[:, c] = -nll_per_image(model, t, batch_size, device, dtype)
        if progress:
            progress(c + 1, 10)
    return out


def class_posterior(logp: np.ndarray) -> np.ndarray:
    """(N, 10) log p(x | c) -> (N, 10) p(c | x) by Bayes' rule with a uniform prior."""
    z = logp - logp.max(1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(1, keepdims=True)


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

"""Evaluation: exact test NLL, generative classification, sample quality.

    python cli.py eval                                    # shipped checkpoints, rich table
    python cli.py eval --json --checkpoint runs/x/best
"""
from __future__ import annotations

import math

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
    """(N, L) token ids -> (N, L-1) log p(token t | tokens < t), in float32."""
    out = []
    for s in range(0, len(tokens), batch_size):
        x = tokens[s:s + batch_size].to(device, torch.long)
        with autocast(device, dtype):
            logits, _ = model(x[:, :-1])
        lp = F.log_softmax(logits.float(), dim=-1)
        out.append(lp.gather(-1, x[:, 1:, None]).squeeze(-1).cpu())
    return torch.cat(out) if out else torch.zeros(0, tokens.shape[1] - 1)


def nll_per_image(model, tokens: torch.Tensor, batch_size: int = 256, device="cpu",
                  dtype: str = "auto") -> np.ndarray:
    """Negative log-likelihood in nats of each line given its class digit (symbols + ')')."""
    return (-token_logprobs(model, tokens, batch_size, device, dtype).sum(1)).numpy()


def nats_to_bits_per_pixel(nats: float) -> float:
    return nats / (REAL_PIXELS * math.log(2))

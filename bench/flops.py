"""Model FLOPs utilization: the FLOPs a DPO step needs, and the peak they are measured against.

Needed FLOPs per pair (policy forward + backward; reference log-probs precomputed): the body's
matmuls over the prompt once and both completions (6 x body matmul parameters per token), the LM
head only where a token is scored (6 x vocab x hidden per completion token), and causal attention
over the key positions each query may see: prompt+chosen causally, rejected over the prompt and
itself (12 x layers x hidden per query-key pair: QK^T and AV, forward and backward). Work an
implementation does beyond this (the prompt twice, the LM head over the prompt, padding) counts
for nothing, so every arm's MFU is measured against the same work and is proportional to its
tokens/s.

The peak is measured in the same run, on the same machine: on CPU the fp32 matmuls of the model's
own shapes (each linear's forward, input-gradient and weight-gradient GEMMs at the step's token
counts, FLOP-weighted), on GPU an 8192^3 bf16 matmul.
"""
from __future__ import annotations

import time
from collections import Counter


def _tri(n: int) -> int:
    return n * (n + 1) // 2


def body_linears(p: dict) -> list[tuple[int, int]]:
    """(in, out) of every decoder-layer linear of the Llama shape in preset `p`."""
    h, inter = p["hidden"], p["intermediate"]
    kv = p.get("kv_heads", p["heads"]) * (h // p["heads"])
    per_layer = [(h, h), (h, kv), (h, kv), (h, h), (h, inter), (h, inter), (inter, h)]
    return per_layer * p["layers"]


def pair_flops(p: dict, vocab: int, prompt: int, chosen: int, rejected: int) -> float:
    """Needed FLOPs of one pair's policy forward and backward (see the module docstring)."""
    body = sum(i * o for i, o in body_linears(p))
    attended = _tri(prompt + chosen) + rejected * prompt + _tri(rejected)
    return (
        6 * body * (prompt + chosen + rejected)
        + 6 * vocab * p["hidden"] * (chosen + rejected)
        + 12 * p["layers"] * p["hidden"] * attended
    )


def _best_seconds(fn, repeats: int, sync) -> float:
    fn()
    sync()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t0)
    return best


def cpu_matmul_peak(p: dict, vocab: int, tokens: int, scored: int, repeats: int = 3) -> dict:
    """FLOP/s of fp32 matmuls of the model's shapes: `tokens` rows through each body linear, `scored`
    rows through the LM head; forward, input-gradient and weight-gradient GEMMs, each shape weighted
    by how many of it the model has."""
    import torch

    shapes = [(i, o, tokens, n) for (i, o), n in Counter(body_linears(p)).items()] + [(p["hidden"], vocab, scored, 1)]
    flops = seconds = 0.0
    per_shape = []
    for i, o, m, count in shapes:
        x, w, g = torch.randn(m, i), torch.randn(o, i), torch.randn(m, o)
        t = sum(_best_seconds(f, repeats, lambda: None) for f in (lambda: x @ w.T, lambda: g @ w, lambda: g.T @ x))
        flops += count * 6 * m * i * o
        seconds += count * t
        per_shape.append({"in": i, "out": o, "rows": m, "count": count, "flop_per_s": 6 * m * i * o / t})
    return {"kind": "cpu fp32 matmul of the model's shapes", "flop_per_s": flops / seconds, "shapes": per_shape}


def gpu_bf16_peak(n: int = 8192, repeats: int = 10) -> dict:
    """FLOP/s of an n^3 bf16 matmul on random data (mean of `repeats` after 3 warm-ups, CUDA events)."""
    import torch

    a, b = (torch.randn(n, n, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        a @ b
    end.record()
    torch.cuda.synchronize()
    seconds = start.elapsed_time(end) / 1e3 / repeats
    return {"kind": f"cuda bf16 {n}^3 matmul", "flop_per_s": 2 * n**3 / seconds}

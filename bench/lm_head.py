"""The LM head's selective log-softmax, forward + backward: keeping the forward's softmax for
backward versus recomputing it there (one [rows, vocab] matmul fewer per chunk), and the naive
full log_softmax for scale. Rows are the completion tokens of a DPO micro-batch, the head is
SmolLM2's (49,152 x 576). Arms alternate for --repeats rounds; each arm's fastest run is reported.

    python -m bench.lm_head --json --out bench/results/lm_head_cpu.json
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from alignpipe.logprobs import naive_selective_log_softmax, selective_log_softmax


def _step(fn, h, w, t) -> float:
    h.grad = w.grad = None
    start = time.perf_counter()
    fn(h, w, t).sum().backward()
    return time.perf_counter() - start


def run(rows: int, vocab: int, hidden: int, repeats: int, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    h = torch.randn(rows, hidden, requires_grad=True)
    w = (torch.randn(vocab, hidden) * hidden**-0.5).requires_grad_()
    t = torch.randint(0, vocab, (rows,))
    arms = {
        "keep_softmax": lambda h, w, t: selective_log_softmax(h, w, t, keep_bytes=1 << 40),
        "recompute_softmax": lambda h, w, t: selective_log_softmax(h, w, t, keep_bytes=0),
        "naive_full_log_softmax": naive_selective_log_softmax,
    }
    for fn in arms.values():  # warm-up
        _step(fn, h, w, t)
    runs: dict[str, list[float]] = {name: [] for name in arms}
    for _ in range(repeats):
        for name, fn in arms.items():
            runs[name].append(_step(fn, h, w, t))
    best = {name: min(r) for name, r in runs.items()}
    return {
        "shape": {"rows": rows, "vocab": vocab, "hidden": hidden},
        "softmax_mb": rows * vocab * 4 / 2**20,
        "seconds_best": best,
        "seconds_all": runs,
        "speedup_keep_vs_recompute": best["recompute_softmax"] / best["keep_softmax"],
    }


def parser() -> argparse.ArgumentParser:
    """This bench's options (also what tests/test_readme.py parses the README's commands with)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[256, 1024])
    ap.add_argument("--vocab", type=int, default=49152)
    ap.add_argument("--hidden", type=int, default=576)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--out", type=Path)
    return ap


def main() -> None:
    args = parser().parse_args()
    from bench.machine import machine_info

    result = {"benchmark": "lm_head", "machine": machine_info(), "results": [run(r, args.vocab, args.hidden, args.repeats) for r in args.rows]}
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    if args.json or not args.out:
        print(text)


if __name__ == "__main__":
    main()

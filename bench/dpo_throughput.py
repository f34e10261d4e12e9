"""DPO training throughput: alignpipe vs TRL's DPOTrainer on the same model and pairs, side by side.

    python -m bench.dpo_throughput --json [--out bench/results/dpo_throughput_cpu.json]

Each arm runs in its own subprocess (so peak memory is its own) over the same random-init
Llama-architecture model and the same synthetic pairs. Throughput counts *logical* tokens, the
same for every arm: per pair len(prompt)+len(chosen) + len(prompt)+len(rejected), i.e. what a
standard (non-prefix-sharing) implementation feeds the model. alignpipe's reference log-probs are
a separate, one-off pass; its time is reported apart and also folded into an end-to-end figure.
TRL with precompute_ref_log_probs scores the reference inside DPOTrainer.__init__: its reference
time is that constructor's extra time over the plain TRL arm's.
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
    "cpu": dict(hidden=256, layers=4, heads=4, intermediate=1024, vocab_from="smollm2", batch=8, prompt_tokens=40, completion_tokens=40, steps=12, warmup_steps=2),
    # ~1.1B params (TinyLlama shape), sequence 1024 = 512 prompt + 512 completion
    "gpu": dict(hidden=2048, layers=22, heads=32, kv_heads=4, intermediate=5632, vocab_from="smollm2", batch=8, prompt_tokens=512, completion_tokens=512, steps=12, warmup_steps=3),
}
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def _text(rng: random.Random, tokenizer, n_tokens: int) -> str:
    words = []
    while True:
        words.append(rng.choice(WORDS))
        if len(tokenizer(" " + " ".join(words), add_special_tokens=False).input_ids) >= n_tokens:
            return " " + " ".join(words)


def make_pairs(tokenizer, n: int, prompt_tokens: int, completion_tokens: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [
        {
            "prompt": _text(rng, tokenizer, prompt_tokens).strip(),
            "chosen": _text(rng, tokenizer, completion_tokens),
            "rejected": _text(rng, tokenizer, completion_tokens),
        }
        for _ in range(n)
    ]


def build_model(out: Path, p: dict) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from alignpipe.models import load_tokenizer, smollm2_gguf_path

    gguf = smollm2_gguf_path()
    tok = load_tokenizer(gguf.parent, gguf.name)
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=p["hidden"], intermediate_size=p["intermediate"],
        num_hidden_layers=p["layers"], num_attention_heads=p["heads"], num_key_value_heads=p.get("kv_heads", p["heads"]),
        max_position_embeddings=4096, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, tie_word_embeddings=True,
    )  # fmt: skip
    LlamaForCausalLM(cfg).save_pretrained(out)
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


def _logical_tokens(tokenizer, pairs: list[dict], max_length: int, max_prompt_length: int) -> float:
    from alignpipe.tokenization import tokenize_pairs

    tok_pairs, _ = tokenize_pairs(tokenizer, pairs, max_length=max_length, max_prompt_length=max_prompt_length)
    return statistics.mean(2 * len(t.prompt) + len(t.chosen) + len(t.rejected) for t in tok_pairs)


def run_alignpipe(model_dir: str, pairs: list[dict], p: dict, cuda: bool) -> dict:
    import torch

    from alignpipe.dpo.objective import DPOObjective, PreferenceItem
    from alignpipe.dpo.scoring import pair_collator, tokenized_pair_logps
    from alignpipe.models import load_causal_lm, load_tokenizer
    from alignpipe.tokenization import tokenize_pairs
    from alignpipe.train.loop import train
    from pipeline_config.schema import DPOConfig

    max_len, max_prompt = p["prompt_tokens"] + p["completion_tokens"] + 8, p["prompt_tokens"] + 4
    tok = load_tokenizer(model_dir)
    model = load_causal_lm(model_dir, dtype=torch.bfloat16 if cuda else torch.float32)
    if cuda:
        model = model.cuda()
    tok_pairs, _ = tokenize_pairs(tok, pairs, max_length=max_len, max_prompt_length=max_prompt)
    t0 = time.perf_counter()
    chosen, rejected = tokenized_pair_logps(model, tok_pairs, tok.pad_token_id, batch_size=4 * p["batch"], prefix_sharing="on")
    ref_seconds = time.perf_counter() - t0
    items = [PreferenceItem(t, float(c), float(r)) for t, c, r in zip(tok_pairs, chosen, rejected)]
    cfg = DPOConfig(
        lr=5e-7, optimizer="adamw", warmup_steps=0, batch_size=p["batch"], micro_batch_size=p["batch"],
        max_steps=p["steps"], max_length=max_len, max_prompt_length=max_prompt, max_grad_norm=1.0,
    )  # fmt: skip
    model = model.float() if cuda else model  # the loop's autocast does bf16 compute over fp32 master weights
    with PeakMemory(cuda) as mem:
        result = train(model, items, DPOObjective(cfg, pair_collator(model, tok.pad_token_id, "on")), cfg, desc="alignpipe")
    step_s = [h["seconds_per_step"] for h in result.history][p["warmup_steps"] :]
    return {"seconds_per_step": statistics.mean(step_s), "peak_memory_mb": mem.peak_mb, "reference_seconds": ref_seconds,
            "forwarded_tokens_per_s": statistics.mean(h["tokens_per_s"] for h in result.history[p["warmup_steps"]:]),
            "final_loss": result.final["loss"]}  # fmt: skip


def run_trl(model_dir: str, pairs: list[dict], p: dict, cuda: bool, precompute_ref: bool) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from alignpipe.models import load_tokenizer

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times, self._t = [], None

        def on_step_begin(self, args, state, control, **kw):
            if cuda:
                torch.cuda.synchronize()
            self._t = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            if cuda:
                torch.cuda.synchronize()
            self.times.append(time.perf_counter() - self._t)

    tok = load_tokenizer(model_dir)
    load = lambda: AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa")  # noqa: E731
    model, ref = load(), (None if precompute_ref else load())
    out = tempfile.mkdtemp()
    args = DPOConfig(
        output_dir=out, per_device_train_batch_size=p["batch"], gradient_accumulation_steps=1, max_steps=p["steps"],
        learning_rate=5e-7, lr_scheduler_type="constant", warmup_steps=0, optim="adamw_torch", max_grad_norm=1.0,
        logging_steps=1, report_to=[], save_strategy="no", use_cpu=not cuda, bf16=cuda, dataloader_num_workers=0,
        max_length=p["prompt_tokens"] + p["completion_tokens"] + 8, precompute_ref_log_probs=precompute_ref,
        disable_tqdm=False, seed=0,
    )  # fmt: skip
    timer = StepTimer()
    t0 = time.perf_counter()  # TRL tokenizes, and with precompute_ref_log_probs scores the reference, in __init__
    trainer = DPOTrainer(model=model, ref_model=ref, args=args, train_dataset=Dataset.from_list(pairs), processing_class=tok, callbacks=[timer])
    init_seconds = time.perf_counter() - t0
    with PeakMemory(cuda) as mem:
        trainer.train()
    step_s = timer.times[p["warmup_steps"] :]
    return {"seconds_per_step": statistics.mean(step_s), "peak_memory_mb": mem.peak_mb, "reference_seconds": 0.0, "init_seconds": init_seconds}


def worker(arm: str, model_dir: str, pairs_file: str, preset: str) -> None:
    import torch

    cuda = torch.cuda.is_available()
    pairs = json.loads(Path(pairs_file).read_text())
    p = PRESETS[preset]
    if arm == "alignpipe":
        res = run_alignpipe(model_dir, pairs, p, cuda)
    else:
        res = run_trl(model_dir, pairs, p, cuda, precompute_ref=arm == "trl_precomputed_ref")
    print("RESULT " + json.dumps(res), flush=True)


def _run_arm(arm: str, model_dir: Path, pairs_file: Path, preset: str) -> dict:
    cmd = [sys.executable, "-m", "bench.dpo_throughput", "--worker", arm, "--model-dir", str(model_dir), "--pairs", str(pairs_file), "--preset", preset]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"arm {arm} failed:\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print the result as JSON (default: also a short table)")
    ap.add_argument("--out", type=Path, help="also write the JSON here (e.g. bench/results/dpo_throughput_cpu.json)")
    ap.add_argument("--preset", choices=sorted(PRESETS), help="default: gpu when CUDA is available, else cpu")
    ap.add_argument("--arms", default="alignpipe,trl,trl_precomputed_ref")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--model-dir", help=argparse.SUPPRESS)
    ap.add_argument("--pairs", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    import torch

    preset = args.preset or ("gpu" if torch.cuda.is_available() else "cpu")
    if args.worker:
        return worker(args.worker, args.model_dir, args.pairs, preset)

    from alignpipe.models import load_tokenizer
    from bench.machine import machine_info

    p = PRESETS[preset]
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_model(Path(tmp) / "model", p)
        tok = load_tokenizer(model_dir)
        pairs = make_pairs(tok, p["batch"] * p["steps"], p["prompt_tokens"], p["completion_tokens"])
        pairs_file = Path(tmp) / "pairs.json"
        pairs_file.write_text(json.dumps(pairs))
        logical = _logical_tokens(tok, pairs, p["prompt_tokens"] + p["completion_tokens"] + 8, p["prompt_tokens"] + 4)
        n_params = sum(v.numel() for v in __import__("safetensors.torch", fromlist=["load_file"]).load_file(str(model_dir / "model.safetensors")).values())
        arms = {}
        for arm in args.arms.split(","):
            r = _run_arm(arm, model_dir, pairs_file, preset)
            if arm == "trl_precomputed_ref" and "trl" in arms:
                # its reference pass is the extra constructor time over the plain TRL arm
                r["reference_seconds"] = max(0.0, r["init_seconds"] - arms["trl"]["init_seconds"])
            r["tokens_per_s"] = logical * p["batch"] / r["seconds_per_step"]
            pairs_total = p["batch"] * p["steps"]
            r["tokens_per_s_incl_reference"] = logical * pairs_total / (r["seconds_per_step"] * p["steps"] + r["reference_seconds"])
            if torch.cuda.is_available():
                peak = next((v for k, v in PEAK_BF16_FLOPS.items() if k in torch.cuda.get_device_name(0)), None)
                r["mfu"] = 6 * n_params * r["tokens_per_s"] / peak if peak else None
            arms[arm] = r
    ratios = {}
    if "alignpipe" in arms:
        for other in (a for a in arms if a != "alignpipe"):
            ratios[f"alignpipe_vs_{other}"] = {
                "tokens_per_s": arms["alignpipe"]["tokens_per_s"] / arms[other]["tokens_per_s"],
                "tokens_per_s_incl_reference": arms["alignpipe"]["tokens_per_s_incl_reference"] / arms[other]["tokens_per_s_incl_reference"],
                "peak_memory": arms["alignpipe"]["peak_memory_mb"] / arms[other]["peak_memory_mb"],
            }
    report = {
        "benchmark": "dpo_throughput",
        "preset": preset,
        "setup": {**p, "n_params": n_params, "logical_tokens_per_pair": logical, "measured_steps": p["steps"] - p["warmup_steps"]},
        "machine": machine_info(),
        "arms": arms,
        "ratios": ratios,
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()

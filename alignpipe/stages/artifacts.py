"""The on-disk formats stages hand each other, in one place: stages never import each other.

    pairs/      pairs.parquet          {prompt, chosen, rejected, ...provenance}   written by pairs
    reference/  reference.safetensors  token ids of every kept pair + reference log-probs; metadata
                                       {"prefix_sharing": "on" | "off"}: the layout they were scored in
    sft/, dpo/  model/                 a from_pretrained directory (see stages.common)
                history.jsonl          one line per optimizer step
    any         datasets.json          the datasets the stage read: name, content digest, source
    dpo/        snapshots/             with evaluate.checkpoints: step-<n>.safetensors (the trainable
                                       weights at step n) + index.json {"lora": LoraConfig | null, "steps": [n...]}
    evaluate/,  samples.jsonl, verdicts.parquet, win_rates.json, reward_kl.json, metrics.json,
    ood/        frontier.json          [FrontierRow]: one point per policy at T=1 (see below)
                data.json              {eval_source, candidate_prompts, overlap_removed, prompts}
                judge_agreement.json   the judge vs human labels (evaluate.human_agreement), or absent

frontier.json rows (alignpipe.report.FrontierRow), the input of alignpipe.plots.reward_kl_frontier:
    {"label": "dpo" | "sft" | "dpo@step<n>", "policy": "dpo" | "sft", "dpo_step": int | null,
     "temperature": 1.0, "mean_reward": float, "reward_stderr": float | null,
     "reward_ci_low": float, "reward_ci_high": float, "kl": float (nats per sequence, mean),
     "kl_ci_low": float, "kl_ci_high": float, "n": int (prompts), "truncated": int (samples cut at
     max_new_tokens)}
A sweep adds its own "series" key (e.g. "beta=0.1") to each member's rows before plotting them together.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional

import torch

from alignpipe.tokenization import TokenizedPair

PAIRS_FILE = "pairs.parquet"
MODEL_DIR = "model"
DATASETS_FILE = "datasets.json"
REFERENCE_FILE = "reference.safetensors"
HISTORY_FILE = "history.jsonl"
EVAL_FILES = ("samples.jsonl", "verdicts.parquet", "win_rates.json", "reward_kl.json", "frontier.json", "data.json",
              "judge_agreement.json", "metrics.json")
FRONTIER_FILE = "frontier.json"
SNAPSHOTS_DIR = "snapshots"


# -- tables ----------------------------------------------------------------------------------
def write_parquet(path: Path, rows: list[dict]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def read_parquet(path: Path) -> list[dict]:
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def read_json(path: Path, default: Any = None) -> Any:
    return json.loads(path.read_text()) if path.exists() else default


# -- pairs -----------------------------------------------------------------------------------
def write_pairs(out_dir: Path, rows: list[dict]) -> Path:
    return write_parquet(out_dir / PAIRS_FILE, rows)


def read_pairs(stage_dir: Path) -> list[dict]:
    return read_parquet(stage_dir / PAIRS_FILE)


# -- reference: tokenized pairs and their reference log-probs --------------------------------
@dataclass
class ReferencePairs:
    """The pairs exactly as DPO trains on them (token ids) and the reference model's log-probs."""

    pairs: list[TokenizedPair]
    chosen_logps: torch.Tensor  # [n] float32
    rejected_logps: torch.Tensor  # [n] float32
    source_index: list[int]  # row of pairs.parquet each pair came from (truncation drops some)
    prefix_sharing: Optional[str] = None  # "on" | "off": dpo.prefix_sharing as the reference stage decided it


def _flat(seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.int64)
    ids = torch.tensor([t for s in seqs for t in s], dtype=torch.int64)
    return ids, lengths


def _split(ids: torch.Tensor, lengths: torch.Tensor) -> list[list[int]]:
    return [chunk.tolist() for chunk in torch.split(ids, lengths.tolist())]


def write_reference(out_dir: Path, ref: ReferencePairs) -> Path:
    from safetensors.torch import save_file

    tensors = {"chosen_logps": ref.chosen_logps.float().contiguous(), "rejected_logps": ref.rejected_logps.float().contiguous(),
               "source_index": torch.tensor(ref.source_index, dtype=torch.int64)}  # fmt: skip
    for part in ("prompt", "chosen", "rejected"):
        tensors[f"{part}_ids"], tensors[f"{part}_lengths"] = _flat([getattr(p, part) for p in ref.pairs])
    path = out_dir / REFERENCE_FILE
    save_file(tensors, str(path), metadata={"prefix_sharing": ref.prefix_sharing} if ref.prefix_sharing else None)
    return path


def read_reference(stage_dir: Path) -> ReferencePairs:
    from safetensors import safe_open
    from safetensors.torch import load_file

    t = load_file(str(stage_dir / REFERENCE_FILE))
    with safe_open(str(stage_dir / REFERENCE_FILE), "pt") as f:
        sharing = (f.metadata() or {}).get("prefix_sharing")
    parts = {part: _split(t[f"{part}_ids"], t[f"{part}_lengths"]) for part in ("prompt", "chosen", "rejected")}
    pairs = [TokenizedPair(p, c, r) for p, c, r in zip(parts["prompt"], parts["chosen"], parts["rejected"])]
    return ReferencePairs(pairs, t["chosen_logps"], t["rejected_logps"], t["source_index"].tolist(), sharing)


# -- training history and evaluation tables --------------------------------------------------
def read_history(stage_dir: Path) -> list[dict[str, Any]]:
    path = stage_dir / HISTORY_FILE
    return read_jsonl(path) if path.exists() else []


def write_eval_tables(out_dir: Path, tables, metrics: dict[str, float]) -> None:
    """An evaluation's samples, verdicts and win-rate / reward / frontier tables (alignpipe.evaluation.EvalTables)."""
    write_jsonl(out_dir / "samples.jsonl", tables.samples)
    if tables.verdicts:
        write_parquet(out_dir / "verdicts.parquet", tables.verdicts)
    (out_dir / "win_rates.json").write_text(json.dumps(tables.win_rates, indent=2))
    (out_dir / "reward_kl.json").write_text(json.dumps(tables.reward_kl, indent=2))
    (out_dir / FRONTIER_FILE).write_text(json.dumps(tables.frontier, indent=2))
    (out_dir / "data.json").write_text(json.dumps(tables.data, indent=2))
    if tables.judge_agreement is not None:
        (out_dir / "judge_agreement.json").write_text(json.dumps(tables.judge_agreement, indent=2))
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))


def read_eval_tables(stage_dir: Path) -> dict[str, Any]:
    return {
        "win_rates": read_json(stage_dir / "win_rates.json", []),
        "reward_kl": read_json(stage_dir / "reward_kl.json", []),
        "frontier": read_json(stage_dir / FRONTIER_FILE, []),
        "data": read_json(stage_dir / "data.json", {}),
        "judge_agreement": read_json(stage_dir / "judge_agreement.json"),
        "metrics": read_json(stage_dir / "metrics.json", {}),
    }


def read_frontier(stage_dir: Path) -> list[dict[str, Any]]:
    """An evaluate output's frontier rows (what a sweep report collects from each member)."""
    return read_json(stage_dir / FRONTIER_FILE, [])


# -- DPO snapshots: the policy at intermediate steps, for the frontier -------------------------
def write_snapshots(out_dir: Path, files: dict[int, Path], lora: Optional[dict[str, Any]]) -> None:
    """Copy step -> trainable-weights files into out_dir/snapshots with their index."""
    import shutil

    target = out_dir / SNAPSHOTS_DIR
    target.mkdir()
    for step, path in sorted(files.items()):
        shutil.copyfile(path, target / f"step-{step:08d}.safetensors")
    (target / "index.json").write_text(json.dumps({"lora": lora, "steps": sorted(files)}, indent=2))


def read_snapshots(stage_dir: Path) -> Optional[dict[str, Any]]:
    """{"lora": LoraConfig dict | None, "steps": {step: weights path}}, or None when there are none."""
    index = read_json(stage_dir / SNAPSHOTS_DIR / "index.json")
    if index is None:
        return None
    steps = {int(n): stage_dir / SNAPSHOTS_DIR / f"step-{int(n):08d}.safetensors" for n in index["steps"]}
    return {"lora": index["lora"], "steps": steps}


def read_manifest(stage_dir: Path) -> Optional[dict[str, Any]]:
    """The store's manifest of an upstream output (what it was computed from, when, how long)."""
    return read_json(stage_dir / "manifest.json")


# -- datasets a stage read (logged as MLflow run inputs) -------------------------------------
def content_digest(obj: Any) -> str:
    """sha256 of a JSON-able value in canonical form (sorted keys)."""
    import hashlib

    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def file_digest(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def dataset_record(name: str, digest: str, source: str, rows: int, context: str, source_type: str = "local") -> dict[str, Any]:
    """context: "training" or "evaluation"; source_type: "local", "hub" or "stage" (made by a stage)."""
    return {"name": name, "digest": digest, "source": source, "source_type": source_type, "rows": rows, "context": context}


def write_datasets(out_dir: Path, records: list[dict[str, Any]]) -> Path:
    path = out_dir / DATASETS_FILE
    path.write_text(json.dumps(records, indent=2))
    return path


def read_datasets(stage_dir: Path) -> list[dict[str, Any]]:
    return read_json(stage_dir / DATASETS_FILE, [])

"""Run by tests under `accelerate launch`: trains the tiny model and writes the loss history (rank 0)."""
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from _training_fixtures import dpo_config, objective, preference_items  # noqa: E402

from alignpipe.models import load_causal_lm, load_tokenizer  # noqa: E402
from alignpipe.train.loop import train  # noqa: E402

model_dir, micro, out = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
torch.manual_seed(0)
tok = load_tokenizer(model_dir)
model = load_causal_lm(model_dir)
items = preference_items(model, tok)
cfg = dpo_config(micro_batch_size=micro, epochs=1, optimizer="adamw")
result = train(model, items, objective(model, tok, cfg), cfg)
world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
rank = torch.distributed.get_rank() if world > 1 else 0
if world > 1:
    torch.distributed.destroy_process_group()  # gloo aborts at exit without it
if rank != 0:
    sys.exit(0)
out.write_text(json.dumps({"world": world, "loss": [h["loss"] for h in result.history]}))

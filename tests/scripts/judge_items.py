"""Run by tests as a subprocess that gets SIGKILLed mid-judging: judges N items against BASE_URL.

usage: judge_items.py BASE_URL CACHE_DIR N_ITEMS (OPENAI_API_KEY from the environment)
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from judge_items import items, judge_for  # noqa: E402

base_url, cache_dir, n = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
judge_for(base_url, cache_dir, max_retries=6).judge(items(n))
print("finished", flush=True)  # the test fails if the kill came too late

"""What "final" means for a training metric, for every place that prints one (stage metrics, the report)."""
from __future__ import annotations

import math
from typing import Any, Mapping, Optional, Sequence

TAIL_FRACTION = 0.1  # "final": the mean over the last 10% of logged steps (at least one), less noisy than one step


def tail_mean(history: Sequence[Mapping[str, Any]], key: str) -> Optional[float]:
    values = [r[key] for r in history if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
    if not values:
        return None
    tail = values[-max(1, math.ceil(len(values) * TAIL_FRACTION)) :]
    return sum(tail) / len(tail)

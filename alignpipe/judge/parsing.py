"""Reading the verdict out of a judge's free-text answer.

Only the final non-empty line counts, as the prompt asks: a letter mentioned in the comparison
sentence must never be taken for the verdict. Quotes, markdown emphasis, case, whitespace and
a trailing period are tolerated; anything else is malformed (None).
"""
from __future__ import annotations

import re
from typing import Optional

from alignpipe.judge.templates import get_template

_QUOTES = "\"'`\u201c\u201d\u2018\u2019*_"


def _verdict_pattern(answer_key: str) -> re.Pattern[str]:
    q = re.escape(_QUOTES)
    return re.compile(
        rf"^[{q}\s]*{re.escape(answer_key)}[{q}\s]*:[{q}\s]*([AB])[{q}\s]*\.?[{q}\s]*$",
        re.IGNORECASE,
    )


_PATTERNS: dict[str, re.Pattern[str]] = {}


def parse_choice(answer: str, template_name: str) -> Optional[str]:
    """'A' or 'B' from the answer's last non-empty line, or None when it is not a verdict line."""
    key = get_template(template_name).answer_key
    if key not in _PATTERNS:
        _PATTERNS[key] = _verdict_pattern(key)
    lines = [line for line in (answer or "").splitlines() if line.strip()]
    if not lines:
        return None
    match = _PATTERNS[key].match(lines[-1])
    return match.group(1).upper() if match else None

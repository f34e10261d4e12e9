"""Direct Preference Optimization: the loss (loss.py), pair scoring (scoring.py) and the training
objective (objective.py).

`from alignpipe.dpo import preference_loss` works, but lazily (PEP 562): the names in
LAZY_EXPORTS are imported from their module on first access, not when the package is. Importing
`alignpipe.dpo.scoring` runs this file, so an eager `from alignpipe.dpo.loss import ...` here would
put the loss in the code fingerprint of every stage that scores pairs (the reference stage), and
an edit to the loss would recompute them. The code fingerprint (alignpipe/fingerprint.py) reads
LAZY_EXPORTS from this file's AST instead: a module that takes one of these names from here
(`from alignpipe.dpo import preference_loss`, or `dpo.preference_loss` as an attribute) has the
exporting module in its closure; one that imports only `alignpipe.dpo.scoring` does not.
LAZY_EXPORTS must stay a literal dict of strings (the fingerprint refuses anything else).
"""
from __future__ import annotations

import importlib
from typing import Any

LAZY_EXPORTS = {  # name -> the module that defines it
    "preference_loss": "alignpipe.dpo.loss",
    "LOSS_TYPES": "alignpipe.dpo.loss",
}

__all__ = sorted(LAZY_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in LAZY_EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(LAZY_EXPORTS[name]), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *LAZY_EXPORTS})

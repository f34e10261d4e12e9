"""The code a stage runs, as one hash: the source of every `alignpipe` module it imports, transitively.

This replaces hand-bumped stage version strings: edit `alignpipe/dpo/loss.py` and the key of every
stage whose import closure reaches it (dpo, and through upstream keys everything after it) changes,
while sft and pairs, which never import it, keep theirs.

The closure is found statically from the modules' ASTs, function-level (lazy) imports included, so
nothing is imported to compute it. Each module is hashed by its AST (comments and formatting do not
count; code and docstrings do). Importing `a.b.c` runs `a/__init__.py` and `a/b/__init__.py` too, so
package `__init__` modules are part of the closure. Third-party code is not hashed: its versions are
recorded in the manifest instead (alignpipe.cache).
"""
from __future__ import annotations

import ast
import hashlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

PACKAGE = "alignpipe"


@dataclass(frozen=True)
class CodeFingerprint:
    digest: str  # sha256 over (module name, AST hash) of every module in the closure
    modules: tuple[str, ...]  # the closure, sorted


def package_root() -> Path:
    """The directory holding the `alignpipe` package that this process imported."""
    return Path(__file__).resolve().parents[1]


_parsed: dict[tuple[str, int, int], tuple[str, tuple[tuple[str, int, Optional[str]], ...]]] = {}


def _parse(path: Path) -> tuple[str, tuple[tuple[str, int, Optional[str]], ...]]:
    """(AST hash, imports as (module, relative level, imported name)); memoized by size and mtime."""
    st = path.stat()
    memo = (str(path), st.st_size, st.st_mtime_ns)
    if memo not in _parsed:
        tree = ast.parse(path.read_bytes(), filename=str(path))
        imports: list[tuple[str, int, Optional[str]]] = []
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                imports += [(alias.name, 0, None) for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                imports += [(node.module or "", node.level, alias.name) for alias in node.names]
        digest = hashlib.sha256(ast.dump(tree, include_attributes=False).encode()).hexdigest()
        _parsed[memo] = (digest, tuple(imports))
    return _parsed[memo]


def _module_file(name: str, root: Path) -> Optional[Path]:
    """The source file of an alignpipe module or package under root, or None if there is none."""
    base = root.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _absolute(module: str, level: int, current: str, is_package: bool) -> str:
    if level == 0:
        return module
    parts = current.split(".")
    if not is_package:
        parts = parts[:-1]
    parts = parts[: len(parts) - (level - 1)] if level > 1 else parts
    return ".".join(p for p in [*parts, module] if p)


def _targets(module: str, level: int, name: Optional[str], current: str, is_package: bool, root: Path) -> list[str]:
    """The alignpipe modules an import statement loads: the module, its packages, and `from pkg import submodule`."""
    full = _absolute(module, level, current, is_package)
    if full != PACKAGE and not full.startswith(PACKAGE + "."):
        return []
    parts = full.split(".")
    out = [".".join(parts[:i]) for i in range(1, len(parts) + 1)]
    if name and name != "*" and _module_file(f"{full}.{name}", root) is not None:
        out.append(f"{full}.{name}")
    return out


def code_fingerprint(module: str, root: Optional[Path] = None) -> CodeFingerprint:
    """Fingerprint of `module` and every alignpipe module it imports, directly or not.

    `module` may live outside the package (a test's stage module): it is found on sys.path and
    hashed too; only alignpipe modules are followed from there.
    """
    root = root or package_root()
    start = _module_file(module, root)
    if start is None:
        spec = importlib.util.find_spec(module)
        if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
            raise ValueError(f"cannot find the source of module '{module}'")
        start = Path(spec.origin)
    files: dict[str, Path] = {}
    frontier: list[tuple[str, Path]] = [(module, start)]
    while frontier:
        name, path = frontier.pop()
        if name in files:
            continue
        files[name] = path
        is_package = path.name == "__init__.py"
        for imported, level, what in _parse(path)[1]:
            for target in _targets(imported, level, what, name, is_package, root):
                if target not in files:
                    found = _module_file(target, root)
                    if found is not None:
                        frontier.append((target, found))
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(f"{name}\0{_parse(files[name])[0]}\n".encode())
    return CodeFingerprint(digest.hexdigest(), tuple(sorted(files)))

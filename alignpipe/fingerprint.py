"""The code a stage runs, as one hash: the source of every `alignpipe` module it imports, transitively.

This replaces hand-bumped stage version strings: edit `alignpipe/dpo/loss.py` and the key of every
stage whose import closure reaches it (dpo, and through upstream keys everything after it) changes,
while sft and pairs, which never import it, keep theirs.

The closure is found statically from the modules' ASTs, function-level (lazy) imports included, so
nothing is imported to compute it. Each module is hashed by its AST (comments and formatting do not
count; code and docstrings do). Importing `a.b.c` runs `a/__init__.py` and `a/b/__init__.py` too, so
package `__init__` modules are part of the closure. Third-party code is not hashed: its versions are
recorded in the manifest instead (alignpipe.cache).

A package may re-export names lazily (PEP 562 `__getattr__`, as alignpipe/dpo/__init__.py does) by
declaring them in a module-level `LAZY_EXPORTS = {"name": "alignpipe.pkg.module", ...}` literal.
Its `importlib` call is invisible here, so the declaration is read instead: a module that imports
such a name from the package (`from pkg import name`, `from pkg import *`) or reads it as an
attribute (`pkg.name`, matched by the attribute's name alone, so it may over-include but never
miss) has the exporting module in its closure; a module that imports only a sibling does not.
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


Imports = tuple[tuple[str, int, Optional[str]], ...]  # (module, relative level, imported name)


@dataclass(frozen=True)
class _Parsed:
    digest: str  # of the AST
    imports: Imports
    attributes: frozenset[str]  # every `x.NAME` the module reads
    lazy_exports: tuple[tuple[str, str], ...]  # its LAZY_EXPORTS: (name, defining module)


_parsed: dict[tuple[str, int, int], _Parsed] = {}


def _lazy_exports(tree: ast.Module, path: Path) -> tuple[tuple[str, str], ...]:
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        if not any(isinstance(t, ast.Name) and t.id == "LAZY_EXPORTS" for t in targets):
            continue
        try:
            exports = ast.literal_eval(node.value)
        except ValueError:
            exports = None
        if not isinstance(exports, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in exports.items()):
            raise ValueError(f"{path}: LAZY_EXPORTS must be a literal dict of name -> module strings (the code fingerprint reads it)")
        return tuple(sorted(exports.items()))
    return ()


def _parse(path: Path) -> _Parsed:
    """The module's AST hash, imports, attribute names and lazy exports; memoized by size and mtime."""
    st = path.stat()
    memo = (str(path), st.st_size, st.st_mtime_ns)
    if memo not in _parsed:
        tree = ast.parse(path.read_bytes(), filename=str(path))
        imports: list[tuple[str, int, Optional[str]]] = []
        attributes: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                imports += [(alias.name, 0, None) for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                imports += [(node.module or "", node.level, alias.name) for alias in node.names]
            elif isinstance(node, ast.Attribute):
                attributes.add(node.attr)
        digest = hashlib.sha256(ast.dump(tree, include_attributes=False).encode()).hexdigest()
        _parsed[memo] = _Parsed(digest, tuple(imports), frozenset(attributes), _lazy_exports(tree, path))
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
    elif name:  # a name the package re-exports lazily: its defining module
        package = _module_file(full, root)
        exports = dict(_parse(package).lazy_exports) if package is not None and package.name == "__init__.py" else {}
        out += list(exports.values()) if name == "*" else [exports[name]] if name in exports else []
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

    def follow(target: str) -> None:
        if target not in files:
            found = _module_file(target, root)
            if found is not None:
                frontier.append((target, found))

    while frontier:
        while frontier:
            name, path = frontier.pop()
            if name in files:
                continue
            files[name] = path
            is_package = path.name == "__init__.py"
            for imported, level, what in _parse(path).imports:
                for target in _targets(imported, level, what, name, is_package, root):
                    follow(target)
        # `pkg.name` read as an attribute, for a lazy export of a package in the closure
        exports = [e for p in files.values() if p.name == "__init__.py" for e in _parse(p).lazy_exports]
        for path in list(files.values()):
            attributes = _parse(path).attributes
            for export, defined_in in exports:
                if export in attributes:
                    follow(defined_in)
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(f"{name}\0{_parse(files[name]).digest}\n".encode())
    return CodeFingerprint(digest.hexdigest(), tuple(sorted(files)))

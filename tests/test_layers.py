"""The layers of ARCHITECTURE.md, checked: a module imports only from its own layer or lower ones,
and training and inference never import each other."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "dqlr"
# bottom to top; names are the first part below `dqlr.`
LAYERS = [
    {"errors", "atomic", "config", "runtime"},
    {"io", "normalize", "tissue", "simulation", "degradation"},
    {"model"},
    {"training", "inference"},
    {"evaluation"},
    {"reporting"},
    {"api", "demo", "cli", "__init__", "__main__", "napari"},
]
SIBLINGS_APART = {("training", "inference"), ("inference", "training")}


def _part(module: str) -> str:
    return module.split(".")[1] if module.count(".") else "__init__"


def _rank(part: str) -> int:
    for rank, names in enumerate(LAYERS):
        if part in names:
            return rank
    raise AssertionError(f"dqlr.{part} is in no layer; add it to ARCHITECTURE.md and this test")


def _imports(path: Path) -> set[str]:
    """Every dqlr module a file imports, at the top or inside functions (TYPE_CHECKING included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
    return found


def test_every_module_has_a_layer() -> None:
    for path in PACKAGE.rglob("*.py"):
        relative = path.relative_to(PACKAGE.parent).with_suffix("")
        _rank(_part(".".join(relative.parts)) if len(relative.parts) > 1 else "__init__")


def test_no_module_imports_from_a_higher_layer() -> None:
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE.parent).with_suffix("")
        here = _part(".".join(relative.parts))
        for module in _imports(path):
            if module != "dqlr" and not module.startswith("dqlr."):
                continue
            there = _part(module)
            if there == "__init__" and module == "dqlr":
                there = "__init__"
            if _rank(there) > _rank(here) or (here, there) in SIBLINGS_APART:
                wrong.append(f"{path.relative_to(PACKAGE)} imports {module}")
    assert not wrong, "\n".join(wrong)


def test_the_benchmark_harness_is_not_in_the_package() -> None:
    """Making environments, installing peers and tuning on clean data live in benchmarks/harness."""
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        assert not any(m.startswith("harness") for m in _imports(path)), path
        assert "import subprocess" not in text and "def tune_" not in text, path


def test_io_and_degradation_are_used_through_their_front_door() -> None:
    """Their files can be reorganised: outside each package, only `dqlr.io` / `dqlr.degradation`."""
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        inside = path.relative_to(PACKAGE).parts[0]
        for module in _imports(path):
            for package in ("io", "degradation"):
                if module.startswith(f"dqlr.{package}.") and inside != package:
                    wrong.append(f"{path.relative_to(PACKAGE)} imports {module}")
    assert not wrong, "\n".join(wrong)

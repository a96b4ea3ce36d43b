"""The layering of docs/architecture.md, enforced: every import of a kiln module points to a lower layer.

The check reads the source with ``ast`` (imports anywhere in a file count: module level, inside functions,
under ``TYPE_CHECKING``), so a function-level import cannot hide an upward dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: Source folder -> import name (pyproject.toml's package-dir).
PACKAGE_DIRS = {"sdk": "kiln", "rpc": "kiln.rpc", "targets": "kiln.targets", "runtime_c": "kiln.runtime_c"}

#: Layer of each part, lowest first (docs/architecture.md). A module may import its own part and parts of a
#: strictly lower layer; parts on the same layer do not import each other.
LAYERS: dict[str, int] = {
    "kiln.runtime_c": 0,
    "kiln.ir": 1,
    "kiln.targets": 1,
    "kiln.ops": 2,
    "kiln.frontend": 3,
    "kiln.transform": 3,
    "kiln.codegen": 4,
    "kiln.device": 5,
    "kiln.package": 6,
    "kiln.driver": 7,
    "kiln.rpc": 8,
    "kiln.tune": 8,  # the schedule search: driver + ops; RPC devices come in from the CLI as a callable
    "kiln.cli": 9,
    "kiln": 10,  # the package root: the public facade over the driver; only __version__ is importable below
}


def part_of(module: str) -> str:
    """The part (key of LAYERS) a dotted kiln module name belongs to: its longest matching prefix."""
    best = ""
    for part in LAYERS:
        if (module == part or module.startswith(part + ".")) and len(part) > len(best):
            best = part
    if not best:
        raise KeyError(f"{module} belongs to no layer; add it to LAYERS and docs/architecture.md")
    return best


def module_name(path: Path, src_root: Path, package: str) -> str:
    rel = path.relative_to(src_root).with_suffix("")
    parts = [p for p in rel.parts if p != "__init__"]
    return ".".join([package, *parts])


def imported_modules(tree: ast.AST, module: str, is_package: bool) -> list[tuple[str, int]]:
    """(imported kiln module, line) for every import in the tree; ``from kiln import x`` yields
    ``kiln.x`` (a submodule) unless x is ``__version__``."""
    out: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names if a.name.split(".")[0] == "kiln"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "kiln":
                continue
            for a in node.names:
                if target == "kiln" and a.name == "__version__":
                    continue
                out.append((f"{target}.{a.name}" if target == "kiln" else target, node.lineno))
    return out


def violations(package_dirs: dict[Path, str]) -> list[str]:
    """Every upward or sideways import in the given source trees, as 'file:line: a imports b'."""
    found: set[str] = set()
    for src_root, package in package_dirs.items():
        for path in sorted(src_root.rglob("*.py")):
            if path.name.endswith(("_pb2.py", "_pb2_grpc.py")):
                continue
            module = module_name(path, src_root, package)
            here = part_of(module)
            tree = ast.parse(path.read_text(), str(path))
            for target, line in imported_modules(tree, module, path.name == "__init__.py"):
                there = part_of(target)
                if there == here:
                    continue
                if LAYERS[there] >= LAYERS[here]:
                    found.add(
                        f"{path.relative_to(src_root.parent)}:{line}: {here} (layer {LAYERS[here]}) imports "
                        f"{target} (layer {LAYERS[there]})"
                    )
    return sorted(found)


def test_every_import_points_down() -> None:
    assert violations({ROOT / d: p for d, p in PACKAGE_DIRS.items()}) == []


def test_every_source_module_belongs_to_a_layer() -> None:
    for d, package in PACKAGE_DIRS.items():
        for path in (ROOT / d).rglob("*.py"):
            part_of(module_name(path, ROOT / d, package))  # raises for an unplaced module


@pytest.mark.parametrize(
    ("rel", "code", "culprit"),
    [
        ("ir/types.py", "from ..ops import get_op\n", "kiln.ops"),  # relative, upward
        (
            "package/kpkg.py",
            "def f():\n    import kiln.rpc.client\n",
            "kiln.rpc.client",
        ),  # hidden in a function
        ("transform/x.py", "from kiln.codegen import generate\n", "kiln.codegen"),
        ("ir/graph.py", "from kiln.targets import Target\n", "kiln.targets"),  # same layer, other part
        ("device/s.py", "from kiln import compile\n", "kiln.compile"),  # the root's lazy driver export
    ],
)
def test_the_check_catches_an_upward_import(tmp_path: Path, rel: str, code: str, culprit: str) -> None:
    src = tmp_path / "sdk"
    (src / rel).parent.mkdir(parents=True)
    (src / rel).write_text(code)
    (src / "device" / "ok.py").parent.mkdir(exist_ok=True)
    (src / "device" / "ok.py").write_text("from kiln import __version__\nfrom kiln.runtime_c import abi\n")
    found = violations({src: "kiln"})
    assert len(found) == 1 and f"imports {culprit} " in found[0], found

"""The package's layers never point up (read from the source with ast; nothing is imported)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "rayrejuv"

# Top to bottom; a module may import its own layer and the layers below it, never one above.
LAYERS: list[tuple[str, ...]] = [
    ("cli", "__main__"),
    ("commands",),
    ("distributed",),
    ("runs",),
    ("rejuvenation", "testbed"),
    ("models",),
    ("method", "io", "data"),
    ("arch", "config", "figures"),
    ("errors", "timing"),
]
RANK = {top: i for i, tops in enumerate(LAYERS) for top in tops}


def top_package(module: str) -> str:
    return module.split(".")[1]


def rayrejuv_imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import of rayrejuv.* in the file, at any depth (lazy imports count)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("rayrejuv."):
            out.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.startswith("rayrejuv.")]
    return out


def module_top(path: Path) -> str:
    rel = path.relative_to(ROOT)
    return rel.parts[0].removesuffix(".py")


def test_every_top_level_package_has_a_layer():
    tops = {p.name.removesuffix(".py") for p in ROOT.iterdir() if p.suffix == ".py" or (p / "__init__.py").exists()}
    tops.discard("__init__")
    assert tops == set(RANK), f"packages without a layer: {sorted(tops - set(RANK))}; stale: {sorted(set(RANK) - tops)}"


def test_no_import_points_up():
    upward = []
    for path in sorted(ROOT.rglob("*.py")):
        here = module_top(path)
        if here == "__init__":
            continue
        for line, module in rayrejuv_imports(path):
            there = top_package(module)
            if RANK[there] < RANK[here]:
                upward.append(f"{path.relative_to(ROOT.parent)}:{line} ({here}) imports {module} ({there})")
    assert not upward, "imports that point up a layer:\n" + "\n".join(upward)


def test_commands_do_not_import_each_other_but_the_demo_and_tune():
    """A command's package is its own room; only the composite commands (demo, tune) drive others."""
    allowed = {"demo": {"testbed", "diagnose", "rejuvenate", "rl"}, "tune": {"rejuvenate", "rl"}}
    crossing = []
    for path in sorted((ROOT / "commands").rglob("*.py")):
        parts = path.relative_to(ROOT / "commands").parts
        if len(parts) < 2:
            continue
        here = parts[0]
        for line, module in rayrejuv_imports(path):
            bits = module.split(".")
            if bits[1] == "commands" and len(bits) > 2 and bits[2] not in {here, *allowed.get(here, ())}:
                crossing.append(f"{path.relative_to(ROOT.parent)}:{line} ({here}) imports {module}")
    assert not crossing, "\n".join(crossing)


def test_the_checker_sees_an_upward_import(tmp_path):
    """The checker itself can fail: a lower-layer file importing a command is reported."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from rayrejuv.commands.rl.driver import run_rl\n")
    (line, module), = rayrejuv_imports(bad)
    assert (line, module) == (2, "rayrejuv.commands.rl.driver")
    assert RANK[top_package(module)] < RANK["method"]


MAX_FUNCTION_LINES = 50


def long_functions(root: Path, limit: int) -> list[str]:
    """Functions (decorators and docstring included) longer than `limit` lines."""
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                length = node.end_lineno - first + 1
                if length > limit:
                    found.append(f"{path.relative_to(root.parent)}:{node.lineno} {node.name} ({length} lines)")
    return found


def test_no_function_is_longer_than_fifty_lines():
    too_long = long_functions(ROOT, MAX_FUNCTION_LINES)
    assert not too_long, "split these into named steps:\n" + "\n".join(too_long)


def test_the_length_check_counts_decorators_and_bodies(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    body = "\n".join(f"    x{i} = {i}" for i in range(49))
    (pkg / "m.py").write_text(f"@staticmethod\ndef f():\n{body}\n\n\ndef g():\n    return 1\n")
    assert long_functions(pkg, 50) == ["pkg/m.py:2 f (51 lines)"]
    assert long_functions(pkg, 51) == []

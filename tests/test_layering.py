"""The packages form one-way layers: every import of our own packages, at module level or inside a
function, points down the table below (the architecture issue's target), never up or sideways."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAY_IMPORT: dict[str, set[str]] = {
    "maze_env": set(),
    "probes": {"maze_env"},
    "training": {"maze_env", "probes"},
    "steering": {"probes"},
    "welfare_axis": {"maze_env", "probes", "training", "steering"},
}
OURS = set(MAY_IMPORT)


def own_imports(path: Path) -> list[tuple[int, str]]:
    """``(line, top-level package)`` of every import of one of our packages in a file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found += [(node.lineno, name.split(".")[0]) for name in names if name.split(".")[0] in OURS]
    return found


def upward_imports(package: str) -> list[str]:
    allowed = MAY_IMPORT[package] | {package}
    return [
        f"{path.relative_to(ROOT)}:{line} imports {target}"
        for path in sorted((ROOT / package).rglob("*.py"))
        for line, target in own_imports(path)
        if target not in allowed
    ]


@pytest.mark.parametrize("package", sorted(MAY_IMPORT))
def test_imports_point_down_the_layers(package: str) -> None:
    assert upward_imports(package) == [], f"{package} may import only {sorted(MAY_IMPORT[package])}"


def test_the_scan_sees_function_level_imports(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text(
        "import os\n\ndef f():\n    from training.train import main\n    import steering.apply\n"
    )
    assert own_imports(module) == [(4, "training"), (5, "steering")]

"""The selection layer (6) imports nothing from the layers above it: analysis (7), recipes (8), the CLI (9)."""

import ast
from pathlib import Path

import lightning_less

UPPER = ("lightning_less.analysis", "lightning_less.recipes", "lightning_less.cli", "lightning_less.commands")


def test_selection_imports_no_higher_layer():
    root = Path(lightning_less.__file__).parent / "selection"
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            found += [f"{path.relative_to(root)}: {n}" for n in names if n.startswith(UPPER)]
    assert len(list(root.rglob("*.py"))) > 10 and found == []

"""Rules of the package's shape, checked on the source itself (see docs/architecture.md, "Layers").

* Layering: no module of ``lightning_less`` imports from a higher layer, whether at the
  top of the file, inside a function, or in an ``if TYPE_CHECKING:`` block (a type-only
  import still ties the lower layer to the higher one; a ``typing.Protocol`` in the lower
  layer is the way out, as ``callbacks/store_writer.py`` does). ``importlib.import_module``
  calls with a literal ``"lightning_less..."`` name count as imports too.
* No file of ``lightning_less`` is over 400 lines.
* Nothing in the repository refers to files outside it (the planning notes the project
  started from): the project's own docs are ``docs/algorithms.md`` and ``docs/architecture.md``,
  and every ``docs/algorithms.md §N`` / ``docs/architecture.md "<heading>"`` names a real heading.
* Every Lightning hook a ``Callback`` / ``LightningModule`` / ``LightningDataModule``
  subclass of ``lightning_less`` overrides carries ``@override``, so a hook renamed
  upstream (or misspelled here) is reported by type checkers instead of silently never
  being called.
* The typed contract between ``ShardedStoreWriter`` and the predict passes it writes
  (``StorePass``) is met by both passes.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "lightning_less"
MAX_LINES = 400

#: The layer of each top-level module or subpackage of ``lightning_less`` (docs/architecture.md).
#: A module may import from its own layer and the layers below it, never from above.
LAYERS: dict[str, int] = {
    "version": 0,
    "errors": 0,
    "console": 0,
    "distributed": 0,  # ranks agreeing on a failure, work done once on rank 0
    "models": 0,
    "gradients": 0,
    "data": 1,
    "modules": 2,
    "evaluation": 2,  # lm-eval on a model + adapter, beside the training modules
    "stores": 3,
    "callbacks": 4,
    "passes": 5,
    "selection": 6,
    "analysis": 7,
    "recipes": 8,
    "cli": 9,
    "commands": 9,  # the command functions of the CLI, while they still live beside cli.py
    "__init__": 9,  # lightning_less/__init__.py: the public names
}

#: Upward imports tolerated for now: ``(file, imported module)``. The test also fails when
#: an entry no longer occurs, so this list cannot outlive the code it excuses.
KNOWN_UPWARD_IMPORTS: set[tuple[str, str]] = set()

# Built from pieces so that this file does not match its own check.
FORBIDDEN_REFERENCES = ("ALGORITHMS" + ".md", "DESIGN" + ".md", "../" + "shared", "shared" + "/")


def package_files() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def layer_key(module: str) -> str:
    """The LAYERS key of a dotted ``lightning_less`` module name."""
    parts = module.split(".")
    assert parts[0] == "lightning_less", module
    return parts[1] if len(parts) > 1 else "__init__"


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """``(line, dotted module)`` of every ``lightning_less`` import in the file, wherever it sits."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    this = module_name(path)
    package = this if path.name == "__init__.py" else this.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target == "lightning_less":
                # ``from lightning_less import x``: x is a submodule or a public name of __init__.
                found += [(node.lineno, f"lightning_less.{a.name}" if a.name in LAYERS else target) for a in node.names]
            else:
                found.append((node.lineno, target))
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, (ast.Attribute, ast.Name))
            and (node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.append((node.lineno, node.args[0].value))
    return [(line, m) for line, m in found if m == "lightning_less" or m.startswith("lightning_less.")]


def layering_violations(files: list[Path]) -> list[tuple[str, str, str]]:
    """``(file, imported module, message)`` of every import from a higher (or unknown) layer."""
    problems = []
    for path in files:
        own = layer_key(module_name(path))
        if own not in LAYERS:
            problems.append((rel(path), "", f"{rel(path)}: '{own}' has no layer; add it to LAYERS here and to "
                             "docs/architecture.md"))
            continue
        for line, target in imported_modules(path):
            key = layer_key(target)
            if key not in LAYERS:
                problems.append((rel(path), target, f"{rel(path)}:{line}: imports {target}, whose '{key}' has no layer"))
            elif LAYERS[key] > LAYERS[own]:
                problems.append((rel(path), target, f"{rel(path)}:{line}: {own} (layer {LAYERS[own]}) imports {target} "
                                 f"(layer {LAYERS[key]})"))
    return problems


def test_no_import_from_a_higher_layer():
    found = layering_violations(package_files())
    problems = [message for path, target, message in found if (path, target) not in KNOWN_UPWARD_IMPORTS]
    assert not problems, "imports from a higher layer:\n" + "\n".join(problems)
    stale = KNOWN_UPWARD_IMPORTS - {(path, target) for path, target, _ in found}
    assert not stale, f"KNOWN_UPWARD_IMPORTS entries that no longer occur, remove them: {sorted(stale)}"


def test_layering_check_sees_every_kind_of_import(tmp_path, monkeypatch):
    """The checker itself: an upward import is found at top level, in a function, relative or dynamic."""
    fake = tmp_path / "lightning_less"
    (fake / "data").mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "data" / "__init__.py").write_text("")
    source = (
        "import typing\n"
        "from lightning_less.models import tiny\n"  # allowed: layer 0
        "from lightning_less.selection.budget import top_k\n"  # 6 > 1
        "def f():\n"
        "    import lightning_less.recipes.pipeline\n"  # 8 > 1, inside a function
        "    from ..passes import gradient_features\n"  # 5 > 1, relative
        "if typing.TYPE_CHECKING:\n"
        "    from lightning_less import cli\n"  # 9 > 1, type-only
        "importlib.import_module('lightning_less.analysis.report')\n"  # 7 > 1, dynamic
    )
    (fake / "data" / "bad.py").write_text(source)
    monkeypatch.setitem(globals(), "ROOT", tmp_path)
    problems = [message for _, _, message in layering_violations([fake / "data" / "bad.py"])]
    lines = sorted(int(p.split(":")[1]) for p in problems)
    assert lines == [3, 5, 6, 8, 9], problems


@pytest.mark.parametrize("path", package_files(), ids=rel)
def test_file_is_at_most_400_lines(path: Path):
    n = len(path.read_text(encoding="utf-8").splitlines())
    assert n <= MAX_LINES, f"{rel(path)} has {n} lines (at most {MAX_LINES}): split it by job"


#: What the repository holds, for a copy without git (an unpacked archive): its own top-level entries.
REPOSITORY_ENTRIES = ("lightning_less", "configs", "docs", "tests", "benchmarks", "examples", ".ci",
                      "README.md", "CHANGELOG.md", "pyproject.toml", "conftest.py")


def tracked_files() -> list[Path]:
    """The files git tracks or, outside a git checkout, every file under the repository's own entries."""
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
        return [ROOT / name for name in out.decode().split("\0") if name]
    except (OSError, subprocess.CalledProcessError):
        paths = [ROOT / name for name in REPOSITORY_ENTRIES if (ROOT / name).exists()]
        return [f for p in paths for f in ([p] if p.is_file() else sorted(p.rglob("*"))) if f.is_file()
                and "__pycache__" not in f.parts]


def test_nothing_refers_to_files_outside_the_repository():
    problems = []
    for path in tracked_files():
        if not path.is_file():
            continue  # deleted in the working tree
        data = path.read_bytes()
        if b"\0" in data:
            continue  # binary
        for number, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), start=1):
            hits = [ref for ref in FORBIDDEN_REFERENCES if ref in line]
            if hits:
                problems.append(f"{rel(path)}:{number}: {', '.join(hits)}")
    assert not problems, (
        "references to files outside the repository (point to docs/algorithms.md or docs/architecture.md):\n"
        + "\n".join(problems)
    )


ALGORITHMS_REF = re.compile(r"algorithms\.md`{0,2},?\s*§(\d+(?:\.\d+)?)(?:-(\d+(?:\.\d+)?))?(?:\s+and\s+§(\d+(?:\.\d+)?))?")
ARCHITECTURE_REF = re.compile(r'architecture\.md`{0,2},?\s*"([A-Z][^"\n]{0,60})"')


def doc_headings(name: str) -> list[str]:
    return [line.lstrip("#").strip() for line in (ROOT / "docs" / name).read_text(encoding="utf-8").splitlines()
            if line.startswith("#")]


def test_references_to_the_docs_name_existing_sections():
    """``docs/algorithms.md §N`` and ``docs/architecture.md "<heading>"`` in tracked files name real headings."""
    sections = {m.group(1).rstrip(".") for h in doc_headings("algorithms.md") if (m := re.match(r"(\d+(?:\.\d+)*)\.?\s", h))}
    titles = doc_headings("architecture.md")
    assert {"1", "1.3", "2", "3.4", "5"} <= sections, sections  # the parser reads the headings
    problems = []
    for path in tracked_files():
        if not path.is_file() or b"\0" in (data := path.read_bytes()):
            continue
        text = data.decode("utf-8", errors="replace")
        for m in ALGORITHMS_REF.finditer(text):
            problems += [f"{rel(path)}: docs/algorithms.md §{n}" for n in m.groups() if n and n not in sections]
        for m in ARCHITECTURE_REF.finditer(text):
            if not any(m.group(1) in title for title in titles):
                problems.append(f'{rel(path)}: docs/architecture.md "{m.group(1)}"')
    assert not problems, "references to sections that do not exist:\n" + "\n".join(problems)


# ------------------------------------------------------------------------ @override on hooks
def lightning_hooks(cls: type) -> set[str]:
    """Public methods that the Lightning classes among ``cls``'s bases define (its hooks)."""
    names: set[str] = set()
    for klass in cls.__mro__[1:]:
        if klass.__module__.split(".")[0] == "lightning":
            names |= {n for n, v in vars(klass).items() if not n.startswith("_") and inspect.isfunction(v)}
    return names


def has_override(node: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    for dec in node.decorator_list:
        if isinstance(dec, ast.Name) and dec.id == "override":
            return True
        if isinstance(dec, ast.Attribute) and dec.attr == "override":
            return True
    return False


def missing_overrides(path: Path) -> list[str]:
    from lightning.pytorch import LightningDataModule, LightningModule
    from lightning.pytorch.callbacks import Callback

    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    module = importlib.import_module(module_name(path))
    problems = []

    def visit(body: list[ast.stmt], owner: object, prefix: str) -> None:
        for node in body:
            if not isinstance(node, ast.ClassDef):
                continue
            cls = getattr(owner, node.name, None)
            if isinstance(cls, type) and issubclass(cls, (Callback, LightningModule, LightningDataModule)):
                hooks = lightning_hooks(cls)
                for item in node.body:
                    if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and item.name in hooks:
                        if not has_override(item):
                            problems.append(f"{rel(path)}:{item.lineno}: {prefix}{node.name}.{item.name}")
            visit(node.body, cls, f"{prefix}{node.name}.")

    visit(tree.body, module, "")
    return problems


def test_every_overridden_lightning_hook_has_override():
    problems = [p for path in package_files() for p in missing_overrides(path)]
    assert not problems, (
        "Lightning hooks overridden without @override (from typing_extensions import override):\n" + "\n".join(problems)
    )


# ------------------------------------------------------------------------ typed contracts
@pytest.fixture(scope="module")
def store_passes(warm_run, tmp_path_factory):
    from lightning_less.passes.gradient_features import GradientFeatureModule
    from lightning_less.passes.hidden_states import HiddenStateModule
    from lightning_less.passes.loss_trajectories import LossTrajectoryModule

    out = tmp_path_factory.mktemp("store_pass")
    return {
        "GradientFeatureModule": GradientFeatureModule(
            snapshots=warm_run["snapshots"], output_dir=str(out / "grads"), dims=[8], projector="sparse_jl"
        ),
        "LossTrajectoryModule": LossTrajectoryModule(checkpoints=warm_run["snapshots"], output_dir=str(out / "traj")),
        "HiddenStateModule": HiddenStateModule(warm_run["model"], output_dir=str(out / "hidden")),
    }


def protocol_members(protocol: type) -> dict[str, object]:
    """The members a Protocol declares: annotated attributes and methods (not typing internals)."""
    members: dict[str, object] = {n: None for n in getattr(protocol, "__annotations__", {})}
    members.update(
        {n: v for n, v in vars(protocol).items() if not n.startswith("_") and (inspect.isfunction(v) or isinstance(v, property))}
    )
    return members


@pytest.mark.parametrize("name", ["GradientFeatureModule", "LossTrajectoryModule", "HiddenStateModule"])
def test_store_passes_meet_the_writer_protocol(store_passes, name):
    from lightning_less.callbacks.store_writer import StorePass

    module = store_passes[name]
    members = protocol_members(StorePass)
    assert isinstance(module, StorePass), f"{name} lacks {[m for m in members if not hasattr(module, m)]}"
    for member, declared in members.items():
        if inspect.isfunction(declared):
            # Same parameter names as the protocol, so the writer's keyword or positional calls fit.
            want = list(inspect.signature(declared).parameters)[1:]
            got = list(inspect.signature(getattr(module, member)).parameters)
            assert got == want, f"{name}.{member}{got} does not match StorePass.{member}{want}"


def test_writer_protocol_is_not_vacuous():
    """A LightningModule without the writer's members is not a StorePass (the check can fail)."""
    import lightning.pytorch as pl

    from lightning_less.callbacks.store_writer import StorePass, as_store_pass

    members = protocol_members(StorePass)
    assert {"store_spec", "output_dir", "overwrite", "store", "skip", "done"} <= set(members)
    assert not isinstance(pl.LightningModule(), StorePass)
    # The writer refuses such a module at the start of predict, naming what it lacks.
    with pytest.raises(TypeError, match=r"lacks \['output_dir', 'overwrite', 'store', 'skip', 'done', 'store_spec'\]"):
        as_store_pass(pl.LightningModule())

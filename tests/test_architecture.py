"""Import rules, read from the source with ``ast`` (no module is imported to check it): vaal_dist's modules import
one another without a circle, and no test module imports another (shared builders live in conftest.py). And one
read from a fresh interpreter: what every Ray actor of a round imports leaves torchvision out."""
from __future__ import annotations

import ast
import graphlib
import subprocess
import sys
from pathlib import Path

import vaal_dist

PACKAGE = Path(vaal_dist.__file__).parent       # the vaal_dist under test; importing the package loads no module of it
TESTS = Path(__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_names(tree: ast.AST, package: str, modules: set[str]) -> set[str]:
    """The ``modules`` that an import anywhere in ``tree`` names (a function-level import is still a dependency):
    ``import a.b`` names a.b; ``from a import n`` names a.n where that is a module, else a (the package's
    __init__); ``package`` is what a relative import is relative to."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            source = ".".join(part for part in (base, node.module) if part)
            names.update(f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules else source
                         for alias in node.names)
    return names & modules


def import_graph() -> dict[str, set[str]]:
    """vaal_dist's modules, each with the vaal_dist modules it imports (a package stands for its __init__)."""
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        graph[name] = imported_names(ast.parse(path.read_text()), package, set(files)) - {name}
    return graph


def test_the_graph_sees_module_level_function_level_relative_and_from_package_imports():
    tree = ast.parse("import vaal_dist.a\nfrom vaal_dist import b\nfrom . import c\n"
                     "def f():\n    from vaal_dist.d import thing\n")
    modules = {"vaal_dist", "vaal_dist.a", "vaal_dist.b", "vaal_dist.pkg", "vaal_dist.pkg.c", "vaal_dist.d"}
    assert imported_names(tree, "vaal_dist.pkg", modules) == {"vaal_dist.a", "vaal_dist.b", "vaal_dist.pkg.c",
                                                               "vaal_dist.d"}
    names_from_package = ast.parse("from vaal_dist import __version__\nimport numpy\n")
    assert imported_names(names_from_package, "vaal_dist.pkg", modules) == {"vaal_dist"}


def test_no_import_circle_among_vaal_dist_modules():
    graph = import_graph()
    assert "vaal_dist.labeling.cli" in graph["vaal_dist.cli"]          # the graph is read from the package
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as e:
        raise AssertionError("import circle: " + " -> ".join(e.args[1])) from None


def test_no_test_module_imports_another():
    test_modules = {p.stem for p in TESTS.glob("test_*.py")}
    imports = {p.name: sorted(imported_names(ast.parse(p.read_text()), "", test_modules))
               for p in sorted(TESTS.glob("test_*.py"))}
    assert {name: found for name, found in imports.items() if found} == {}


def test_what_every_actor_imports_leaves_torchvision_out():
    """Scoring and training actors import the strategies (their scorers are pickled by reference) and the loops;
    torchvision's import (torch._dynamo under its ops) cost each of them ~1.1 s of CPU. Only the models that
    build a torchvision network import it, when they build one."""
    actor_modules = ["vaal_dist.strategies", "vaal_dist.scoring.stream", "vaal_dist.train.task_loop",
                     "vaal_dist.train.vaal_loop", "vaal_dist.train.aalu_loop"]
    code = (f"import sys\nfor m in {actor_modules!r}:\n    __import__(m)\n"
            "print(sorted(m for m in sys.modules if m.startswith('torchvision')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"

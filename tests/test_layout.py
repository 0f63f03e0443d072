"""The layout holds: one arrow through the code, one subject per file.

The arrow is matrix -> build -> services/targets -> observe -> suites -> report, over a floor of
foundations every layer may use. These tests walk lab/ with ``ast`` and fail on the first import
that runs against it, on a module that reaches into another's private names, on a builder that
serves, and on a file that has grown past one subject's size. They stay in the suite so that
the arrow cannot be broken again without someone noticing.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAB = ROOT / "lab"

# Each layer may import its own layer and those below it (a lower number), nothing above.
# lab.services sits below lab.targets: a driver starts the metadata service of its instance.
LAYERS: dict[str, int] = {
    # foundations: no subject of their own, used by every layer
    "lab.artifacts": 0,
    "lab.messages": 0,
    "lab.proc": 0,
    "lab.runroot": 0,
    "lab.run": 0,
    "lab.config": 0,
    "lab.evidence": 0,
    # configuration the user writes, validated once at the edge
    "lab.matrix": 1,
    "lab.matrix_rules": 1,
    "lab.known_issues": 1,
    # the run history: results (lab.evidence) in, a database; the command line wires it
    "lab.history": 1,
    # what is built, then what runs it, then what reads it
    "lab.packages": 2,
    "lab.build": 3,
    "lab.services": 4,
    "lab.targets": 5,
    "lab.observe": 6,
    "lab.report": 7,
    "lab.cli": 8,
}
# The report reads results (allure files) and the user's known issues; it must be writable
# from results alone, so it imports neither the matrix nor what built or ran the cells.
REPORT_MAY_NOT = ("lab.matrix", "lab.packages", "lab.build", "lab.services", "lab.targets",
                  "lab.observe", "lab.cli", "lab.history")  # fmt: skip
# What starts or serves at run time: none of it belongs in a builder.
SERVING_NAMES = {"Popen", "HTTPServer", "ThreadingHTTPServer", "TCPServer", "socketserver",
                 "http.server", "listen", "serve_forever", "bind", "fork", "posix_spawn",
                 "spawnv", "Thread", "Process", "start_server", "create_server",
                 "nginx"}  # fmt: skip
LINE_BUDGET = 650  # "about 600 lines": one subject per file


def shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def is_module(dotted: str) -> bool:
    base = ROOT / dotted.replace(".", "/")
    return base.with_suffix(".py").exists() or (base / "__init__.py").exists()


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def lab_modules() -> list[Path]:
    """Every module of lab/ but lab/__init__.py (the package's docstring, no code)."""
    return sorted(p for p in LAB.rglob("*.py") if p != LAB / "__init__.py")


def layer_of(module: str) -> str:
    """The entry of LAYERS that ``module`` belongs to (its longest matching prefix)."""
    matches = [name for name in LAYERS if module == name or module.startswith(name + ".")]
    if not matches:
        raise AssertionError(f"{module} belongs to no layer of tests/test_layout.py: add it")
    return max(matches, key=len)


def type_checking_only(tree: ast.Module) -> ast.Module:
    """``tree`` without its ``if TYPE_CHECKING:`` blocks: imports for annotations, which
    never run (an Instance names its Target's class that way)."""
    for node in ast.walk(tree):
        for field in ("body", "orelse"):
            block = getattr(node, field, None)
            if isinstance(block, list):
                setattr(node, field, [n for n in block if not is_type_checking(n)])
    return tree


def is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and dotted_name(node.test) in (
        "TYPE_CHECKING",
        "typing.TYPE_CHECKING",
    )


def imports_of(path: Path, *, at_run_time: bool = False) -> list[tuple[int, str, list[str]]]:
    """(line, imported module, names imported from it) for every lab import in ``path``,
    including those inside functions (a deferred import is still an arrow); ``at_run_time``
    leaves out those for annotations only (under ``if TYPE_CHECKING:``)."""
    found = []
    tree = ast.parse(path.read_text(), str(path))
    if at_run_time:
        tree = type_checking_only(tree)
    if not path.is_relative_to(ROOT):
        package = ""
    elif path.name == "__init__.py":
        package = module_name(path)
    else:
        package = module_name(path.parent)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name, []) for a in node.names if a.name.startswith("lab")]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this file's package
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            if base == "lab" or base.startswith("lab."):
                names = [a.name for a in node.names]
                # `from lab.build import rootfs` imports the module lab.build.rootfs
                if all(is_module(f"{base}.{name}") for name in names):
                    found += [(node.lineno, f"{base}.{name}", []) for name in names]
                else:
                    found.append((node.lineno, base, names))
    return found


def dynamic_imports(path: Path) -> list[str]:
    """importlib.import_module() and __import__(): imports the arrow check cannot follow."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Call):
            called = node.func
            name = called.attr if isinstance(called, ast.Attribute) else getattr(called, "id", "")
            if name in ("import_module", "__import__"):
                found.append(f"{shown(path)}:{node.lineno}: {name}()")
    return found


def test_no_module_imports_by_name_at_run_time() -> None:
    """A module named in a string escapes the arrow check: the lab has none; write the import."""
    assert [use for path in lab_modules() for use in dynamic_imports(path)] == []


def test_the_dynamic_import_check_can_fail(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("import importlib\nimportlib.import_module('lab.targets.base')\n")
    assert dynamic_imports(probe) == [f"{probe}:2: import_module()"]


def import_graph() -> dict[str, set[str]]:
    """Module -> the lab modules it imports when it runs."""
    return {
        module_name(path): {imported for _, imported, _ in imports_of(path, at_run_time=True)}
        for path in lab_modules()
    }


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles of ``graph``: its strongly connected components of two or more
    modules, or a module that imports itself (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in sorted(graph.get(node, ())):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while (member := stack.pop()) != node:
                component.append(member)
            component.append(node)
            if len(component) > 1 or node in graph.get(node, ()):
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycles() -> None:
    """Within one layer too: two modules that need each other are one subject, or share a
    third that both should import."""
    assert cycles(import_graph()) == []


def test_the_cycle_check_can_fail() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}}
    assert cycles(graph) == [["a", "b", "c"], ["e"]]


def test_annotations_only_imports_are_no_cycle(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from lab.targets import base\n"
        "from lab.build import rootfs\n"
    )
    assert sorted(m for _, m, _ in imports_of(probe)) == ["lab.build.rootfs", "lab.targets.base"]
    assert [m for _, m, _ in imports_of(probe, at_run_time=True)] == ["lab.build.rootfs"]


def arrow_breaks() -> list[str]:
    breaks = []
    for path in lab_modules():
        here = module_name(path)
        own = layer_of(here)
        for line, imported, _ in imports_of(path):
            theirs = layer_of(imported)
            where = f"{shown(path)}:{line}: {here} imports {imported}"
            if LAYERS[theirs] > LAYERS[own]:
                breaks.append(f"{where} (layer {LAYERS[theirs]} above {LAYERS[own]})")
            elif own == "lab.report" and theirs in REPORT_MAY_NOT:
                breaks.append(f"{where} (the report is written from results alone)")
    return breaks


def test_every_import_follows_the_arrow() -> None:
    assert arrow_breaks() == []


def test_the_checker_sees_a_backward_import(tmp_path: Path) -> None:
    """The walk itself works: the layer of a build module is above the solver's and below the
    targets', and an import inside a function is found."""
    source = tmp_path / "probe.py"
    source.write_text("def f():\n    from lab.targets import base\n    import lab.report.gate\n")
    found = [imported for _, imported, _ in imports_of(source)]
    assert found == ["lab.targets.base", "lab.report.gate"]
    assert LAYERS[layer_of("lab.build.rootfs")] > LAYERS[layer_of("lab.packages.solve")]
    assert LAYERS[layer_of("lab.build.rootfs")] < LAYERS[layer_of("lab.targets.libvirt")]


def is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def private_uses(path: Path) -> list[str]:
    """``from lab.x import _name``, and ``x._name`` where ``x`` is an imported lab module."""
    tree = ast.parse(path.read_text(), str(path))
    modules = set()  # the local names bound to lab modules
    uses = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (
            node.level or (node.module or "").startswith("lab")
        ):
            for alias in node.names:
                if is_private(alias.name):
                    uses.append(f"{shown(path)}:{node.lineno}: {alias.name} from {node.module}")
                elif is_module(f"{node.module}.{alias.name}"):
                    modules.add(alias.asname or alias.name)
        elif isinstance(node, ast.Import):
            modules |= {a.asname or a.name for a in node.names if a.name.startswith("lab")}
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and is_private(node.attr):
            dotted = dotted_name(node.value)
            if dotted in modules:
                uses.append(f"{shown(path)}:{node.lineno}: {dotted}.{node.attr}")
    return uses


def dotted_name(node: ast.expr) -> str | None:
    """``lab.matrix`` for the expression lab.matrix; None for anything but names and dots."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = dotted_name(node.value)
        return f"{base}.{node.attr}" if base else None
    return None


def test_no_module_uses_another_modules_private_names() -> None:
    assert [use for path in lab_modules() for use in private_uses(path)] == []


def test_the_private_check_can_fail(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text(
        "from lab import matrix\nfrom lab.matrix import _x\nmatrix._read_yaml()\n"
        "import lab.matrix\nlab.matrix._Schema\nfrom .rootfs import _run\n"
    )
    found = private_uses(probe)
    assert sorted(found) == sorted(
        [
            f"{probe}:2: _x from lab.matrix",
            f"{probe}:6: _run from rootfs",
            f"{probe}:3: matrix._read_yaml",
            f"{probe}:5: lab.matrix._Schema",
        ]
    )


def serving_uses(path: Path) -> list[str]:
    uses = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        name = None
        if isinstance(node, ast.Attribute):
            name = node.attr
        elif isinstance(node, ast.Name):
            name = node.id
        elif isinstance(node, ast.alias):
            name = node.name
        if name in SERVING_NAMES:
            uses.append(f"{shown(path)}:{getattr(node, 'lineno', '?')}: {name}")
    return uses


def test_no_builder_starts_or_serves_anything() -> None:
    """lab/build only builds: servers, emulators and guests live in lab/services, lab/targets."""
    build = [p for p in lab_modules() if p.is_relative_to(LAB / "build")]
    assert build, "lab/build has moved: update this test"
    below = [p for p in lab_modules() if LAYERS[layer_of(module_name(p))] <= LAYERS["lab.packages"]]
    build += below
    assert [use for path in build for use in serving_uses(path)] == []


def test_the_serving_check_can_fail(tmp_path: Path) -> None:
    server = tmp_path / "server.py"
    server.write_text("import subprocess\nsubprocess.Popen(['nginx'])\n")
    assert serving_uses(server) == [f"{server}:2: Popen"]


@pytest.mark.parametrize("path", lab_modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_one_subject_per_file(path: Path) -> None:
    lines = len(path.read_text().splitlines())
    assert lines <= LINE_BUDGET, f"{path.relative_to(ROOT)} has {lines} lines: split it by subject"


def test_tools_do_not_take_lab_build_for_a_build_output() -> None:
    """``build/`` is where most tools expect generated files; lab/build is source. Nothing may
    skip it: not git (ignore files), not the linter, not the type checker."""
    on_disk = [str(p.relative_to(ROOT)) for p in (LAB / "build").rglob("*.py")]
    ignored = subprocess.run(
        ["git", "check-ignore", "--no-index", *on_disk], cwd=ROOT, capture_output=True, text=True
    )  # exit 1: none is ignored; 128: not a git checkout (a tarball), nothing to check
    assert ignored.returncode in (1, 128), f"git ignores {ignored.stdout.split()}"
    linted = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--show-files", "."],
        cwd=ROOT, capture_output=True, text=True, check=False,
    ).stdout  # fmt: skip
    assert all(str(ROOT / p) in linted for p in on_disk)
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'files = ["lab"]' in pyproject  # mypy checks the whole package, lab/build included

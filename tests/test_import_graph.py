"""No import circle among molkrr's modules (issue 19): the graph of every import in src/molkrr, read from the source.

How imports are counted (what the checker below sees):

* every ``import`` / ``from ... import`` statement of a module, at module level *and* inside functions,
  methods and ``try``/``if`` blocks: a function-level import is a runtime dependency, and a circle closed
  only by function-level imports (model.py <-> persistence.py before issue 19 item 2) is still a circle;
* ``importlib.import_module("molkrr....")`` with a literal name;
* ``from pkg import name`` is an edge to ``pkg.name`` when that is a module, else to ``pkg`` (its
  ``__init__.py``); the parent packages Python imports on the way are not edges;
* not seen: imports with computed names, i.e. the registries discovering the modules of their own
  package (``representations/registry.py``, ``kernels/__init__.py``), which import downwards only.

One late binding is allowed and is not a circle: ``MolecularKRR.save`` imports ``molkrr.persistence``
inside the method, while persistence imports no estimator module (it reads the classes from the registries
and each class checks its own fields, ``model_file_schema()`` in :mod:`molkrr.schema`).
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src" / "molkrr"

#: Circles that exist today: each entry is one strongly connected component, exactly. A new module
#: joining one, or any other circle, fails the test; when one is removed, delete its entry. None is left
#: (issue 19 item 3 removed the last, krr.py <-> uncertainty.py: both now use krr_posterior.py, which imports
#: no estimator module).
KNOWN_CYCLES: set[frozenset[str]] = set()


def module_files(root: Path) -> dict[str, tuple[Path, bool]]:
    """{dotted module name: (file, is a package)} for every .py file under the package directory ``root``."""
    mods = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        mods[".".join(parts[:-1] if is_pkg else parts)] = (path, is_pkg)
    return mods


def import_graph(root: Path) -> dict[str, set[str]]:
    """{module: the package's modules it imports} (rules in the module docstring)."""
    mods = module_files(root)
    top = root.name
    graph: dict[str, set[str]] = {}
    for name, (path, is_pkg) in mods.items():
        package = name if is_pkg else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base_name = ".".join(base + ([node.module] if node.module else []))
                else:
                    base_name = node.module or ""
                targets |= {f"{base_name}.{a.name}" if f"{base_name}.{a.name}" in mods else base_name for a in node.names}
            elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
                  and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
                targets.add(node.args[0].value)
        graph[name] = {t for t in targets if t in mods and t != name and (t == top or t.startswith(top + "."))}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            v, children = work[-1]
            w = next(children, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                component = set()
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    component.add(w)
                    if w == v:
                        break
                if len(component) > 1:
                    found.append(frozenset(component))
    return found


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for w in graph[todo.pop()] - seen:
            seen.add(w)
            todo.append(w)
    return seen


def test_no_new_import_cycle():
    found = set(cycles(import_graph(SRC)))
    new = found - KNOWN_CYCLES
    assert not new, "new import cycles: " + "; ".join(" <-> ".join(sorted(c)) for c in new)
    assert found == KNOWN_CYCLES, "a listed circle is gone: delete its KNOWN_CYCLES entry"


def test_no_import_circle_at_all():
    assert not KNOWN_CYCLES
    assert cycles(import_graph(SRC)) == []


def test_kernel_ridge_reaches_its_posterior_without_the_molecule_level():
    graph = import_graph(SRC)
    assert "molkrr.krr_posterior" in graph["molkrr.krr"] and "molkrr.uncertainty" not in reachable(graph, "molkrr.krr")
    below = reachable(graph, "molkrr.krr_posterior")
    assert not below & {"molkrr.krr", "molkrr.uncertainty", "molkrr.model", "molkrr.derivative_krr"}


def test_the_model_file_container_imports_no_estimator():
    graph = import_graph(SRC)
    below = reachable(graph, "molkrr.persistence")
    assert "molkrr.model" not in below and "molkrr" not in below
    assert not below & {"molkrr.krr", "molkrr.derivative_krr", "molkrr.metric.base_metric",
                        "molkrr.representations.coulomb", "molkrr.representations.bob", "molkrr.applicability"}
    assert "molkrr.persistence" in graph["molkrr.model"]  # the one late binding: MolecularKRR.save
    assert reachable(graph, "molkrr.schema") <= {"molkrr.errors", "molkrr.molecules"}


def test_the_checker_sees_function_level_and_relative_imports(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from .sub import b\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "b.py").write_text("import importlib\nimportlib.import_module('pkg.c')\n")
    (pkg / "c.py").write_text("from . import a\nfrom .sub.b import x\n")
    graph = import_graph(pkg)
    assert graph["pkg.a"] == {"pkg.sub.b"} and graph["pkg.sub.b"] == {"pkg.c"} and graph["pkg.c"] == {"pkg.a", "pkg.sub.b"}
    assert cycles(graph) == [frozenset({"pkg.a", "pkg.sub.b", "pkg.c"})]

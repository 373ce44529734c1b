"""Modules extend each other through public hooks (issue 19 item 1): read from the source of src/molkrr.

* no module imports another module's private name (``from ..model import _energies``), except the
  package-internal helper modules listed in :data:`PACKAGE_INTERNAL` and the joints in :data:`KNOWN_PRIVATE_IMPORTS`;
* no module sets a fitted attribute (``obj.name_ = ...``) of an object other than ``self``: each estimator
  sets its own (``MolecularKRR.fit``, ``KernelRidge.set_fitted_solution``, ``DerivativeKRR.set_solution``),
  except the opt-ins in :data:`KNOWN_OUTSIDE_WRITES`.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src" / "molkrr"

#: A package's own private helper modules, whose underscore names its modules share: (package, module).
PACKAGE_INTERNAL = {
    ("molkrr.cli", "molkrr.cli._data"),  # the commands' data helpers (one module per command imports them)
    ("molkrr.cli", "molkrr.cli._shared"),  # the click group, the error wrapper and the common options
    ("molkrr.metric", "molkrr.metric._array_objectives"),  # the objectives on backend operations (numpy keeps its own)
}
#: (importing module, imported module, name) still to close (none today).
KNOWN_PRIVATE_IMPORTS: set[tuple[str, str, str]] = set()
#: (file relative to src/molkrr, "object.attribute") set from outside on purpose.
KNOWN_OUTSIDE_WRITES = {
    ("applicability.py", "model.elements_"),  # allow_elements: the documented opt-in after fitting, saved with the model
}


def _module_name(path: Path) -> tuple[str, str]:
    """(dotted module name, its package) of a file under SRC."""
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        name = ".".join(parts[:-1])
        return name, name
    name = ".".join(parts)
    return name, name.rpartition(".")[0]


def private_imports() -> set[tuple[str, str, str]]:
    """(importer, imported module, name) for every ``from <molkrr module> import _name`` in src/molkrr."""
    found = set()
    for path in sorted(SRC.rglob("*.py")):
        name, package = _module_name(path)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.ImportFrom):
                continue
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            if source != "molkrr" and not source.startswith("molkrr."):
                continue
            for alias in node.names:
                if alias.name.startswith("_") and not alias.name.startswith("__"):
                    found.add((name, source, alias.name))
    return found


def outside_writes() -> set[tuple[str, str]]:
    """(file, "object.attribute") for every assignment to ``<object>.<name>_`` where object is not self/cls."""
    found = set()
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) and node.attr.endswith("_")
                    and not node.attr.startswith("__")):
                owner = ast.unparse(node.value)
                if owner not in ("self", "cls"):
                    found.add((path.relative_to(SRC).as_posix(), f"{owner}.{node.attr}"))
    return found


def test_no_module_imports_another_modules_private_names():
    offending = {
        (importer, source, name)
        for importer, source, name in private_imports()
        if not any(importer.startswith(pkg) and mod in (source, f"{source}.{name}") for pkg, mod in PACKAGE_INTERNAL)
    } - KNOWN_PRIVATE_IMPORTS
    assert not offending, f"imports of private names across modules (give them a public hook): {sorted(offending)}"


def test_no_module_sets_another_objects_fitted_attributes():
    offending = outside_writes() - KNOWN_OUTSIDE_WRITES
    assert not offending, f"fitted attributes set from outside their estimator: {sorted(offending)}"


def test_the_checks_see_what_they_look_for(tmp_path, monkeypatch):
    """Both checks find a planted offence (they read the tree they are pointed at)."""
    pkg = tmp_path / "molkrr"
    (pkg / "solvers").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "solvers" / "__init__.py").write_text("")
    (pkg / "model.py").write_text("def _energies():\n    pass\n")
    (pkg / "solvers" / "late.py").write_text("from ..model import _energies\n\ndef f(model):\n    model.krr_ = 1\n")
    monkeypatch.setattr(sys.modules[__name__], "SRC", pkg)
    assert private_imports() == {("molkrr.solvers.late", "molkrr.model", "_energies")}
    assert outside_writes() == {("solvers/late.py", "model.krr_")}

"""The representation registry: CLI names → classes and the parameters each name fixes.

A representation module registers its class under one or more names with a decorator::

    @register_representation("cm-sorted", variant="sorted")
    @register_representation("cm-unsorted", variant="unsorted")
    class CoulombMatrix(Representation):
        ...

Everything that needs to know the representations reads this registry: ``molkrr``'s top-level
names, :func:`make_representation`, the CLI's ``--representation`` choices, the model-file
allow-list (:func:`molkrr.persistence.allowed_classes`) and the contract test suite
(``tests/representations/test_contract_representations.py``). Adding a representation is therefore one new module in
``molkrr/representations/`` (plus its tests): the registry finds every module of the package the
first time it is asked (:func:`discover`), so importing :mod:`molkrr.representations` alone
loads no representation (and none of their compiled kernels).

Dataset sizing is the representation's own business: :meth:`Representation.sized_for` returns a
copy sized to hold every molecule of a data set (e.g. :func:`molkrr.datasets.qm9.sized_for_qm9`).
"""

from __future__ import annotations

import importlib
import pkgutil
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "RepresentationSpec",
    "discover",
    "get_spec",
    "make_representation",
    "molecular_representation_names",
    "register_representation",
    "representation_classes",
    "representation_names",
]

#: Modules of the package that hold no representation.
_NOT_REPRESENTATIONS = frozenset({"base", "registry"})


@dataclass(frozen=True)
class RepresentationSpec:
    """One registered name.

    Attributes
    ----------
    name : str
        The name (CLI spelling, e.g. ``"cm-sorted"``).
    cls : type
        The :class:`~molkrr.representations.base.Representation` subclass.
    params : dict
        Constructor parameters the name fixes (e.g. ``{"variant": "sorted"}``).
    per_atom : bool
        Whether ``transform`` gives one row per atom (True) or per molecule (False); only
        per-molecule representations can feed :class:`molkrr.MolecularKRR`.
    description : str
        One line for ``--help`` texts and docs.
    """

    name: str
    cls: type
    params: dict = field(default_factory=dict)
    per_atom: bool = False
    description: str = ""

    def make(self, **params: Any) -> Any:
        """An unfitted instance: the name's fixed parameters, overridden by ``params``."""
        return self.cls(**{**self.params, **params})


_SPECS: dict[str, RepresentationSpec] = {}
_lock = threading.RLock()
_discovered = False


def register_representation(
    name: str, *, per_atom: bool = False, description: str = "", **params: Any
) -> Callable[[type], type]:
    """Class decorator: register the class under ``name`` with the fixed constructor ``params``.

    Parameters
    ----------
    name : str
        Lower-case name, unique across molkrr (the CLI's ``--representation`` value).
    per_atom : bool
        ``transform`` returns one row per atom rather than one per molecule.
    description : str
        One line describing the name; the class docstring's first line if empty.
    **params
        Constructor parameters the name implies; every key must be a parameter of the class.

    Raises
    ------
    ValueError
        ``name`` is already registered to another class or parameters, or ``params`` names a
        parameter the class does not have.
    """

    def decorate(cls: type) -> type:
        unknown = set(params) - set(cls._get_param_names())
        if unknown:
            raise ValueError(f"register_representation({name!r}): {cls.__name__} has no parameter(s) {sorted(unknown)}")
        doc = description or ((cls.__doc__ or "").strip().splitlines() or [""])[0]
        spec = RepresentationSpec(name, cls, dict(params), per_atom, doc)
        with _lock:
            old = _SPECS.get(name)
            if old is not None and not _same(old, spec):
                raise ValueError(f"representation name {name!r} is already registered to {old.cls.__module__}.{old.cls.__name__}")
            _SPECS[name] = spec
        return cls

    return decorate


def _same(a: RepresentationSpec, b: RepresentationSpec) -> bool:
    # a module imported twice (e.g. reloaded) registers an equal class again
    same_class = a.cls is b.cls or (a.cls.__module__, a.cls.__qualname__) == (b.cls.__module__, b.cls.__qualname__)
    return same_class and a.params == b.params and a.per_atom == b.per_atom


def discover() -> None:
    """Import every representation module of :mod:`molkrr.representations` once (they register themselves).

    Modules whose optional dependency is missing (``ModuleNotFoundError`` for a package other than
    molkrr) are left out; any other import error is raised.
    """
    global _discovered
    if _discovered:
        return
    with _lock:
        if _discovered:
            return
        package = importlib.import_module(__package__)
        for info in pkgutil.iter_modules(package.__path__):
            if info.name.startswith("_") or info.name in _NOT_REPRESENTATIONS:
                continue
            try:
                importlib.import_module(f"{__package__}.{info.name}")
            except ModuleNotFoundError as exc:
                if exc.name is None or exc.name.split(".")[0] == "molkrr":
                    raise
        _discovered = True


def representation_names() -> tuple[str, ...]:
    """All registered names, sorted."""
    discover()
    return tuple(sorted(_SPECS))


def molecular_representation_names() -> tuple[str, ...]:
    """Registered names with one feature row per molecule (those :class:`molkrr.MolecularKRR` takes), sorted."""
    discover()
    return tuple(sorted(n for n, s in _SPECS.items() if not s.per_atom))


def get_spec(name: str) -> RepresentationSpec:
    """The :class:`RepresentationSpec` registered as ``name``; ValueError (listing the names) otherwise."""
    discover()
    try:
        return _SPECS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown representation {name!r}; choose one of {', '.join(representation_names())}") from None


def make_representation(name: str, **params: Any) -> Any:
    """The representation registered as ``name``, unfitted, with ``params`` on top of the name's own."""
    return get_spec(name).make(**params)


def representation_classes() -> dict[str, type]:
    """Class name → class of every registered representation (e.g. ``{"CoulombMatrix": CoulombMatrix}``).

    Raises
    ------
    RuntimeError
        Two registered classes share a name (a model file could not say which one it means).
    """
    discover()
    classes: dict[str, type] = {}
    for spec in _SPECS.values():
        other = classes.setdefault(spec.cls.__name__, spec.cls)
        if other is not spec.cls:
            raise RuntimeError(
                f"two representation classes are called {spec.cls.__name__}: {other.__module__} and {spec.cls.__module__}"
            )
    return classes

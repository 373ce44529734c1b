"""molkrr — kernel ridge regression on molecules, with analytic forces and metric learning.

The representation classes (``molkrr.CoulombMatrix``, ``molkrr.BagOfBonds``, ``molkrr.FCHL19``, and
any other registered in :mod:`molkrr.representations.registry`) are read from the registry when
first used, so ``import molkrr`` loads none of their compiled kernels.
"""

from typing import Any as _Any

from . import datasets
from ._version import __version__
from .backends import set_backend
from .errors import MolkrrError
from .kernels import make_kernel
from .krr import KernelRidge, select_hyperparameters
from .model import MolecularKRR
from .molecules import Molecules
from .persistence import load_model, register_model_class, save_model
from .calculator import MolkrrCalculator
from .derivative_krr import DerivativeKRR as _DerivativeKRR
from .metric import MLKR, MLKRR, mlkr_loss_and_grad, mlkrr_loss_and_grad
from .representations import make_representation, representation_classes as _representation_classes

# molkrr's estimators that a model file may name (representations and kernels come from their registries);
# each declares its saved fields in model_file_schema() (molkrr.schema)
for _cls in (KernelRidge, MolecularKRR, MLKR, MLKRR, _DerivativeKRR):
    register_model_class(_cls)
del _cls, _DerivativeKRR

_API = [
    "MLKR",
    "MLKRR",
    "MolkrrCalculator",
    "KernelRidge",
    "MolecularKRR",
    "Molecules",
    "MolkrrError",
    "datasets",
    "load_model",
    "make_kernel",
    "make_representation",
    "mlkr_loss_and_grad",
    "mlkrr_loss_and_grad",
    "save_model",
    "select_hyperparameters",
    "set_backend",
    "__version__",
]


def __getattr__(name: str) -> _Any:
    if name == "__all__":  # computed: every registered representation class is public
        return sorted(_API + list(_representation_classes()))
    classes = _representation_classes() if name[:1].isupper() else {}
    if name in classes:
        return classes[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list:
    return sorted(set(globals()) | set(_representation_classes()))

"""molkrr — kernel ridge regression on molecules, with analytic forces and metric learning."""

from . import datasets
from .backends import set_backend
from .errors import MolkrrError
from .kernels import make_kernel
from .krr import KernelRidge, select_hyperparameters
from .model import MolecularKRR
from .molecules import Molecules
from .persistence import load_model, save_model
from .representations.bob import BagOfBonds
from .representations.coulomb import CoulombMatrix
from .representations.fchl19 import FCHL19
from .calculator import MolkrrCalculator
from .metric import MLKR, MLKRR, mlkr_loss_and_grad, mlkrr_loss_and_grad

__version__ = "0.1.0"

__all__ = [
    "BagOfBonds",
    "CoulombMatrix",
    "FCHL19",
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
    "mlkr_loss_and_grad",
    "mlkrr_loss_and_grad",
    "save_model",
    "select_hyperparameters",
    "set_backend",
    "__version__",
]

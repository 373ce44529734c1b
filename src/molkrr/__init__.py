"""molkrr — kernel ridge regression on molecules, with analytic forces and metric learning."""

from .errors import MolkrrError
from .kernels import make_kernel
from .molecules import Molecules

__version__ = "0.1.0"

__all__ = ["Molecules", "MolkrrError", "make_kernel", "__version__"]

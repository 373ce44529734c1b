"""The package's exception hierarchy.

Every error raised on bad input derives from :class:`MolkrrError`, and also from the
built-in exception a caller would naturally catch (``ValueError``, ``KeyError``, ...),
so ``except ValueError`` keeps working for code that does not know about molkrr.
"""

from __future__ import annotations


class MolkrrError(Exception):
    """Base class of every error molkrr raises on purpose."""


class MoleculeError(MolkrrError, ValueError):
    """A molecule (or batch of molecules) is not physically or structurally valid."""


class NonFiniteCoordinatesError(MoleculeError):
    """Coordinates contain NaN or infinity."""


class CoincidentAtomsError(MoleculeError):
    """Two atoms of one molecule sit (numerically) on top of each other."""


class UnknownElementError(MoleculeError):
    """An atomic number is not positive, not a known element, or not supported by a representation."""


class UnseenElementError(UnknownElementError):
    """An element the model was not trained on (see :mod:`molkrr.applicability` for the opt-in)."""


class EmptyMoleculeError(MoleculeError):
    """A molecule has no atoms."""


class IndexOutOfRangeError(MolkrrError, IndexError):
    """An index into a batch of molecules is out of range or of the wrong kind."""


class ShapeMismatchError(MolkrrError, ValueError):
    """Arrays that must agree in shape or count do not."""


class RepresentationSizeError(MolkrrError, ValueError):
    """A molecule does not fit the size a representation learned in ``fit`` (too many atoms, a full bag, ...)."""


class NotDifferentiableError(MolkrrError, TypeError):
    """A derivative was requested from a component that has none."""


class NumericalError(MolkrrError, ArithmeticError):
    """A linear system could not be solved reliably (e.g. a singular kernel matrix)."""


class ModelFileError(MolkrrError, ValueError):
    """A model file is corrupt, truncated, of a foreign format or of an unsupported version."""


class DatasetError(MolkrrError, RuntimeError):
    """A data set could not be found or read."""


class InvalidInputError(MolkrrError, ValueError):
    """An input array or parameter is unusable: NaN or infinity, non-numeric, too few samples, out of range."""


class SplitSizeError(InvalidInputError):
    """A split asks for more molecules (frames) than the data, or one of its blocks, holds."""


class InputTypeError(MolkrrError, TypeError):
    """An argument is of a type molkrr cannot use (e.g. a string where molecules are expected)."""
# -- compute backends (issue 13) --------------------------------------------------------------------
class BackendUnavailableError(MolkrrError, RuntimeError):
    """A compute backend or device was asked for that this installation or machine does not have
    (e.g. ``backend="torch"`` without torch installed, ``device="cuda"`` without a GPU)."""


class DeviceMemoryError(MolkrrError, MemoryError):
    """A computation does not fit in the memory of its device; the message says which size fits."""


# -- predictive uncertainty (issue 18) --------------------------------------------------------------
class UncertaintyNotSupportedError(MolkrrError, NotImplementedError):
    """A posterior standard deviation was asked of a model that cannot give one yet (see :mod:`molkrr.uncertainty`:
    the FALKON solver, force-trained models, local kernels, force std of a non-stationary kernel)."""

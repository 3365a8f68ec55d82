"""The properties that bind an implementation to the specification (see base.py for the format).

Importing this package registers every property in ``REGISTRY``, in a stable order.
"""

from .base import REGISTRY, Measure, Property, PropertyFailure, register, require, require_close
from . import attention  # noqa: F401,E402  (registers the attention-level properties)
from . import model  # noqa: F401,E402  (registers the model-level properties)

__all__ = ["REGISTRY", "Measure", "Property", "PropertyFailure", "register", "require", "require_close"]

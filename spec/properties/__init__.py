"""The properties that bind an implementation to the specification (see base.py for the format).

Importing this package registers every property in ``REGISTRY``, in a stable
order: one step of attention (attention.py, then its backward in
attention_vjp.py), then the model (model.py: padding, batch rows, gradients;
decoding.py; numerics.py; lstm.py). attention_bounds.py and
model_checks.py hold what those modules share.
"""

from .base import REGISTRY, Measure, Property, PropertyFailure, register, require, require_close
from . import attention  # noqa: F401,E402  (each module registers its properties on import, in this order)
from . import attention_vjp  # noqa: F401,E402
from . import model  # noqa: F401,E402
from . import decoding  # noqa: F401,E402
from . import numerics  # noqa: F401,E402
from . import lstm  # noqa: F401,E402

__all__ = ["REGISTRY", "Measure", "Property", "PropertyFailure", "register", "require", "require_close"]

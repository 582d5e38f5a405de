"""Method registry. Importing this package registers every built-in method."""

from . import coreset  # noqa: F401  (registers random, kcenter, herding)
from .base import (
    METHODS, DataConfig, DistillConfig, Method, RunContext, distill, list_methods, make_config,
    register_method,
)

__all__ = [
    "METHODS", "DataConfig", "DistillConfig", "Method", "RunContext", "distill", "list_methods",
    "make_config", "register_method",
]

"""Method registry. Importing this package registers every built-in method."""

from . import coreset, dm_family, lad  # noqa: F401  (registers the built-in methods)
from .base import (
    METHODS,
    DataConfig,
    DistillConfig,
    Method,
    RunContext,
    config_from_preset,
    distill,
    list_methods,
    make_config,
    register_method,
)
from .matching import DISCREPANCIES, list_discrepancies

__all__ = [
    "DISCREPANCIES", "list_discrepancies", "METHODS", "DataConfig", "DistillConfig", "Method", "RunContext", "config_from_preset", "distill", "list_methods",
    "make_config", "register_method",
]

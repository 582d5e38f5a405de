"""ltdistill: long-tailed dataset distillation in PyTorch."""

__version__ = "0.1.0"

from .artifact import DistilledSet, export_imagefolder, load_set, save_set  # noqa: E402
from .data import LTData, list_datasets, load_lt_data  # noqa: E402
from .evaluate import EvalConfig, evaluate_full, evaluate_set  # noqa: E402
from .methods import DistillConfig, distill, list_methods, make_config  # noqa: E402
from .nets import create_net, list_nets, register_net  # noqa: E402

__all__ = [
    "DistillConfig", "DistilledSet", "EvalConfig", "LTData", "create_net", "register_net", "distill", "evaluate_full",
    "evaluate_set", "export_imagefolder", "list_datasets", "list_methods", "list_nets",
    "load_lt_data", "load_set", "make_config", "save_set",
]

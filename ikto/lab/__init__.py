"""A lab of ikto nodes: network namespaces on this host now, other drivers later."""

from ikto.lab.driver import ConvergenceTimeout, LabDriver, NodeView
from ikto.lab.lab import NamespaceLab
from ikto.lab.shell import LabError, LabUsageError

Lab = NamespaceLab

__all__ = [
    "ConvergenceTimeout",
    "Lab",
    "LabDriver",
    "LabError",
    "LabUsageError",
    "NamespaceLab",
    "NodeView",
]

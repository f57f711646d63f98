"""A lab of ikto nodes: network namespaces on this host now, other drivers later."""

from ikto_lab.driver import ConvergenceTimeout, LabDriver, NodeView
from ikto_lab.lab import NamespaceLab
from ikto_lab.shell import LabError, LabUsageError

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

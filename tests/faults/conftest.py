"""The fault suite's hooks and fixtures live in faultlab.py, beside the helpers the tests
import from it: a module named `conftest` is ambiguous when several suites run together."""

from faultlab import healthy, lab, pytest_collection_modifyitems, pytest_configure

__all__ = ["healthy", "lab", "pytest_collection_modifyitems", "pytest_configure"]

"""Shared test helpers live in tests/ (fakes.py, badinputs.py): make them importable."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

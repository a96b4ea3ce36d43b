"""The build tests reuse the hand-written test models of tests/runtime (tinymodel.py)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1] / "runtime"))

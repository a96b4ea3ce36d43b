"""Shared fixtures. Test helpers live in tests/ (importable as plain modules)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
# Every pipeline the tests run verifies the IR after each pass (kiln.transform.PassContext.verify_each).
os.environ.setdefault("KILN_VERIFY_EACH", "1")

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from ci_skips import pytest_runtest_makereport  # noqa: E402,F401  (a hook: CI fails on missing-dependency skips)

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # launching.py, dist_worker.py

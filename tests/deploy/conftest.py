import sys
from pathlib import Path

# The deploy tests reuse the service tests' helpers (artifacts, images, servers).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "service"))

"""Style, as ament_flake8 would check a ROS package: ruff with ruff.toml (pycodestyle,
pyflakes, import order, 120 columns)."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ruff_finds_nothing():
    run = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "src", "test", "bench", "launch",
                          "scripts"], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr

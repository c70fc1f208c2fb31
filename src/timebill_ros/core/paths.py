"""Where timebill keeps its per-machine data (calibrations, built models)."""
from __future__ import annotations

import os
from pathlib import Path


def timebill_home() -> Path:
    """Root folder for calibrations and built models: $TIMEBILL_HOME or ~/.cache/timebill."""
    env = os.environ.get("TIMEBILL_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "timebill"

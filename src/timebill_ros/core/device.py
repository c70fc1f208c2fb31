"""Where the model runs, and waiting for it before reading a clock.

On a GPU, torch returns from a forward before the kernels finish; a clock read right
after would time the launch, not the work. Every timed section (engine phases,
calibration, benchmarks) therefore synchronizes the device before it reads the clock.
On the CPU that is a no-op. GPU paths have not been run on these machines (no GPU here).
"""
from __future__ import annotations

import re

import torch

DEVICE_SPEC = re.compile(r"^(cpu|auto|cuda(:\d+)?)$")


class DeviceError(ValueError):
    """A device that is malformed or not present; the message names the fix."""


def resolve_device(spec: str) -> torch.device:
    """`cpu`, `cuda`, `cuda:N`, or `auto` (the first CUDA device when torch sees one, else cpu)."""
    if not DEVICE_SPEC.match(spec):
        raise DeviceError(f"unknown device {spec!r}; use cpu, cuda, cuda:N or auto")
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(spec)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"device {spec!r}: torch sees no CUDA device (CPU build of torch, or no driver); "
                              "use device cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceError(f"device {spec!r}: only {torch.cuda.device_count()} CUDA device(s)")
    return device


def synchronize(device: torch.device) -> None:
    """Wait until every kernel queued on DEVICE has finished (nothing to wait for on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)

"""Which torch device a command runs on: 'cpu', or 'cuda[:i]' only when torch sees that GPU."""

from __future__ import annotations

from mergescope.io.errors import InputError


def resolve_device(device: str | None) -> str:
    device = (device or "cpu").strip().lower()
    if device == "cpu":
        return "cpu"  # no torch import: a cached analysis never needs it
    if device == "cuda" or device.startswith("cuda:"):
        import torch

        if not torch.cuda.is_available():
            raise InputError(
                f"--device {device}: CUDA is not available on this machine (torch {torch.__version__}); "
                f"use --device cpu"
            )
        if ":" in device:
            idx = device.split(":", 1)[1]
            if not idx.isdigit() or int(idx) >= torch.cuda.device_count():
                raise InputError(
                    f"--device {device}: no such GPU (this machine has {torch.cuda.device_count()}); "
                    f"use --device cuda or cuda:0"
                )
        return device
    raise InputError(f"--device {device}: unknown device; use cpu or cuda")

"""Which torch device runs the networks: "auto", "cpu", "cuda", "cuda:N"."""

from __future__ import annotations

from ..errors import ModelError


def resolve_device(device: str = "auto"):
    """Turn "auto", "cpu", "cuda", "cuda:N" (or a torch.device) into a ``torch.device``.

    "auto" picks CUDA when a GPU is usable and the CPU otherwise. Asking for CUDA without a
    GPU raises :class:`ModelError`.
    """
    import torch

    if isinstance(device, torch.device):
        device = str(device)
    name = str(device or "auto").lower()
    if name == "gpu":
        name = "cuda"
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ModelError(
                f"device {device!r} requested but no CUDA GPU is available to PyTorch "
                f"(torch {torch.__version__}). Use device='cpu' or 'auto'."
            )
        return torch.device(name)
    if name in ("cpu", "mps"):
        return torch.device(name)
    raise ModelError(f"unknown device {device!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'.")

"""Checkpoints are loaded as weights only: a pickle in a checkpoint never runs code.

``torch.load`` unpickles, and a planted payload executes on load. DeepSpeed's loaders call
``torch.load(..., weights_only=False)`` (0.19: its checkpoint engine, ``zero_to_fp32``,
``ds_to_universal``), so inside :func:`weights_only_loading` every ``torch.load`` is made
``weights_only=True``, with an allow-list of the few classes DeepSpeed's own checkpoints hold
(found with ``torch.serialization.get_unsafe_globals_in_checkpoint`` on ZeRO-1/2/3 checkpoints).
Anything else is refused with :class:`UnsafeCheckpointError`, naming the file and the global.
Exports are safetensors, which hold no code at all.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import pickle
import runpy
import sys
from collections.abc import Iterator

import torch

# module.Class pickled inside DeepSpeed checkpoints: plain data classes and enums.
DEEPSPEED_GLOBALS = (
    "deepspeed.runtime.zero.config.ZeroStageEnum",
    "deepspeed.runtime.fp16.loss_scaler.LossScaler",
    "deepspeed.utils.tensor_fragment.fragment_address",
)


class UnsafeCheckpointError(RuntimeError):
    """A checkpoint file holds objects other than weights and the allow-listed DeepSpeed ones."""


@functools.cache
def allowed_globals() -> list[type]:
    found = []
    for name in DEEPSPEED_GLOBALS:
        module, _, attr = name.rpartition(".")
        with contextlib.suppress(ImportError, AttributeError):
            found.append(getattr(importlib.import_module(module), attr))
    return found


@contextlib.contextmanager
def weights_only_loading() -> Iterator[None]:
    """Every ``torch.load`` in this block loads weights only (see module docstring)."""
    real = torch.load

    def load(f, *args, **kwargs):
        kwargs["weights_only"] = True
        try:
            with torch.serialization.safe_globals(allowed_globals()):
                return real(f, *args, **kwargs)
        except pickle.UnpicklingError as err:
            raise UnsafeCheckpointError(
                f"{f} holds objects other than weights, so it was not loaded (a pickle there "
                f"could run code): {_first_line(err)}. maskmill did not write it; delete the "
                "checkpoint, or start over in a new out_dir"
            ) from None

    torch.load = load
    try:
        yield
    finally:
        torch.load = real


def _first_line(err: Exception) -> str:
    lines = [line for line in str(err).splitlines() if "GLOBAL" in line or "Unsupported" in line]
    return (lines or str(err).splitlines() or ["unpickling refused"])[0].strip()


def run_module_weights_only(module: str, argv: list[str]) -> None:
    """``python -m module argv...`` with weights-only loading (DeepSpeed's converters)."""
    sys.argv = [module, *argv]
    with weights_only_loading():
        runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":  # python -m training.safe_load MODULE ARGS...
    run_module_weights_only(sys.argv[1], sys.argv[2:])

"""``maskmill env``: what this machine runs maskmill with, in a few lines for a bug report."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
import subprocess


def report() -> str:
    rows = [
        ("maskmill", _version("maskmill")),
        ("python", f"{platform.python_version()} ({platform.machine()}, {platform.system()})"),
        *((name, _version(name)) for name in PACKAGES),
        ("devices", _devices()),
        ("cpus", f"{os.cpu_count()} (this process may use {len(os.sched_getaffinity(0))})"),
        ("c++ compiler", _first_line([os.environ.get("CXX", "c++"), "--version"])),
        ("slurm", _first_line(["sinfo", "--version"])),
        ("espeak-ng", _first_line(["espeak-ng", "--version"])),
    ]
    width = max(len(k) for k, _ in rows)
    return "".join(f"{k:<{width}}  {v}\n" for k, v in rows)


PACKAGES = ("torch", "deepspeed", "ray", "numpy", "webdataset", "omegaconf", "tokenizers", "av")


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _devices() -> str:
    try:
        import torch
    except ImportError:
        return "torch not importable"
    if not torch.cuda.is_available():
        return f"CPU only (torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'})"
    names = {torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())}
    return f"{torch.cuda.device_count()} CUDA device(s): {', '.join(sorted(names))}"


def _first_line(cmd: list[str]) -> str:
    if shutil.which(cmd[0]) is None:
        return "not found"
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"did not answer ({err})"
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0] if text else f"exit {out.returncode}"

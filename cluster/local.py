"""Running a per-rank entry point: the ``deepspeed`` launcher, ``srun`` inside a Slurm job, or
one process; and what launchers need on a node (a free port, cleaning up after killed ranks).

Torch-free on purpose, like all of ``cluster``: a login node renders and submits jobs without it.

The child's output goes to a log file whole, and to the console without the launcher's and
DeepSpeed's internals (:data:`LAUNCHER_NOISE`). Progress bars stay live on a terminal; in the log
file, and on a console that is not a terminal, a bar is written as a line at most every
:data:`BAR_EVERY_S` seconds (and its last state), not as hundreds of carriage-return redraws.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import BinaryIO, TextIO

# A training job that stopped on request after saving a checkpoint exits with this status
# (sysexits' EX_TEMPFAIL); the Slurm script requeues it and the pipeline reports "preempted".
PREEMPTED_EXIT = os.EX_TEMPFAIL


def deepspeed_command(
    module: str, args: list[str], ranks: int, master_port: int | None
) -> list[str]:
    """``deepspeed --num_gpus N --master_port P --module MODULE ARGS`` with this interpreter."""
    return [
        sys.executable, "-m", "deepspeed.launcher.runner",
        "--num_gpus", str(ranks),
        "--master_port", str(master_port or free_port()),
        "--module", module,
        *args,
    ]  # fmt: skip


def srun_command(module: str, args: list[str], env: dict[str, str] | None = None) -> list[str]:
    """One rank per task of the enclosing Slurm allocation; a rank that fails stops the others.

    The job's CPUs per task are passed on explicitly: srun does not inherit ``--cpus-per-task``
    on Slurm 22.05-23.02 (23.11 reads ``SRUN_CPUS_PER_TASK``), and with CPU binding each rank
    would then be bound to one CPU, shared with all its loader workers."""
    env = os.environ if env is None else env
    binding = []
    if env.get("SLURM_CPUS_PER_TASK", "").isdigit():
        binding = [f"--cpus-per-task={env['SLURM_CPUS_PER_TASK']}", "--cpu-bind=cores"]
    return ["srun", "--kill-on-bad-exit=1", *binding, sys.executable, "-m", module, *args]


def python_command(module: str, args: list[str]) -> list[str]:
    return [sys.executable, "-m", module, *args]


# Lines the user has no use for on screen (they stay in the stage's log): DeepSpeed's launcher
# (world info, CUDA_VISIBLE_DEVICES, spawned commands, hostfile), its accelerator guess, the JIT
# build of its CPU communication op, and zero_to_fp32's progress while exporting.
LAUNCHER_NOISE = re.compile(
    r"^\[\d{4}-\d\d-\d\d [\d:,]+\] \[(INFO|DEBUG)\] "
    r"|^\[\d{4}-\d\d-\d\d [\d:,]+\] \[WARNING\] \[(real_accelerator|runner)\.py:"
    r"|^DeepSpeed \S+ built successfully"
    r"|^Using \S+ as PyTorch extensions root"
    r"|^(Emitting ninja build file|Building extension module|Allowing ninja to set"
    r"|Loading extension module|ninja: no work to do|Time to load \S+ op)"
    r"|^(Processing zero checkpoint|Parsing checkpoint created by deepspeed"
    r"|Detected checkpoint of type zero stage|Reconstructed fp32 state dict)"
)
BAR_EVERY_S = 30.0


def run_logged(cmd: list[str], log_path: Path, env: dict[str, str] | None = None) -> int:
    """Run ``cmd``, copying its output to ``log_path`` and the console; returns its exit code."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    console_is_tty = sys.stderr.isatty()
    child_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    if not console_is_tty:  # nobody watches the bars live: redraw them rarely
        child_env.setdefault("TQDM_MININTERVAL", str(BAR_EVERY_S))
    with open(log_path, "ab") as log:
        log.write(f"$ {' '.join(cmd)}\n".encode())
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=child_env
        )
        assert proc.stdout is not None
        copy = OutputCopy(log, sys.stderr.buffer, console_is_tty)
        try:
            while chunk := proc.stdout.read1(65536):
                copy.feed(chunk)
        except KeyboardInterrupt:
            proc.terminate()
            raise
        finally:
            copy.close()
        return proc.wait()


class OutputCopy:
    """A child's output, split into lines and bar redraws, copied to a log and a console."""

    def __init__(self, log: BinaryIO, console: BinaryIO, live_bars: bool):
        self.log, self.console, self.live_bars = log, console, live_bars
        self.pending = b""  # the piece whose end has not come yet
        self.shown = 0  # how much of it a live console has already shown
        self.after_cr = False  # it follows a carriage return: a bar, drawn live
        self.bar_written = float("-inf")

    def feed(self, data: bytes) -> None:
        self.pending += data
        while True:
            end = min(
                (i for i in (self.pending.find(b"\n"), self.pending.find(b"\r")) if i >= 0),
                default=-1,
            )
            if end < 0:
                break
            piece, delim = self.pending[:end], self.pending[end : end + 1]
            self.pending = self.pending[end + 1 :]
            self._piece(piece, delim)
        if self.after_cr and self.live_bars and len(self.pending) > self.shown:
            self.console.write(self.pending[self.shown :])
            self.console.flush()
            self.shown = len(self.pending)

    def close(self) -> None:
        if self.pending:
            self._piece(self.pending, b"\n")
        self.log.flush()

    def _piece(self, piece: bytes, delim: bytes) -> None:
        unseen = piece[self.shown :] if self.after_cr else piece
        self.shown = 0
        if delim == b"\n":
            self.log.write(piece + b"\n")
            text = piece.decode(errors="replace")
            if not LAUNCHER_NOISE.search(text) and (self.live_bars or text.strip()):
                self.console.write(unseen + b"\n")
            self.after_cr, self.bar_written = False, float("-inf")
        else:  # a progress bar redrawn in place
            if piece.strip() and time.monotonic() - self.bar_written >= BAR_EVERY_S:
                self.log.write(piece + b"\n")
                if not self.live_bars:
                    self.console.write(piece + b"\n")
                self.bar_written = time.monotonic()
            if self.live_bars:
                self.console.write(unseen + b"\r")
            self.after_cr = True
        self.console.flush()


def compiler_problem(env: dict[str, str] | None = None) -> str | None:
    """Why DeepSpeed's CPU communication op cannot be built at first use, or None.

    DeepSpeed compiles that op (C++, through torch's extension builder) the first time a CPU
    run starts; without a compiler the ranks die minutes in with a build traceback. A build
    already cached under ``TORCH_EXTENSIONS_DIR`` (default ``~/.cache/torch_extensions``) needs
    no compiler."""
    env = os.environ if env is None else env
    compiler = env.get("CXX", "c++")
    if shutil.which(compiler):
        return None
    cache = Path(env.get("TORCH_EXTENSIONS_DIR") or Path.home() / ".cache" / "torch_extensions")
    if any(cache.glob("*/deepspeed_shm_comm/deepspeed_shm_comm*.so")):
        return None
    return (
        f"no C++ compiler ({compiler!r} is not on PATH): DeepSpeed builds its CPU communication "
        "op at first use. Install one (Debian/Ubuntu: apt-get install g++; or set CXX), "
        "then run again"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def shm_segments(port: int | str, rank: int | str = "*") -> list[Path]:
    """DeepSpeed's CPU all-reduce segments in ``/dev/shm`` for the process group on ``port``
    (named ``deepspeed_allreduce_buffer_<uid>_<master addr>_<port>_<rank>``)."""
    pattern = f"deepspeed_allreduce_buffer_{os.getuid()}_*_{port}_{rank}"
    return sorted(Path("/dev/shm").glob(pattern))


def remove_shm_segments(port: int | str | None, rank: int | str = "*") -> int:
    """Unlink DeepSpeed's CPU all-reduce segments for ``port``; returns how many were removed.

    DeepSpeed's CPU communication op maps a 64 MiB ``/dev/shm`` segment per rank and never
    unlinks it. ``/dev/shm`` is RAM, so every run would leak 64 MiB per rank until the machine
    reboots (200 test and benchmark runs held 12 GiB here). Unlinking while peers still have
    the segment mapped is safe: the memory goes when the last mapping does."""
    removed = 0
    for path in shm_segments(port, rank) if port else []:
        try:
            path.unlink()
            removed += 1
        except FileNotFoundError:  # a peer rank got there first
            pass
    return removed


def orphan_shm_segments() -> list[Path]:
    """This user's DeepSpeed segments that no living process maps or holds open, whatever
    their port: those of ranks killed with their launcher, which no port-named cleanup finds."""
    segments = sorted(Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_{os.getuid()}_*"))
    if not segments:
        return []
    in_use: set[str] = set()
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            in_use.update(
                line.split(None, 5)[5].removesuffix(" (deleted)")
                for line in (proc / "maps").read_text().splitlines()
                if "/dev/shm/deepspeed_allreduce_buffer_" in line
            )
            in_use.update(
                os.readlink(fd) for fd in (proc / "fd").iterdir() if "/dev/shm/" in os.readlink(fd)
            )
        except OSError:  # gone, or not ours to read
            continue
    return [s for s in segments if str(s) not in in_use]


def remove_orphan_shm_segments() -> int:
    """Unlink :func:`orphan_shm_segments`; run before a job's ranks start. Returns how many."""
    removed = 0
    for path in orphan_shm_segments():
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed += 1
    return removed


class LineConsole:
    """A text stream for a console that is not a terminal (a log file, CI): what is written
    passes through :class:`OutputCopy`, so progress bars drawn in this process become a line
    every :data:`BAR_EVERY_S` seconds instead of carriage-return redraws. Ray's log thread
    writes too, hence the lock."""

    def __init__(self, stream: TextIO):
        self.stream = stream
        self.buffer = stream.buffer
        self._copy = OutputCopy(_Discard(), stream.buffer, live_bars=False)
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        self.stream.flush()
        with self._lock:
            if text and not text.startswith("\r") and self._copy.after_cr:
                # A line (a Ray worker's, a log record) while a bar is drawn: the bar gets a
                # line of its own first, rather than the line glued to its end.
                self._copy.feed(b"\n")
            self._copy.feed(text.encode(errors="replace"))
        return len(text)

    def flush(self) -> None:
        self.buffer.flush()

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return self.stream.fileno()

    def __getattr__(self, name):
        return getattr(self.stream, name)


class _Discard:
    def write(self, data: bytes) -> int:
        return len(data)

    def flush(self) -> None:
        pass

"""What a stage's child process shows on the console and keeps in its log."""

from __future__ import annotations

import io
import os

from cluster.local import BAR_EVERY_S, OutputCopy

DS_LINES = [
    b"[2026-11-22 07:20:20,984] [WARNING] [real_accelerator.py:213:get_accelerator] Setting "
    b"accelerator to CPU. If you have GPU or other accelerator, we were unable to detect it.",
    b"[2026-11-22 07:20:21,437] [WARNING] [runner.py:214:fetch_hostfile] Unable to find "
    b"hostfile, will proceed with training with local resources only.",
    b"[2026-11-22 07:20:23,440] [INFO] [launch.py:174:main] Setting CUDA_VISIBLE_DEVICES=0,1",
    b"DeepSpeed deepspeed.ops.comm.deepspeed_shm_comm_op built successfully",
    b"Processing zero checkpoint '/run/pretrain/checkpoints/step-00000006'",
]
OURS = b"07:21:08 INFO training.pretrain: pretrain image: 2 ranks on cpu, 6 steps"
DS_ERROR = b"[2026-11-22 07:20:23,440] [ERROR] [launch.py:321:sigkill_handler] exits with 1"


def _copy(chunks: list[bytes], live: bool) -> tuple[bytes, bytes]:
    log, console = io.BytesIO(), io.BytesIO()
    copy = OutputCopy(log, console, live_bars=live)
    for chunk in chunks:
        copy.feed(chunk)
    copy.close()
    return log.getvalue(), console.getvalue()


def test_launcher_internals_go_to_the_log_only():
    text = b"\n".join([*DS_LINES, OURS, DS_ERROR]) + b"\n"
    # Fed in awkward pieces, as a pipe hands them over.
    log, console = _copy([text[i : i + 7] for i in range(0, len(text), 7)], live=True)
    assert log == text
    assert console == OURS + b"\n" + DS_ERROR + b"\n"


def test_bars_stay_live_on_a_terminal():
    redraws = [b"\rpretrain:  10%|#  | 1/10", b"\rpretrain:  20%|## | 2/10", b"\rdone 10/10\n"]
    log, console = _copy(redraws, live=True)
    assert console == b"".join(redraws)
    assert log == b"pretrain:  10%|#  | 1/10\ndone 10/10\n"  # one line per BAR_EVERY_S, the last


def test_bars_in_a_file_are_lines_not_redraws():
    redraws = [f"\rpretrain: {i}/500".encode() for i in range(500)] + [b"\rpretrain: 500/500\n"]
    log, console = _copy(redraws, live=False)
    assert b"\r" not in log + console
    assert console.splitlines() == log.splitlines() == [b"pretrain: 0/500", b"pretrain: 500/500"]
    assert BAR_EVERY_S >= 10


def test_a_cpu_run_without_a_compiler_is_told_before_it_starts(tmp_path):
    from cluster.local import compiler_problem

    env = {"CXX": "no-such-c++", "TORCH_EXTENSIONS_DIR": str(tmp_path)}
    assert "apt-get install g++" in compiler_problem(env)
    built = tmp_path / "py311_cpu" / "deepspeed_shm_comm" / "deepspeed_shm_comm.so"
    built.parent.mkdir(parents=True)
    built.touch()  # a build from an earlier run needs no compiler
    assert compiler_problem(env) is None
    assert compiler_problem({"CXX": "c++", "TORCH_EXTENSIONS_DIR": str(tmp_path / "x")}) is None


def test_a_line_written_while_a_bar_is_drawn_gets_its_own_line():
    import io as _io

    from cluster.local import LineConsole

    class Stream(_io.TextIOWrapper):
        pass

    raw = _io.BytesIO()
    console = LineConsole(Stream(raw, encoding="utf-8"))
    console.write("\rprep train:   0%| 0/7")  # tqdm: one write per redraw
    console.write("(write_shard pid=1) WARNING data_prep.writer: skipped x (empty_file)")
    console.write("\n")  # print() ends the line in a second write
    console.write("\rprep train: 100%| 7/7")
    console.write("\n")
    assert raw.getvalue().decode().splitlines() == [
        "prep train:   0%| 0/7",
        "(write_shard pid=1) WARNING data_prep.writer: skipped x (empty_file)",
        "prep train: 100%| 7/7",
    ]


def test_shm_segments_of_dead_ranks_are_removed_whatever_their_port(tmp_path):
    """Before: segments were removed by the port of the run that made them, so those of ranks
    killed with their launcher stayed in /dev/shm (RAM) for good. Now the next run removes
    every segment that no living process maps, and keeps one that is mapped."""
    import subprocess
    import sys
    import time
    from pathlib import Path

    from cluster.local import orphan_shm_segments, remove_orphan_shm_segments

    def segment(port):
        path = Path(f"/dev/shm/deepspeed_allreduce_buffer_{os.getuid()}_127.0.0.1_{port}_0")
        path.write_bytes(b"\0" * 4096)
        return path

    dead, live = segment(1), segment(2)
    holder = subprocess.Popen(
        [sys.executable, "-c",
         f"import mmap,time;f=open('{live}','r+b');m=mmap.mmap(f.fileno(),4096);f.close();"
         "print('mapped',flush=True);time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "mapped"
        assert dead in orphan_shm_segments() and live not in orphan_shm_segments()
        assert remove_orphan_shm_segments() >= 1
        assert not dead.exists() and live.exists()
    finally:
        holder.kill()
        holder.wait()
        time.sleep(0.1)
        live.unlink(missing_ok=True)
        dead.unlink(missing_ok=True)

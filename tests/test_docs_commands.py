"""The docs' commands work as written: every command of a fenced block marked runnable
(``<!-- runnable -->`` on the line before the fence) runs from the repository's root with exit 0
and no traceback, and every other ``maskmill`` line of the docs parses, its keys included (a
renamed key or command in the docs fails here)."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"(?P<mark><!-- runnable -->\n)?```[^\n]*\n(?P<body>.*?)```", re.S)
# Words that stand for something the reader fills in: such a line is a form, not a command.
PLACEHOLDERS = re.compile(r"RUN\.yaml|\[|\.\.\.|\b(SRC|OUT|FOLDER|MODALITY|ADDRESS|STAGE)\b|HEAD:")


def _commands(text: str) -> list[tuple[bool, str]]:
    """(runnable, command) for each ``maskmill`` line of each fenced block, continuations
    joined and comments cut."""
    found = []
    for block in FENCE.finditer(text):
        body = re.sub(r"\s*\\\n\s*", " ", block["body"])
        for line in body.splitlines():
            # a comment, or a description set off by a run of spaces, is not the command's
            line = re.split(r" #|\s{2,}", line.strip().removeprefix("$ "))[0]
            if line.startswith(("maskmill ", ".venv/bin/maskmill ")):
                found.append((bool(block["mark"]), line.removeprefix(".venv/bin/")))
    return found


ALL = [(doc, ran, cmd) for doc in DOCS for ran, cmd in _commands(doc.read_text())]
RUNNABLE = [(d, c) for d, ran, c in ALL if ran]
FORMS = [(d, c) for d, ran, c in ALL if not ran and not PLACEHOLDERS.search(c)]


def _id(case) -> str:
    return f"{case[0].name}: {case[1][:70]}"


def test_the_docs_hold_runnable_blocks():
    assert len(RUNNABLE) >= 5, RUNNABLE


def test_runnable_commands_run_in_order(tmp_path):
    """One test for the block, in order: later commands read what earlier ones wrote."""
    for doc, cmd in RUNNABLE:
        argv = shlex.split(cmd.replace("/tmp/maskmill-try", str(tmp_path)))[1:]
        proc = subprocess.run([sys.executable, "-m", "pipeline.cli", *argv], cwd=ROOT,
                              capture_output=True, text=True, timeout=300)  # fmt: skip
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0 and "Traceback" not in out, f"{doc.name}: {cmd}\n{out[-3000:]}"


@pytest.mark.parametrize("case", FORMS, ids=[_id(c) for c in FORMS])
def test_every_other_maskmill_line_parses_with_its_keys(case):
    from data_prep.corpus import corpus_reader, prep_aliases
    from pipeline.cli import parse_args, prep_overrides
    from training.typed_config import load_config

    _, cmd = case
    args = parse_args(shlex.split(cmd)[1:])  # argparse exits 2 on a command or flag that is gone
    if args.command == "prep":
        reader = corpus_reader(prep_aliases().get(args.modality, args.modality))
        base = {"source": args.source, "out": args.out}
        load_config(reader.config, [base], prep_overrides(args.options))  # unknown keys refused
    elif hasattr(args, "config"):
        from pipeline.schema import load_run_config

        files = [a for a in args.config if "=" not in a]
        overrides = [a for a in args.config if "=" in a]
        load_run_config([str(ROOT / f) for f in files], overrides)

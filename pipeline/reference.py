"""The run YAML's reference, written from the typed configs themselves (``docs/reference.md``,
``maskmill config --reference``): every key with its type, default and meaning.

The meaning is the comment the config class gives the field in its source (the one on its line,
else the block just above it), so the reference cannot drift from the code: a test fails when
``docs/reference.md`` differs from what this module writes. Sections that depend on the modality
(``demo_data``, ``prep``, ``pretrain.input``, ``pretrain.mask`` defaults, ``evaluate.tasks``) are
listed once per modality.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import io
import tokenize
from typing import Any

from omegaconf import OmegaConf

from data_prep.corpus import corpus_reader
from pipeline.schema import run_schema
from training.modalities import modality, names

# Sections whose classes the modality picks, by dotted key.
PER_MODALITY = ("demo_data", "prep", "pretrain.input", "pretrain.mask", "evaluate.tasks")


@functools.cache
def field_comments(cls: type) -> dict[str, str]:
    """Field name -> the comment the class's source gives it (same line, else just above)."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    found, above, pending = {}, [], None
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            text = tok.string.lstrip("#").strip()
            if pending and tok.start[0] == pending[1]:
                found[pending[0]] = text
            elif tok.start[1] > 0:
                above.append(text)
        elif tok.type == tokenize.NAME and tok.start[1] == 4 and pending_line_is_field(tok):
            pending = (tok.string, tok.start[0])
            if above:
                found[tok.string] = " ".join(above)
            above = []
        elif tok.type == tokenize.NL and tok.line.strip() == "":
            above = []
    return found


def pending_line_is_field(tok: tokenize.TokenInfo) -> bool:
    """A class-body line of the form ``name: type [= default]``."""
    line = tok.line.strip()
    return line.startswith(tok.string + ":") and not line.startswith(("def ", "class "))


def _rows(obj: Any, prefix: str, skip: tuple[str, ...]) -> list[tuple[str, str, str, str]]:
    rows = []
    comments = field_comments(type(obj))
    for f in dataclasses.fields(obj):
        key = f"{prefix}{f.name}"
        value = getattr(obj, f.name)
        if key in skip:
            continue
        if dataclasses.is_dataclass(value):
            rows.append((f"**{key}**", "section", "", comments.get(f.name, "")))
            rows.extend(_rows(value, f"{key}.", skip))
            continue
        kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        shown = "required" if value == "???" else f"`{_plain(value)}`"
        rows.append((f"`{key}`", f"`{_escaped(kind)}`", shown, comments.get(f.name, "")))
    return rows


def _plain(value: Any) -> str:
    if dataclasses.is_dataclass(value) or isinstance(value, list | dict):
        value = OmegaConf.to_container(OmegaConf.create(value)) if value else value
    return str(value).replace("|", "\\|")


def _table(rows) -> list[str]:
    out = ["| key | type | default | meaning |", "|---|---|---|---|"]
    out += [f"| {k} | {t} | {d} | {_escaped(m)} |" for k, t, d, m in rows]
    return out


def _escaped(text: str) -> str:
    return text.replace("|", "\\|")


def _section(obj: Any, key: str) -> Any:
    for part in key.split("."):
        obj = getattr(obj, part)
    return obj


def reference_markdown() -> str:
    """The whole reference page."""
    shared = run_schema(OmegaConf.create({"demo_data": {}}))
    lines = [
        "# The run YAML: every key",
        "",
        "Written by `maskmill config --reference > docs/reference.md` from the typed configs; "
        "`tests/pipeline/test_reference.py` fails when this page and the code disagree. "
        "Defaults like `${run_dir}/shards` are interpolations: the stages are wired together "
        "through them. Per-rank programs take the `pretrain` section (`python -m "
        "training.pretrain`) or the `evaluate` section (`python -m training.evaluate`) as their "
        "whole config.",
        "",
        "## Keys every run has",
        "",
        *_table(_rows(shared, "", PER_MODALITY)),
    ]
    for name in names():
        cfg = run_schema(OmegaConf.create({"modality": name, "demo_data": {}}))
        m = modality(name)
        lines += [
            "",
            f"## `modality: {name}`",
            "",
            f"Layout: {corpus_reader(name).layout}. Objective: `{m.objective.name}`. "
            f"Mask kinds: {', '.join(f'`{k}`' for k in m.mask_kinds)}. "
            f"Evaluation splits: {', '.join(m.eval_splits)}.",
        ]
        for key in PER_MODALITY:
            lines += ["", f"### `{key}`", "", *_table(_rows(_section(cfg, key), f"{key}.", ()))]
    return "\n".join(lines) + "\n"


def prep_help(modality_name: str) -> str:
    """``maskmill prep MODALITY --help``: the modality's layout, then every ``prep`` key with its
    default and meaning (the same words as the reference page)."""
    reader = corpus_reader(modality_name)
    cfg = reader.config()
    comments = field_comments(reader.config)
    rows = [(f.name, _plain(getattr(cfg, f.name))) for f in dataclasses.fields(cfg)]
    rows = [(k, "required" if v == "???" else v) for k, v in rows]
    width = min(max(len(f"{k} = {v}") for k, v in rows), 32)  # a long default pushes its own
    optional = ", ".join(f"{s} needs {k}=FOLDER" for s, k in reader.optional_splits.items())
    lines = [
        f"usage: maskmill prep {modality_name} SOURCE OUT [key=value ...] [--rebuild]",
        "",
        f"Layout: {reader.layout}.",
        *([f"Also called: {', '.join(reader.aliases)}."] if reader.aliases else []),
        *([f"Labelled splits: {optional}."] if optional else []),
        "",
        "keys (key=value, or --some-key VALUE), with their defaults:",
        *(_help_row(f"{k} = {v}", comments.get(k, ""), width) for k, v in rows),
    ]
    return "\n".join(lines) + "\n"


def _help_row(key: str, meaning: str, width: int) -> str:
    if len(key) > width and meaning:
        return f"  {key}\n  {'':<{width}}  {meaning}"
    return f"  {key:<{width}}  {meaning}".rstrip()

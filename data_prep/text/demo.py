"""A small English text corpus in the formats real corpora ship in, from text every Python install
has: the standard library's docstrings and the language reference (``pydoc_data``).

Corpus (``OUT/corpus``): docstrings as C4-style ``c4/c4-train.0000N-of-00002.json.gz`` (``text``,
``url``, ``timestamp``) and Pile-style ``pile/00.jsonl.zst`` (``text``, ``meta``); the language
reference's topics as a Wikipedia-style parquet (``id``, ``url``, ``title``, ``text``); a few
modules' docstrings as plain ``books/<module>.txt``, one document per file.

Labelled set (``OUT/labelled``): ``train.jsonl`` and ``val.jsonl``, docstring paragraphs labelled
with the package they come from (asyncio, email, http, logging, unittest, xml), split by a hash
of the paragraph.

With ``corrupt``: a line of invalid UTF-8 and a malformed JSON line, records whose text is missing
or empty, exact copies of documents in other files, and one very long document
(``long_document_kb``, the language reference repeated) in ``books/``.
"""

from __future__ import annotations

import ast
import gzip
import hashlib
import json
import logging
import sysconfig
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

CLASSES = ("asyncio", "email", "http", "logging", "unittest", "xml")
_SKIP = ("test", "tests", "idlelib", "site-packages", "lib2to3", "tkinter", "turtledemo")
_BOOKS = ("difflib", "statistics", "ipaddress", "pathlib")  # written as one .txt each


@dataclass
class TextDemoConfig:
    """``demo_data`` section for text: stdlib docstrings in C4 / Pile / Wikipedia / txt forms."""

    out: str = "???"
    max_documents: int = 6000  # corpus docstrings, at most (the stdlib has ~5,300 of 8+ words)
    labelled_per_class: int = 120  # train paragraphs per class, at most
    val_per_class: int = 40
    long_document_kb: int = 2048  # the very long document's size (with corrupt)
    corrupt: bool = False
    seed: int = 0

    def problems(self):
        for key in ("max_documents", "labelled_per_class", "val_per_class", "long_document_kb"):
            if getattr(self, key) < 1:
                yield (key, f"an int >= 1, got {getattr(self, key)}")


def write_text_demo(cfg: TextDemoConfig) -> Path:
    root = Path(cfg.out)
    docs = stdlib_docstrings(cfg.max_documents)
    corpus = root / "corpus"
    books = [d for d in docs if d[0] in _BOOKS]
    rest = [d for d in docs if d[0] not in _BOOKS]
    half = len(rest) * 2 // 5
    c4 = [_c4_record(m, t) for m, t in rest[:half]]
    pile = [
        {"text": t, "meta": {"pile_set_name": "PythonStdlib", "module": m}} for m, t in rest[half:]
    ]
    wiki = _reference_topics()
    if cfg.corrupt:
        # exact copies across files: C4 documents again in the Pile file and in the parquet
        pile += [{"text": r["text"], "meta": {"pile_set_name": "copy"}} for r in c4[:15]]
        wiki += [
            {"id": f"copy-{i}", "url": "", "title": "copy", "text": r["text"]}
            for i, r in enumerate(c4[15:25])
        ]
    for n in range(2):
        _write_jsonl_gz(corpus / "c4" / f"c4-train.{n:05d}-of-00002.json.gz", c4[n::2])
    pile_lines = [json.dumps(r).encode() for r in pile]
    if cfg.corrupt:
        pile_lines[3:3] = [
            b'{"text": "caf\xe9 au lait, not UTF-8", "meta": {}}',  # Latin-1 bytes
            b'{"text": "a record cut short',  # malformed JSON
            b'{"meta": {"pile_set_name": "no text field"}}',
            b'{"text": "   ", "meta": {}}',
        ]
    _write_jsonl_zst(corpus / "pile" / "00.jsonl.zst", pile_lines)
    _write_parquet(corpus / "wikipedia" / "20231101.en" / "train-00000-of-00001.parquet", wiki)
    (corpus / "books").mkdir(parents=True, exist_ok=True)
    for module in sorted({m for m, _ in books}):
        text = "\n\n".join(t for m, t in books if m == module)
        (corpus / "books" / f"{module}.txt").write_text(text + "\n")
    if cfg.corrupt:
        reference = "\n\n".join(r["text"] for r in _reference_topics())
        size = cfg.long_document_kb * 1024
        long = (reference + "\n\n") * (size // len(reference.encode()) + 1)
        (corpus / "books" / "long_document.txt").write_text(
            long.encode()[:size].decode(errors="ignore")
        )
    _write_labelled(root / "labelled", cfg)
    log.info("text demo: %d docstrings, %d reference topics under %s", len(docs), len(wiki), root)
    return root


def stdlib_docstrings(limit: int, packages: tuple[str, ...] = ()) -> list[tuple[str, str]]:
    """(top-level module, docstring) of the standard library's modules, classes and functions
    with 8 words or more, in file order; only ``packages`` when given."""
    root = Path(sysconfig.get_path("stdlib"))
    out: list[tuple[str, str]] = []
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).parts
        top = parts[0].removesuffix(".py")
        if any(p in _SKIP for p in parts) or (packages and top not in packages):
            continue
        try:
            tree = ast.parse(path.read_bytes())
        except (SyntaxError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node, clean=True)
                if doc and len(doc.split()) >= 8:
                    out.append((top, doc))
                    if len(out) >= limit:
                        return out
    return out


def _reference_topics() -> list[dict]:
    from pydoc_data.topics import topics

    return [
        {
            "id": str(i),
            "url": f"https://docs.python.org/3/reference/{name}.html",
            "title": name,
            "text": topics[name],
        }
        for i, name in enumerate(sorted(topics))
    ]


def _c4_record(module: str, text: str) -> dict:
    return {
        "text": text,
        "url": f"https://docs.python.org/3/library/{module}.html",
        "timestamp": "2019-04-25T12:57:54Z",
    }


def _write_labelled(folder: Path, cfg: TextDemoConfig) -> None:
    """Paragraphs of 12+ words from each class's package, split train/val by their hash."""
    splits: dict[str, list[dict]] = {"train": [], "val": []}
    for package in CLASSES:
        counts = {"train": 0, "val": 0}
        caps = {"train": cfg.labelled_per_class, "val": cfg.val_per_class}
        seen = set()
        for _, doc in stdlib_docstrings(10**6, (package,)):
            for para in doc.split("\n\n"):
                if len(para.split()) < 12 or para in seen:
                    continue
                seen.add(para)
                digest = hashlib.blake2b(f"{cfg.seed}:{para}".encode(), digest_size=8).digest()
                split = "val" if digest[0] < 64 else "train"  # a quarter to val
                if counts[split] < caps[split]:
                    splits[split].append({"text": para, "label": package})
                    counts[split] += 1
    folder.mkdir(parents=True, exist_ok=True)
    for split, records in splits.items():
        lines = [json.dumps(r) for r in records]
        if cfg.corrupt and split == "train":
            lines += ['{"text": "a paragraph without its label"}']
        (folder / f"{split}.jsonl").write_text("\n".join(lines) + "\n")


def _write_jsonl_gz(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = "".join(json.dumps(r) + "\n" for r in records).encode()
    path.write_bytes(gzip.compress(data, mtime=0))  # mtime 0: the same bytes on every run


def _write_jsonl_zst(path: Path, lines: list[bytes]) -> None:
    import zstandard

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(zstandard.ZstdCompressor(level=3).compress(b"".join(x + b"\n" for x in lines)))


def _write_parquet(path: Path, records: list[dict]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(records), path)

"""The house's rules: how the packages may depend on each other, what shared modules may not
name, and that the imports form no circle.

Data flows one way: data_prep -> shards -> training -> export -> evaluate; pipeline drives and
cluster launches. So no package imports one above it: data_prep imports none of ours; cluster
imports none of ours (and no torch: a login node renders and submits jobs without it); training
reads what data_prep wrote through the on-disk format alone (``data_prep.shard_format``, and
``data_prep.store``: where a split lives, a folder or an object store), except
that a modality's room in training (``training/modalities/<name>/``) reads its own prep room's
member contracts (``data_prep/<name>/``: audio's log-mel definition, video's clip forms, text's
tokenizer file); training uses cluster's node helpers (``cluster.local``); pipeline may import
them all.

Two axes, each a folder: a modality's words live in ``data_prep/<modality>/`` and
``training/modalities/<modality>/``, an objective's in ``training/objectives/<objective>/``.
Every other module of the product is shared and names neither (it asks the bundles).
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("data_prep", "training", "pipeline", "cluster")
ALLOWED = {
    "data_prep": ("data_prep",),
    "cluster": ("cluster",),
    "training": ("training", "data_prep.shard_format", "data_prep.store", "cluster.local"),
    "pipeline": PACKAGES,
}
MODALITIES = sorted(p.name for p in (ROOT / "training" / "modalities").iterdir() if p.is_dir())
OBJECTIVES = sorted(p.name for p in (ROOT / "training" / "objectives").iterdir() if p.is_dir())
ROOMS = re.compile(
    r"^(data_prep/[a-z_]+/|training/modalities/[a-z_]+/|training/objectives/[a-z_]+/)"
)


def _imports(path: Path) -> set[str]:
    """Every module of ours that ``path`` imports, at module level or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return {name for name in found if name.split(".")[0] in PACKAGES}


def _allowed(path: Path, name: str) -> bool:
    rel = path.relative_to(ROOT).as_posix()
    allowed = list(ALLOWED[rel.split("/")[0]])
    room = re.match(r"training/modalities/([a-z_]+)/", rel)
    if room:  # a modality's training room reads its own prep room
        allowed.append(f"data_prep.{room.group(1)}")
    return any(name == a or name.startswith(a + ".") for a in allowed)


@pytest.mark.parametrize("package", PACKAGES)
def test_no_package_imports_one_above_it(package):
    bad = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in sorted((ROOT / package).rglob("*.py"))
        for name in sorted(_imports(path))
        if not _allowed(path, name)
    ]
    assert not bad, "\n".join(bad)


def test_the_rooms_are_the_modalities_and_objectives():
    """Each modality has its two rooms; data_prep's root holds only shared modules."""
    assert MODALITIES == ["audio", "image", "text", "video"]
    assert OBJECTIVES == ["mae", "mlm"]
    for name in MODALITIES:
        assert (ROOT / "data_prep" / name / "reader.py").is_file(), name
        assert (ROOT / "data_prep" / name / "demo.py").is_file(), name
        assert (ROOT / "training" / "modalities" / name / "bundle.py").is_file(), name
    root_modules = sorted(p.stem for p in (ROOT / "data_prep").glob("*.py"))
    words = re.compile("|".join(MODALITIES) + r"|imagenet|librilight|kinetics|speech|video")
    assert [m for m in root_modules if words.search(m)] == []


def _shared_modules():
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if not ROOMS.match(path.relative_to(ROOT).as_posix()):
                yield path


def _string_constants(path: Path) -> set[str]:
    """The string literals of a module, docstrings left out (prose may give examples)."""
    tree = ast.parse(path.read_text())
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return {
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
        and id(node) not in docstrings
    }  # fmt: skip


# The one place a modality word may stand outside the rooms: the default of `modality:`, in the
# modalities package itself (a YAML without the key is an image run, as before modalities).
DEFAULTS = {"training/modalities/__init__.py": {"image"}}


def test_shared_modules_compare_no_modality_or_objective_word():
    words = set(MODALITIES) | set(OBJECTIVES)
    hits = [
        f"{path.relative_to(ROOT)}: {sorted(found)}"
        for path in _shared_modules()
        if (
            found := (_string_constants(path) & words)
            - DEFAULTS.get(path.relative_to(ROOT).as_posix(), set())
        )
    ]
    assert hits == [], "\n".join(hits)


# Words of one modality's data, and where they may stand: its rooms, and the export to HF's ViT,
# whose config names its input `image_size` whatever the picture is (an image, a spectrogram).
IMAGE_WORDS = re.compile(r"\bjpg\b|patchify|ImagePrepConfig|images_per_s|\bflac\b|\bmp4\b")


def test_shared_modules_name_no_modality_data():
    hits = [
        str(path.relative_to(ROOT))
        for path in _shared_modules()
        if "export_interop" not in path.name and IMAGE_WORDS.search(path.read_text())
    ]
    assert hits == []


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_no_import_circle_at_module_level():
    """Module-level imports among our modules form no cycle (a function-level import, done
    when it runs, is how a bundle defers torch and does not count)."""
    graph = {}
    modules = {_module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        deps = set()
        for node in tree.body:
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                deps.add(node.module)
                deps.update(f"{node.module}.{a.name}" for a in node.names)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names)
        graph[name] = {d for d in deps if d in modules and d != name}
    cycles = []
    state: dict[str, int] = {}

    def visit(node, stack):
        state[node] = 1
        for dep in graph[node]:
            if state.get(dep) == 1:
                cycles.append(" -> ".join([*stack[stack.index(dep) :], dep]))
            elif dep not in state:
                visit(dep, [*stack, dep])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert cycles == [], "\n".join(cycles)


def test_cluster_and_a_slurm_dry_run_load_no_torch(tmp_path):
    script = f"""
import sys, io, contextlib
import cluster.local, cluster.sbatch, cluster.slurm, cluster.slurm_config, cluster.ray_jobs
from pipeline.cli import main
out = io.StringIO()
with contextlib.redirect_stdout(out):
    code = main(["submit", "{ROOT / "configs" / "quickstart_image.yaml"}", "run_dir={tmp_path}", "--slurm", "--dry-run"])
assert code == 0 and "#SBATCH" in out.getvalue(), out.getvalue()
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "deepspeed"))
print("LOADED", loaded)
"""
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "LOADED []" in proc.stdout, proc.stdout[-2000:]

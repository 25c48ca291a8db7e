"""The ``maskmill`` command.

    maskmill run RUN.yaml [MORE.yaml] [key=value ...] [--force STAGE]   run (or resume) every stage
    maskmill status RUN.yaml [key=value ...]                 each stage's state, cluster jobs
    maskmill submit RUN.yaml --slurm [--dry-run] [--wait]    one Slurm job per stage, chained
    maskmill submit RUN.yaml --ray ADDRESS [--retries N]     prep as a job on a Ray cluster
    maskmill stage RUN.yaml STAGE[,STAGE] [key=value ...]    run some stages (what a job runs)
    maskmill export RUN.yaml --format hf|timm [--out DIR]    the encoder for transformers / timm
    maskmill verify RUN.yaml | SPLIT_DIR                      check shards against their manifests
    maskmill prep MODALITY SRC OUT [key=value ...]           shard a raw corpus (image: ImageNet layout)
    maskmill demo-data OUT [--modality M] [options]          write a demo corpus

Every command that reads a run YAML takes several, merged in order (later files win), and
``key=value`` overrides anywhere on the line, applied last.

Exit codes: :data:`EXIT_CODES` (``maskmill --help`` lists them with the ranks' own).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import errno
import importlib.metadata
import logging
import os
import shutil
import sys
import tempfile
import traceback
from pathlib import Path

from cluster.local import BAR_EVERY_S, PREEMPTED_EXIT, LineConsole
from cluster.ray_jobs import RayJobError
from cluster.slurm import SlurmError
from data_prep.corpus import SourceError, corpus_reader, modalities, prep_aliases
from data_prep.job import run_prep, summary_line
from data_prep.prep_record import PrepOutputError
from data_prep.shard_format import BadShardError
from data_prep.store import location
from data_prep.writer import EmptySplitError
from pipeline.runner import ForeignOutputError, RunLockedError, run_pipeline, stage_views
from pipeline.schema import load_run_config
from pipeline.stages import StageFailed, StagePreempted, stage_names
from pipeline.submit import (
    describe_submission,
    dry_run_commands,
    dry_run_summary,
    read_submissions,
    submit_ray,
    submit_slurm,
    wait_slurm,
    write_slurm_scripts,
)
from training.export_format import FORMATS, MODEL_JSON
from training.modalities import DEFAULT as DEFAULT_MODALITY
from training.modalities import modality as modality_named
from training.rank import exit_code_help
from training.tasks.config import EVAL_STAGES, tasks_of_stage
from training.typed_config import COMMAND_LINE, ConfigError, load_config, to_yaml

log = logging.getLogger("maskmill")


EPILOG = """examples:
  maskmill run configs/quickstart_image.yaml
  maskmill run configs/quickstart_image.yaml pretrain.steps=50 pretrain.mask.ratio=0.9
  maskmill run configs/imagenet_mae_vitb.yaml site.yaml launch.ranks=8
  maskmill status configs/quickstart_image.yaml
  maskmill submit configs/quickstart_image.yaml --slurm --dry-run
  maskmill submit configs/quickstart_image.yaml --slurm --wait
  maskmill submit configs/quickstart_image.yaml --ray http://127.0.0.1:8265 --retries 2
  maskmill export configs/quickstart_image.yaml --format hf
  maskmill prep image /data/imagenet /data/imagenet-shards shorter_side=256 num_cpus=32
  maskmill demo-data /tmp/demo --classes 8 --corrupt 3
  maskmill demo-data /tmp/speech --modality audio
  maskmill demo-data /tmp/clips --modality video --corrupt true
  maskmill prep video /data/kinetics400 /data/k400-shards short_side=320 stride=4
"""
EXIT_CODES = {
    0: "success",
    1: "a stage or job failed (its log names why; a rank's own code is in it, see below), or "
    "the system refused (a full disk, a permission); an internal error keeps its traceback in "
    "a file it names",
    2: "bad configuration or usage, or an environment that cannot run it; nothing was started",
    PREEMPTED_EXIT: "a training stage was preempted after saving a checkpoint; rerun to resume",
    130: "interrupted (Ctrl-C); rerun to resume",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="maskmill",
        description="Masked pretraining from raw corpora to evaluated encoders, driven by one YAML file.",
        epilog=EPILOG
        + "\nexit codes of maskmill:\n"
        + "\n".join(f"  {code:>3}  {what}" for code, what in EXIT_CODES.items())
        + "\nof a training stage's ranks (python -m training.pretrain | training.evaluate), "
        + exit_code_help().replace("exit codes:", "in its log:"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"maskmill {version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (
        _add_run,
        _add_status,
        _add_submit,
        _add_stage,
        _add_export,
        _add_verify,
        _add_prep,
        _add_demo_data,
        _add_config_command,
        _add_modalities,
        _add_env,
    ):
        add(sub)
    return parser


def version() -> str:
    try:
        return importlib.metadata.version("maskmill")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"


def _add_config(parser, extra: str = "") -> None:
    parser.add_argument(
        "config",
        nargs="+",
        metavar="RUN.yaml [key=value]",
        help="one or more run YAML files (see configs/), merged in order, later files winning; "
        f"{extra}then dotted overrides such as pretrain.steps=100, which may also come after "
        "the options and are applied last",
    )


def split_config_args(items: list[str]) -> tuple[list[str], list[str]]:
    """The YAML files and the ``key=value`` overrides of a command line, each in order."""
    files = [i for i in items if "=" not in i]
    if not files:
        raise ConfigError([("RUN.yaml", "a run YAML file before the overrides")], COMMAND_LINE)
    return files, [i for i in items if "=" in i]


def _run_config(items: list[str]):
    files, overrides = split_config_args(items)
    return load_run_config(files, overrides)


def _add_run(sub) -> None:
    run = sub.add_parser(
        "run", help="run a pipeline YAML: skip finished stages, resume failed ones"
    )
    _add_config(run)
    run.add_argument(
        "--force",
        action="append",
        default=[],
        choices=stage_names(),
        metavar="STAGE",
        help=f"rerun STAGE even if up to date ({', '.join(stage_names())}); repeatable. From "
        "scratch, but prep reruns in place: it checks every shard (sha256) and rewrites the "
        "damaged ones",
    )


def _add_status(sub) -> None:
    status = sub.add_parser(
        "status",
        help="show each stage's state for a run YAML",
        description="Each stage's state: done, pending, running, failed, interrupted, or stale "
        "(its config or inputs changed, or a stage it reads from did: it will run again), and "
        "the Slurm or Ray jobs of the last submission.",
    )
    _add_config(status)


def _add_submit(sub) -> None:
    submit = sub.add_parser(
        "submit",
        help="submit a run to Slurm (a job per stage, chained) or its prep to a Ray cluster",
        description="Slurm: render one sbatch script per stage into RUN_DIR/submit and submit "
        "them chained with afterok; training jobs checkpoint and requeue themselves on SIGUSR2 "
        "before their time limit. Ray: submit the demo-data and prep stages as one Ray job.",
    )
    _add_config(submit)
    target = submit.add_mutually_exclusive_group(required=True)
    target.add_argument("--slurm", action="store_true", help="submit every stage to Slurm")
    target.add_argument(
        "--ray", metavar="ADDRESS", help="Ray job server, e.g. http://head:8265 (token auth)"
    )
    submit.add_argument(
        "--dry-run",
        action="store_true",
        help="Slurm: print the scripts and the sbatch command lines that chain them, submit nothing",
    )
    submit.add_argument(
        "--wait", action="store_true", help="follow the jobs until they end; exit 1 if one failed"
    )
    submit.add_argument(
        "--retries",
        type=int,
        default=0,
        help="Ray: resubmit a failed job up to N times; prep resumes, so only unfinished "
        "shards are redone (implies --wait; default: %(default)s)",
    )
    submit.add_argument(
        "--python",
        default=None,
        help="interpreter on the cluster (default: slurm.python or this interpreter for Slurm; "
        "`python` on the Ray nodes' PATH for Ray)",
    )


def _add_stage(sub) -> None:
    stage = sub.add_parser(
        "stage", help="run the named stages of a run YAML (what each cluster job runs)"
    )
    _add_config(
        stage,
        f"then the stages to run, comma-separated, from: {', '.join(stage_names())}; ",
    )


def _add_export(sub) -> None:
    export = sub.add_parser(
        "export",
        help="write a finished run's encoder for HF transformers or timm",
        description="Write the pretrained encoder of a finished run in a layout another tool "
        "loads: `hf` (a transformers ViTModel folder: config.json, model.safetensors and, for "
        "images, the image processor) or `timm` (a VisionTransformer state dict and its keyword "
        "arguments). Image and audio encoders; the README shows the lines that load them.",
    )
    _add_config(export)
    export.add_argument(
        "--format", required=True, choices=FORMATS, help="hf (transformers) or timm"
    )
    export.add_argument(
        "--out", default=None, help="output folder (default: PRETRAIN_OUT/export/FORMAT)"
    )


def _add_verify(sub) -> None:
    verify = sub.add_parser(
        "verify",
        help="check every shard's size and sha256 against its manifest",
        description="Check prepared splits: _SUCCESS, every shard's size and sha256 against "
        "the manifest, and the manifest against stats.json. One line per shard; exit 0 when "
        "all are intact, 1 otherwise (with how to repair).",
    )
    verify.add_argument(
        "target",
        nargs="+",
        metavar="RUN.yaml|FOLDER",
        help="a run YAML (with key=value overrides: every split the run prepares or reads), or "
        "a prepared split folder, or a prep output folder holding splits",
    )
    verify.add_argument(
        "--size-only", action="store_true", help="skip the sha256 (one stat per shard)"
    )


def _verify(args) -> int:
    from pipeline.verify import report, splits_of_folder, splits_of_run

    folder = location(args.target[0])  # a folder, or a split in a store (s3://...)
    if len(args.target) == 1 and not folder.exists():
        raise ConfigError(
            [("TARGET", f"{folder} does not exist: name a run YAML or a prepared split folder")]
        )
    if len(args.target) == 1 and folder.is_dir():
        splits = splits_of_folder(folder)
        if not splits:
            raise ConfigError([("FOLDER", f"a prepared split or prep output, got {folder}")])
    else:
        cfg = _run_config(args.target)
        splits = splits_of_run(cfg)
        if not any(s.exists() for s in splits):  # nothing to damage: nothing was prepared
            raise ConfigError([("prep.out", f"nothing is prepared in {cfg.prep.out} yet: "
                                f"`maskmill run` prepares it (its prep stage)")])  # fmt: skip
    lines, intact = report(splits, sha256=not args.size_only)
    sys.stdout.write("\n".join(lines) + "\n")
    return 0 if intact else 1


def _add_prep(sub) -> None:
    prep = sub.add_parser(
        "prep",
        help="shard a raw corpus into WebDataset tars (local Ray, or --ray-address)",
        description="Shard a raw corpus into WebDataset tars: one prepared split per split, "
        "its records (manifest.parquet, stats.json, _SUCCESS) in SPLIT/.maskmill/. Options are "
        "the keys of the modality's `prep` section (see README), as key=value; `--some-key "
        "VALUE` works too. "
        + "Layouts: "
        + "; ".join(f"{m}: {corpus_reader(m).layout}" for m in modalities())
        + ". "
        + ", ".join(f"`prep {a}` = `prep {m}`" for a, m in prep_aliases().items())
        + " name the same forms.",
    )
    prep.add_argument(
        "modality",
        choices=[*modalities(), *prep_aliases()],
        metavar="MODALITY",
        help=", ".join(modalities()),
    )
    prep.add_argument("source", help="the raw corpus folder")
    prep.add_argument(
        "out",
        help="output folder; one prepared split per split. A rerun into it resumes and repairs "
        "damaged shards; other settings are refused unless --rebuild",
    )
    prep.add_argument(
        "--rebuild",
        action="store_true",
        help="empty OUT first when it was prepared with other settings (default: refuse)",
    )
    options = prep.add_argument(
        "options", nargs=argparse.REMAINDER, help="key=value, e.g. samples_per_shard=1000"
    )
    options.required = False  # argparse marks a trailing remainder required; none is needed


def _add_demo_data(sub) -> None:
    keys = "; ".join(
        f"{m}: " + ", ".join(f.name for f in dataclasses.fields(corpus_reader(m).demo_config))
        for m in modalities()
    )
    demo = sub.add_parser(
        "demo-data",
        help="write a small demo corpus in a modality's real layout",
        description="Write a small corpus the project generates itself, in the modality's real "
        "layout (image: ImageNet with its quirks; audio: LibriLight chapters + LibriSpeech-form "
        "digit strings spoken by espeak-ng; video: Kinetics-layout clips of six motion classes "
        "encoded with PyAV; text: stdlib docstrings as C4 json.gz, Pile jsonl.zst, Wikipedia "
        "parquet and txt, plus a labelled set). Options are the keys of the run YAML's `demo_data` "
        f"section, as key=value or --some-key VALUE. Keys: {keys}.",
    )
    demo.add_argument("out", help="output folder for the corpus")
    options = demo.add_argument(
        "options",
        nargs=argparse.REMAINDER,
        help="--modality image|audio|video|text (default image), then keys, e.g. --classes 8 --corrupt 3",
    )
    options.required = False  # argparse marks a trailing remainder required; none is needed


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Parsed arguments, overrides accepted anywhere on the line (as Hydra users expect)."""
    parser = build_parser()
    line = sys.argv[1:] if argv is None else argv
    if line[:1] == ["prep"] and len(line) > 1 and {"-h", "--help"} & set(line[2:]):
        name = prep_aliases().get(line[1], line[1])
        if name in modalities():  # that modality's keys, not the command's generic help
            from pipeline.reference import prep_help

            sys.stdout.write(prep_help(name))
            raise SystemExit(0)
    args, extra = parser.parse_known_args(argv)
    if hasattr(args, "options") and any(o in ("-h", "--help") for o in args.options):
        parser.parse_args([args.command, "--help"])  # prints the command's help and exits
    overrides = [e for e in extra if "=" in e and not e.startswith("-")]
    unknown = [e for e in extra if e not in overrides]
    if unknown or (overrides and not hasattr(args, "config")):
        dashed = [u for u in unknown if u.startswith("--") and "." in u]
        hint = f"; config keys go without dashes: {dashed[0][2:]}" if dashed else ""
        parser.error(f"unrecognized arguments: {' '.join(unknown or overrides)}{hint}")
    if overrides:
        args.config += overrides
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not sys.stderr.isatty():  # a log file, not a person: progress bars as rare lines
        os.environ.setdefault("TQDM_MININTERVAL", str(BAR_EVERY_S))
        sys.stderr = LineConsole(sys.stderr)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        return _COMMANDS[args.command](args)
    except (ConfigError, SourceError, ForeignOutputError, PrepOutputError, EmptySplitError) as err:
        log.error("%s", err)  # refused before any work
        return 2
    except StagePreempted as err:
        log.warning("%s", err)
        return PREEMPTED_EXIT
    except (StageFailed, RunLockedError, SlurmError, RayJobError, BadShardError) as err:
        log.error("%s", err)
        return 1
    except KeyboardInterrupt:
        log.warning("interrupted; a rerun resumes where this one stopped")
        return 130
    except OSError as err:  # the disk or the network, not maskmill: what failed, on what
        log.error("%s", os_error_line(err))
        return 1
    except Exception as err:  # a bug: one line for the user, the traceback kept for the report
        if os.environ.get("MASKMILL_TRACEBACK"):
            raise
        kept = _keep_traceback()
        log.error("internal error: %s: %s; please report it with %s", type(err).__name__,
                  str(err).splitlines()[0] if str(err) else "", kept)  # fmt: skip
        return 1


def os_error_line(err: OSError) -> str:
    """One line for an error of the system: its words, the file, and what to check."""
    where = " -> ".join(str(f) for f in (err.filename, err.filename2) if f is not None)
    hint = {
        errno.ENOSPC: "free space there or point the output elsewhere",
        errno.EACCES: "check the permissions",
        errno.EROFS: "the filesystem is read-only; point the output elsewhere",
        errno.ENOTDIR: "a file stands where a folder is needed",
        errno.ECONNREFUSED: "nothing answers there; is the service up?",
    }.get(err.errno, "")
    words = err.strerror or str(err)
    return f"{words}: {where}" * bool(where) + words * (not where) + f" ({hint})" * bool(hint)


def _keep_traceback() -> str:
    """Write the current exception's traceback to a file; returns its path (set
    MASKMILL_TRACEBACK=1 to see it on the console instead)."""
    fd, path = tempfile.mkstemp(prefix="maskmill-error-", suffix=".txt")
    with os.fdopen(fd, "w") as f:
        traceback.print_exc(file=f)
    return path


def _run(args) -> int:
    cfg = _run_config(args.config)
    if cfg.launch.nodes > 1:
        raise ConfigError(
            [("launch.nodes", "1 on one machine; run more nodes with `maskmill submit --slurm`")]
        )
    run_pipeline(cfg, force=tuple(args.force))
    log.info("run %s finished: %s/report.html", cfg.name, cfg.run_dir)
    return 0


def _status(args) -> int:
    cfg = _run_config(args.config)
    lines = [
        f"run {cfg.name} in {cfg.run_dir}",
        f"{'stage':<10} {'state':<34} {'took':>8}  finished",
    ]
    for view in stage_views(cfg):
        took = f"{view.state.seconds:.0f}s" if view.state.seconds is not None else "-"
        when = (
            datetime.datetime.fromtimestamp(view.state.finished).strftime("%Y-%m-%d %H:%M")
            if view.state.finished
            else "-"
        )
        lines.append(f"{view.name:<10} {view.label:<34} {took:>8}  {when}")
        if view.state.error and view.state.status == "failed":
            lines.append(f"{'':<10} error: {view.state.error}")
    submissions = read_submissions(cfg)
    if submissions:
        lines += describe_submission(submissions[-1])
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


def _submit(args) -> int:
    cfg = _run_config(args.config)
    if args.ray:
        if args.dry_run:
            raise ConfigError([("--dry-run", "applies to --slurm only")], COMMAND_LINE)
        _, state = submit_ray(
            cfg, args.ray, python=args.python or "python", retries=args.retries, wait=args.wait
        )
        following = args.wait or args.retries
        return 0 if not following or state == "SUCCEEDED" else 1
    if args.dry_run:
        written = write_slurm_scripts(cfg, args.python)
        for name, path in written:
            sys.stdout.write(f"# ---- {name}: {path} ----\n{path.read_text()}\n")
        sys.stdout.write("# ---- the jobs ----\n")
        sys.stdout.write("".join(f"# {line}\n" for line in dry_run_summary(cfg, args.python)))
        sys.stdout.write(
            "# ---- the chain: what `maskmill submit --slurm` runs (the scripts above are "
            "written; paste these lines to submit them) ----\n"
        )
        sys.stdout.write("\n".join(dry_run_commands(cfg, [n for n, _ in written])) + "\n")
        return 0
    sub = submit_slurm(cfg, args.python)
    sys.stdout.write(f"submitted {len(sub.jobs)} Slurm jobs: {' '.join(sub.jobs)}\n")
    if args.wait:
        return 0 if wait_slurm(sub) else 1
    return 0


def _stage(args) -> int:
    files, overrides = split_config_args(args.config)
    if len(files) < 2:
        raise ConfigError(
            [("STAGE", f"stages to run after the YAML, from {', '.join(stage_names())}")],
            COMMAND_LINE,
        )
    *files, stages = files
    names = tuple(n for n in stages.split(",") if n)
    unknown = [n for n in names if n not in stage_names()]
    if unknown or not names:
        raise ConfigError(
            [("STAGE", f"stages from {', '.join(stage_names())}, got {stages!r}")], COMMAND_LINE
        )
    run_pipeline(load_run_config(files, overrides), only=names)
    return 0


def _export(args) -> int:
    cfg = _run_config(args.config)
    export_dir = Path(cfg.evaluate.export_dir)
    if not (export_dir / MODEL_JSON).is_file():
        log.error("no exported encoder in %s yet: run the pretrain stage first", export_dir)
        return 1
    from training.export_interop import write_interop  # torch: loaded only to export

    try:
        out = write_interop(export_dir, args.format, args.out or export_dir / args.format)
    except ValueError as err:
        log.error("%s", err)
        return 2
    sys.stdout.write(f"{out}\n")
    return 0


def _prep(args) -> int:
    reader = corpus_reader(prep_aliases().get(args.modality, args.modality))
    base = {"source": args.source, "out": args.out}
    rebuild = args.rebuild or "--rebuild" in args.options
    options = [o for o in args.options if o != "--rebuild"]
    overrides = prep_overrides(options)
    given = {o.partition("=")[0] for o in overrides}
    if "splits" not in given:
        base["splits"] = _default_splits(reader, given)
    cfg = load_config(reader.config, [base], overrides)
    for split, stats in run_prep(reader, cfg, rebuild).items():
        sys.stdout.write(summary_line(split, stats) + "\n")
    return 0


def _default_splits(reader, given: set[str]) -> list[str]:
    """The reader's default splits, less those whose key was not given (the labelled splits of
    an unlabelled corpus), said in one line."""
    splits = list(reader.config().splits)
    missing = {s: k for s, k in reader.optional_splits.items() if k not in given and s in splits}
    if missing:
        keys = sorted(set(missing.values()))
        log.info(
            "%s left out: no %s given (add %s to prepare them too)",
            ", ".join(missing), " or ".join(keys), " ".join(f"{k}=FOLDER" for k in keys),
        )  # fmt: skip
    return [s for s in splits if s not in missing]


def prep_overrides(options: list[str]) -> list[str]:
    """``key=value`` as given, and ``--some-key VALUE`` as ``some_key=VALUE``."""
    out, rest = [], list(options)
    while rest:
        option = rest.pop(0)
        if option.startswith("--"):
            key, eq, value = option[2:].partition("=")
            if not eq:
                if not rest:
                    raise ConfigError([(option, "needs a value")])
                value = rest.pop(0)
            option = f"{key.replace('-', '_')}={value}"
        out.append(option)
    return out


def _demo_data(args) -> int:
    overrides = prep_overrides(args.options)
    chosen = [o.partition("=")[2] for o in overrides if o.startswith("modality=")]
    name = chosen[-1] if chosen else DEFAULT_MODALITY
    if name not in modalities():
        raise ConfigError([("--modality", f"one of {', '.join(modalities())}, got {name!r}")])
    reader = corpus_reader(name)
    rest = [o for o in overrides if not o.startswith("modality=")]
    cfg = load_config(reader.demo_config, [{"out": args.out}], rest)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise PrepOutputError(f"demo-data output {out} is a file; name a new or empty folder")
    if out.is_dir() and any(out.iterdir()):  # what an earlier demo-data wrote is replaced whole
        if not (out / DEMO_MARKER).exists():
            raise PrepOutputError(
                f"demo-data output {out} already holds files that maskmill did not write; "
                "point it at a new or empty folder"
            )
        shutil.rmtree(out)
    reader.write_demo(cfg)
    (out / DEMO_MARKER).write_text("written by maskmill demo-data; replaced whole on a rerun\n")
    return 0


DEMO_MARKER = ".maskmill-demo"


def _add_config_command(sub) -> None:
    config = sub.add_parser(
        "config",
        help="print a run's resolved config (every key, interpolations done), or the reference",
        description="Print the config a run would use: the YAML files merged, the overrides "
        "applied, interpolations resolved and every value checked, as `maskmill run` would see "
        "it (like Hydra's --cfg job). --reference prints every key of every modality with its "
        "type, default and meaning instead (docs/reference.md is this output).",
    )
    config.add_argument(
        "config",
        nargs="*",
        metavar="RUN.yaml [key=value]",
        help="one or more run YAML files, merged in order, then dotted overrides",
    )
    config.add_argument("--reference", action="store_true", help="the YAML reference, as markdown")


def _config(args) -> int:
    if args.reference:
        from pipeline.reference import reference_markdown

        sys.stdout.write(reference_markdown())
        return 0
    sys.stdout.write(to_yaml(_run_config(args.config)))
    return 0


def _add_modalities(sub) -> None:
    sub.add_parser(
        "modalities",
        help="list the modalities: each one's layout, objective, mask kinds and tasks",
        description="The words `modality:` takes, found by convention (a folder in "
        "data_prep/ and training/modalities/; docs/architecture.md says how to add one).",
    )


def _modalities(args) -> int:
    for name in modalities():
        m = modality_named(name)
        tasks = m.tasks_config()
        by_stage = "; ".join(f"{s}: {', '.join(tasks_of_stage(tasks, s))}" for s in EVAL_STAGES)
        sys.stdout.write(
            f"{name}\n  layout: {corpus_reader(name).layout}\n"
            f"  objective: {m.objective.name}; mask kinds: {', '.join(m.mask_kinds)} "
            f"(default {m.mask_kinds[0]} at {m.mask_ratio}); unit: {m.unit}\n"
            f"  evaluation stages: {by_stage}\n"
        )
    return 0


def _add_env(sub) -> None:
    sub.add_parser(
        "env",
        help="what this machine runs maskmill with, for a bug report",
        description="Versions (maskmill, Python, torch, DeepSpeed, Ray, ...), devices, the C++ "
        "compiler DeepSpeed's CPU op needs, Slurm and espeak-ng: paste it into a bug report.",
    )


def _env(args) -> int:
    from pipeline.environment import report

    sys.stdout.write(report())
    return 0


_COMMANDS = {
    "run": _run,
    "status": _status,
    "submit": _submit,
    "stage": _stage,
    "export": _export,
    "verify": _verify,
    "prep": _prep,
    "demo-data": _demo_data,
    "config": _config,
    "modalities": _modalities,
    "env": _env,
}


if __name__ == "__main__":
    sys.exit(main())

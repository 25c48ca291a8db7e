"""The command line shared by the per-rank entry points: ``python -m training.X CONFIG.yaml [k=v]``."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any, TypeVar

from training.typed_config import ConfigError, describe_keys, load_config

T = TypeVar("T")


def config_from_argv(schema: type[T] | Callable[[Any], T], argv: list[str] | None, usage: str) -> T:
    """The validated config named on the command line.

    Exits 0 after printing ``usage`` for ``-h``/``--help``, 2 without arguments or on a bad
    config (the message names every bad key). Ignores the ``--local_rank`` the deepspeed
    launcher appends.
    """
    argv = sys.argv[1:] if argv is None else argv
    argv = [a for a in argv if not a.startswith("--local_rank")]
    logging.basicConfig(  # as the maskmill command's, so a stage's lines read alike
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if not argv or argv[0] in ("-h", "--help"):
        sys.stdout.write(f"{usage}\nconfig keys (type = default):\n{describe_keys(schema)}\n")
        raise SystemExit(0 if argv else 2)
    try:
        return load_config(schema, [argv[0]], argv[1:])
    except ConfigError as err:
        logging.getLogger(schema.__module__).error("%s", err)
        raise SystemExit(2) from None

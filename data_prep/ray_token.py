"""The token of a one-machine Ray head: Ray's own default file, made private.

Ray (2.5x) writes a new local head's token to ``~/.ray/auth_token`` with the process umask,
usually 0644: on a shared login node every user could read it and run code on the head. Before
a local head starts, maskmill writes that file itself with mode 0600 when there is none, and
narrows an existing one to 0600. ``RAY_AUTH_TOKEN`` (the token itself) or
``RAY_AUTH_TOKEN_PATH`` (another file) point Ray elsewhere; then this file is left alone.
"""

from __future__ import annotations

import logging
import os
import secrets
import stat
from pathlib import Path

log = logging.getLogger(__name__)


def default_token_path(home: Path | None = None) -> Path:
    return (home or Path.home()) / ".ray" / "auth_token"


def ensure_private_token(
    env: dict[str, str] | None = None, home: Path | None = None
) -> Path | None:
    """The token file a local head will use, present and readable by its owner only; None when
    the environment names the token or its file instead."""
    env = os.environ if env is None else env
    if env.get("RAY_AUTH_TOKEN") or env.get("RAY_AUTH_TOKEN_PATH"):
        return None
    path = default_token_path(home)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            path.chmod(0o600)
            log.info(
                "made %s private (mode %o -> 600): it lets its holder run code on Ray", path, mode
            )
        return path
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
    return path

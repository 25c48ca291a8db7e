import os as _os
import sys as _sys


def _joined(path: list[str], name: str) -> list[str]:
    """Folders named like this package elsewhere on sys.path: a user's own rooms (a modality's,
    an objective's), laid out like ours without an ``__init__.py`` of their own, join it
    (docs/architecture.md, "Adding a modality")."""
    own = {_os.path.realpath(p) for p in path}
    found = (_os.path.join(d or ".", *name.split(".")) for d in _sys.path)
    return [p for p in found if _os.path.isdir(p) and _os.path.realpath(p) not in own]


__path__ += _joined(__path__, __name__)

import importlib.util as _util
import os as _os
import pkgutil as _pkgutil
import sys as _sys


def _joined(path: list[str], name: str) -> list[str]:
    """Folders named like this package elsewhere on sys.path: a user's own rooms (a modality's,
    an objective's), laid out like ours without an ``__init__.py`` of their own, join it
    (docs/architecture.md, "Adding a modality"). data_prep has its own copy: it imports nothing
    of ours."""
    own = {_os.path.realpath(p) for p in path}
    found = (_os.path.join(d or ".", *name.split(".")) for d in _sys.path)
    return [p for p in found if _os.path.isdir(p) and _os.path.realpath(p) not in own]


def rooms(path: list[str], name: str, module: str) -> tuple[str, ...]:
    """The rooms of package ``name`` (at ``path``) that hold ``module``, sorted: how modalities
    and objectives are found by convention, no table naming them."""
    return tuple(
        sorted(
            info.name
            for info in _pkgutil.iter_modules(path)
            if info.ispkg and _util.find_spec(f"{name}.{info.name}.{module}")
        )
    )

"""Typed configuration at the edge: YAML + dotted overrides -> a validated dataclass.

Every entry point (the pipeline's ``maskmill run`` and the per-rank ``python -m training.*``)
loads its configuration through :func:`load_config`, once, before any work starts. Three kinds of
mistake are caught and reported with the dotted key that is wrong and what was expected:

* unknown keys (a typo such as ``pretrain.mask.ration``),
* wrong types (``pretrain.steps=ten``),
* impossible values, reported by a dataclass's ``problems()`` method (``mask.ratio=1.0``).

Loading can take two passes: given a function instead of a class, ``load_config`` first merges
the raw layers, hands them to that function, and validates against the dataclass instance it
returns. That is how one key (``modality``) picks the config classes of other sections, with the
same dotted-key errors for all of them.

Dataclasses opt into value checks by defining ``problems(self) -> Iterable[tuple[str, str]]``
yielding ``(field, what was expected)``; nested dataclasses are walked automatically.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import (
    ConfigAttributeError,
    ConfigKeyError,
    InterpolationResolutionError,
    OmegaConfBaseException,
    ValidationError,
)

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration that cannot run. ``str()`` names every bad key and what it expects."""

    def __init__(self, problems: Sequence[tuple[str, str]], source: str | None = None):
        self.problems = list(problems)
        where = f" in {source}" if source else ""
        lines = [f"invalid configuration{where}:"]
        lines += [f"  {key}: {what}" for key, what in self.problems]
        super().__init__("\n".join(lines))


def load_config(
    schema: type[T] | Callable[[DictConfig], T],
    sources: Iterable[str | Path | dict[str, Any]] = (),
    overrides: Sequence[str] = (),
) -> T:
    """Merge YAML files / dicts and ``key=value`` overrides onto ``schema`` and validate.

    ``schema`` is a dataclass, or a function from the raw merged layers to the dataclass
    instance to validate against (two-pass loading, see the module docstring). Interpolations
    (``${run_dir}/shards``) are resolved before validation, so value checks see the final
    strings. Raises :class:`ConfigError` on any problem.
    """
    sources = list(sources)
    source_name = next((str(s) for s in reversed(sources) if not isinstance(s, dict)), None)
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise ConfigError([(o, "override must look like key=value") for o in bad])
    try:
        layers = [
            OmegaConf.create(s) if isinstance(s, dict) else _load_yaml(Path(s)) for s in sources
        ]
        layers.append(OmegaConf.from_dotlist(list(overrides)))
        if not isinstance(schema, type):
            try:
                schema = schema(OmegaConf.merge(*layers))
            except ConfigError as err:
                raise ConfigError(err.problems, source_name) from None
        merged = OmegaConf.structured(schema)
        OmegaConf.set_struct(merged, True)
        for layer in layers:
            merged = OmegaConf.merge(merged, layer)
        OmegaConf.resolve(merged)
        obj = OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        raise ConfigError([_describe(err)], source_name) from None
    problems = list(find_problems(obj))
    if problems:
        raise ConfigError(problems, source_name)
    return obj  # type: ignore[return-value]


def find_problems(obj: Any, prefix: str = "") -> Iterator[tuple[str, str]]:
    """Yield ``(dotted key, expectation)`` for every failed value check in a dataclass tree."""
    if not dataclasses.is_dataclass(obj):
        return
    own = getattr(obj, "problems", None)
    if callable(own):
        for key, what in own():
            yield (f"{prefix}{key}", what)
    for f in dataclasses.fields(obj):
        yield from find_problems(getattr(obj, f.name), f"{prefix}{f.name}.")


def to_yaml(obj: Any) -> str:
    """The YAML text of a (resolved) config dataclass, for run directories and fingerprints."""
    return OmegaConf.to_yaml(OmegaConf.structured(obj), sort_keys=False)


def _load_yaml(path: Path) -> DictConfig:
    if not path.is_file():
        raise ConfigError([("<file>", f"config file {path} does not exist")])
    layer = OmegaConf.load(path)
    if not isinstance(layer, DictConfig):
        raise ConfigError([("<file>", f"{path} must hold a mapping at the top level")])
    return layer


def _describe(err: OmegaConfBaseException) -> tuple[str, str]:
    key = getattr(err, "full_key", None) or getattr(err, "key", None) or "<config>"
    if isinstance(err, ConfigKeyError | ConfigAttributeError):
        parent = getattr(err, "object_type", None)
        known = ""
        if parent is not None and dataclasses.is_dataclass(parent):
            known = "; expected one of: " + ", ".join(f.name for f in dataclasses.fields(parent))
        return (str(key), f"unknown key{known}")
    if isinstance(err, InterpolationResolutionError):
        return (str(key), f"cannot resolve interpolation ({_first_line(err)})")
    if isinstance(err, ValidationError):
        return (str(key), f"wrong type: {_first_line(err)}")
    return (str(key), _first_line(err))


def _first_line(err: Exception) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__

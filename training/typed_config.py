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
import difflib
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


COMMAND_LINE = "the command line"


class ConfigError(ValueError):
    """A configuration that cannot run. ``str()`` names every bad key, what it expects, and
    where the bad value came from (a file, or the command line) when that is known.

    ``source`` is one place for every problem, or a function from a problem's key to its place.
    """

    def __init__(
        self,
        problems: Sequence[tuple[str, str]],
        source: str | Callable[[str], str | None] | None = None,
    ):
        self.problems = list(problems)
        places = [source(k) if callable(source) else source for k, _ in self.problems]
        if len(set(places)) <= 1:
            where = f" ({_place(places[0])})" if places and places[0] else ""
            lines = [f"invalid configuration{where}:"]
            lines += [f"  {key}: {what}" for key, what in self.problems]
        else:
            lines = ["invalid configuration:"]
            lines += [
                f"  {key}: {what}" + (f" ({_place(p)})" if p else "")
                for (key, what), p in zip(self.problems, places)
            ]
        super().__init__("\n".join(lines))


def _place(source: str) -> str:
    return f"from {source}" if source == COMMAND_LINE else f"in {source}"


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
    bad = [o for o in overrides if "=" not in o or o.startswith("=")]
    if bad:
        raise ConfigError([(o, "an override looks like key=value") for o in bad], COMMAND_LINE)
    names = [None if isinstance(s, dict) else str(s) for s in sources] + [COMMAND_LINE]
    layers = [OmegaConf.create(s) if isinstance(s, dict) else _load_yaml(Path(s)) for s in sources]
    try:
        layers.append(OmegaConf.from_dotlist(list(overrides)))
    except OmegaConfBaseException as err:
        raise ConfigError([_describe(err)], COMMAND_LINE) from None

    origin = _origins(names, layers)

    try:
        if not isinstance(schema, type):
            try:
                schema = schema(OmegaConf.merge(*layers))
            except ConfigError as err:
                raise ConfigError(err.problems, origin) from None
        merged = OmegaConf.structured(schema)
        OmegaConf.set_struct(merged, True)
        for name, layer in zip(names, layers):
            try:
                merged = OmegaConf.merge(merged, layer)
            except OmegaConfBaseException as err:
                raise ConfigError([_describe(err)], name) from None
        missing = sorted(k for k in OmegaConf.missing_keys(merged) if not _interpolated(merged, k))
        if missing:
            raise ConfigError([(k, "required: no value is set") for k in missing])
        OmegaConf.resolve(merged)
        obj = OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        raise ConfigError([_describe(err)], origin) from None
    problems = list(find_problems(obj))
    if problems:
        raise ConfigError(problems, origin)
    return obj  # type: ignore[return-value]


def _origins(names: list[str | None], layers: list[DictConfig]) -> Callable[[str], str | None]:
    """A function from a dotted key to the last layer that sets it (or, failing that, the
    nearest parent of it): where a bad value came from."""

    def sets(layer: DictConfig, key: str) -> bool:
        # Unresolved: an interpolation to a missing key is the error being described.
        node: Any = OmegaConf.to_container(layer, resolve=False)
        for part in key.split("."):
            if not isinstance(node, dict) or node.get(part) is None:
                return False
            node = node[part]
        return True

    def origin(key: str) -> str | None:
        parts = key.split(".")
        for depth in range(len(parts), 0, -1):
            prefix = ".".join(parts[:depth])
            for name, layer in zip(reversed(names), reversed(layers)):
                if sets(layer, prefix):
                    return name
        return None

    return origin


def _interpolated(cfg: DictConfig, key: str) -> bool:
    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(cfg, parent) if parent else cfg
    return OmegaConf.is_interpolation(node, leaf)


def find_problems(obj: Any, prefix: str = "") -> Iterator[tuple[str, str]]:
    """Yield ``(dotted key, expectation)`` for every failed value check in a dataclass tree.

    Every number is checked first (:func:`range_problems`); a section whose numbers are out of
    range is not asked for its own ``problems()``, which may divide by them."""
    if not dataclasses.is_dataclass(obj):
        return
    ranges = list(range_problems(obj))
    for key, what in ranges:
        yield (f"{prefix}{key}", what)
    own = getattr(obj, "problems", None)
    if callable(own) and not ranges:
        for key, what in own():
            yield (f"{prefix}{key}", what)
    for f in dataclasses.fields(obj):
        yield from find_problems(getattr(obj, f.name), f"{prefix}{f.name}.")


def range_problems(obj: Any) -> Iterator[tuple[str, str]]:
    """The range every number of a config section must be in: >= 0, unless the class lists it
    in ``SIGNED`` (a mean may be negative); > 0 for those in ``POSITIVE`` (sizes, counts,
    divisors); unset (None) is left to the section's own checks."""
    signed = getattr(obj, "SIGNED", ())
    positive = getattr(obj, "POSITIVE", ())
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, bool) or not isinstance(value, int | float) or f.name in signed:
            continue
        kind = "an int" if isinstance(value, int) else "a number"
        if f.name in positive and not value > 0:
            yield (f.name, f"{kind} > 0, got {value}")
        elif value < 0:
            yield (f.name, f"{kind} >= 0, got {value}")


def describe_keys(schema: type | Callable[[DictConfig], Any]) -> str:
    """Every key of a config, dotted, with its type and default: the ``--help`` of an entry
    point. A two-pass schema is shown with its defaults (the default modality's sections)."""
    obj = schema() if isinstance(schema, type) else schema(OmegaConf.create({}))
    return "\n".join(_key_lines(obj, ""))


def _key_lines(obj: Any, prefix: str) -> Iterator[str]:
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            yield from _key_lines(value, f"{prefix}{f.name}.")
            continue
        kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        shown = "(required)" if value == "???" else repr(value)
        yield f"  {prefix}{f.name}: {kind} = {shown}"


def to_yaml(obj: Any) -> str:
    """The YAML text of a (resolved) config dataclass, for run directories and fingerprints."""
    return OmegaConf.to_yaml(OmegaConf.structured(obj), sort_keys=False)


def _load_yaml(path: Path) -> DictConfig:
    if path.is_dir():
        yamls = sorted(p.name for p in path.glob("*.yaml"))[:3]
        hint = f" (it holds {', '.join(yamls)}...)" if yamls else ""
        raise ConfigError([("<file>", f"{path} is a folder; name a run YAML in it{hint}")])
    if not path.is_file():
        raise ConfigError([("<file>", f"config file {path} does not exist")])
    try:
        layer = OmegaConf.load(path)
    except Exception as err:  # yaml's errors say the line and column
        raise ConfigError(
            [("<file>", f"{path} is not valid YAML: {' '.join(str(err).split())}")]
        ) from None
    if not isinstance(layer, DictConfig):
        raise ConfigError([("<file>", f"{path} must hold a mapping at the top level")])
    return layer


def _describe(err: OmegaConfBaseException) -> tuple[str, str]:
    key = getattr(err, "full_key", None) or getattr(err, "key", None) or "<config>"
    if isinstance(err, ConfigKeyError | ConfigAttributeError):
        parent = getattr(err, "object_type", None)
        known = ""
        if parent is not None and dataclasses.is_dataclass(parent):
            names = [f.name for f in dataclasses.fields(parent)]
            close = difflib.get_close_matches(str(key).rpartition(".")[2], names, n=1)
            known = (f"; did you mean {close[0]}?" if close else "") + "; expected one of: "
            known += ", ".join(names)
        return (str(key), f"unknown key{known}")
    if isinstance(err, InterpolationResolutionError):
        return (str(key), f"cannot resolve interpolation ({_first_line(err)})")
    if isinstance(err, ValidationError):
        return (str(key), f"wrong type: {_first_line(err)}")
    return (str(key), _first_line(err))


def _first_line(err: Exception) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__

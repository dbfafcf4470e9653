"""One definition per setting.

Every knob the user can turn is a dataclass field declared with :func:`setting`: its default,
bounds, choices and help text live there and nowhere else. The engine reads the dataclass, the
CLI and YAML files load into it, and the UI generates its form from :func:`describe` — so a
default can never drift between the three.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T", bound="Settings")


class SettingsError(ValueError):
    """A setting has a value outside what it accepts; the message names the setting and the fix."""

    def __init__(self, name: str, message: str):
        super().__init__(f"Setting '{name}': {message}")
        self.name = name


@dataclass(frozen=True)
class Spec:
    """What the UI and the validator need to know about one setting besides its default."""

    help: str
    label: str = ""
    minimum: float | None = None
    maximum: float | None = None
    step: float | None = None
    choices: tuple[Any, ...] | None = None
    advanced: bool = False
    secret: bool = False


def setting(
    default: Any,
    help: str,
    *,
    label: str = "",
    minimum: float | None = None,
    maximum: float | None = None,
    step: float | None = None,
    choices: tuple[Any, ...] | list[Any] | None = None,
    advanced: bool = False,
    secret: bool = False,
) -> Any:
    """Declare a setting: a dataclass field whose metadata carries its :class:`Spec`."""
    spec = Spec(
        help=help,
        label=label,
        minimum=minimum,
        maximum=maximum,
        step=step,
        choices=tuple(choices) if choices is not None else None,
        advanced=advanced,
        secret=secret,
    )
    if isinstance(default, (list, dict, set)):
        return field(default_factory=lambda: type(default)(default), metadata={"spec": spec})
    return field(default=default, metadata={"spec": spec})


@dataclass(frozen=True)
class SettingInfo:
    """A setting as seen from outside: what a form generator or a CLI parser iterates over."""

    name: str
    type: Any
    default: Any
    spec: Spec

    @property
    def label(self) -> str:
        return self.spec.label or self.name.replace("_", " ").capitalize()


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def base_type(tp: Any) -> Any:
    """``int | None`` -> ``int``; ``list[str]`` -> ``list``; anything else unchanged."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return base_type(args[0]) if len(args) == 1 else tp
    return origin or tp


def _allows_none(tp: Any) -> bool:
    return type(None) in typing.get_args(tp)


def describe(cls: type[Settings]) -> list[SettingInfo]:
    """All settings of a dataclass, in declaration order, with their specs."""
    hints = _hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        spec = f.metadata.get("spec")
        if spec is None:
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        out.append(SettingInfo(name=f.name, type=hints[f.name], default=default, spec=spec))
    return out


def _to_bool(value: Any) -> bool:
    """Booleans as people type them in YAML, on a command line or in a form ("yes", "off", "1"...)."""
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in ("true", "yes", "1", "on"):
            return True
        if lowered in ("false", "no", "0", "off"):
            return False
        raise ValueError
    return bool(value)


def _to_int(value: Any) -> int:
    """An int, refusing a float that would silently lose its fraction (2.5 is not 2)."""
    if isinstance(value, float) and not value.is_integer():
        raise ValueError
    return int(value)


def _to_list(value: Any) -> list[Any]:
    """A list; a string is a comma-separated list, as a form field or command line gives it."""
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return list(value)


# How a value becomes each plain field type; ValueError/TypeError means it cannot.
_CONVERTERS: dict[Any, Callable[[Any], Any]] = {bool: _to_bool, int: _to_int, float: float, str: str, list: _to_list}


def _coerce(name: str, tp: Any, value: Any) -> Any:
    """Turn YAML/CLI/form values into the field's type, or explain why that is impossible."""
    if value is None:
        if _allows_none(tp):
            return None
        raise SettingsError(name, "a value is required.")
    base = base_type(tp)
    convert = _CONVERTERS.get(base)
    if convert is not None:
        try:
            return convert(value)
        except (TypeError, ValueError):
            raise SettingsError(name, f"expected {getattr(base, '__name__', base)}, got {value!r}.") from None
    if isinstance(base, type) and issubclass(base, Settings) and isinstance(value, dict):
        return base.from_dict(value)
    return value


@dataclass(frozen=True)
class Settings:
    """Base for every settings dataclass: validation on creation, dict/YAML round trip.

    Subclasses become frozen dataclasses automatically, so a settings class is just annotated
    fields declared with :func:`setting`.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        dataclass(frozen=True)(cls)

    def __post_init__(self) -> None:
        hints = _hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            coerced = _coerce(f.name, hints[f.name], value)
            if coerced is not value:
                object.__setattr__(self, f.name, coerced)
            spec: Spec | None = f.metadata.get("spec")
            if spec is not None and coerced is not None:
                _check_bounds(f.name, spec, coerced)
        self.validate()

    def validate(self) -> None:
        """Cross-field checks; subclasses raise :class:`SettingsError` with a fix."""

    @classmethod
    def from_dict(cls: type[T], data: dict[str, Any] | None) -> T:
        data = dict(data or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SettingsError(
                unknown[0],
                f"unknown setting. Known settings: {', '.join(sorted(known))}.",
            )
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self: T, **changes: Any) -> T:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_yaml(cls: type[T], path: str | Path) -> T:
        text = Path(path).read_text(encoding="utf-8")
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise SettingsError("<file>", f"{path} is not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise SettingsError("<file>", f"{path} must contain a mapping of setting: value.")
        return cls.from_dict(data)

    def to_yaml(self, path: str | Path | None = None) -> str:
        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        if path is not None:
            Path(path).write_text(text, encoding="utf-8")
        return text


def _check_bounds(name: str, spec: Spec, value: Any) -> None:
    if spec.choices is not None and value not in spec.choices:
        options = ", ".join(repr(c) for c in spec.choices)
        raise SettingsError(name, f"{value!r} is not one of {options}.")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if spec.minimum is not None and value < spec.minimum:
            raise SettingsError(name, f"{value} is below the minimum {spec.minimum}.")
        if spec.maximum is not None and value > spec.maximum:
            raise SettingsError(name, f"{value} is above the maximum {spec.maximum}.")

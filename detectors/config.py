"""Thresholds: a TOML file, validated completely before anything starts.

    [credit_limit]
    warning_utilisation = 0.9
    critical_utilisation = 1.1

    [overdue]
    enabled = false

A section per detector (missing sections and options take the defaults);
``[models]`` holds the online models' settings (the alert levels on model
outputs belong to their detectors: ``[risk_score]``, ``[unusual_invoice]``). An unknown section, an
unknown option or a value out of range stops the start with one line naming
the file and the key.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from detectors.base import REGISTRY, DetectorOptions


class ThresholdError(ValueError):
    """Unusable thresholds; one line naming the file and key."""


class ModelOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    late_days: int = Field(30, ge=0, le=365, description="an invoice paid more than this many days late counts as late")
    drift_threshold: float = Field(10.0, ge=1.0, le=365.0, description="Page-Hinkley threshold on days late")


@dataclass(frozen=True)
class Thresholds:
    detectors: Mapping[str, DetectorOptions] = field(default_factory=dict)
    models: ModelOptions = field(default_factory=ModelOptions)
    source: str = "defaults"

    def options_for(self, name: str) -> DetectorOptions:
        return self.detectors.get(name) or REGISTRY[name].Options()

    def to_toml(self) -> str:
        """The thresholds as a file that ``load_thresholds`` accepts (all options written out)."""
        lines: list[str] = []
        for name in sorted(REGISTRY):
            lines.append(f"[{name}]")
            for key, value in self.options_for(name).model_dump().items():
                lines.append(f"{key} = {_toml_value(value)}")
            lines.append("")
        lines.append("[models]")
        for key, value in self.models.model_dump().items():
            lines.append(f"{key} = {_toml_value(value)}")
        return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    return repr(value)


def allowed_range(cls: type[BaseModel], option: str) -> str | None:
    """``0.1 to 5.0`` from a field's ge/le (or gt/lt) constraints."""
    field = cls.model_fields.get(option)
    if field is None:
        return None
    low = high = None
    for item in field.metadata:
        low = getattr(item, "ge", None) if getattr(item, "ge", None) is not None else low
        high = getattr(item, "le", None) if getattr(item, "le", None) is not None else high
    if low is None and high is None:
        return None
    return f"{low if low is not None else '…'} to {high if high is not None else '…'}"


def _one_line(source: str, section: str, error: Any, cls: type[BaseModel] | None = None) -> str:
    location = ".".join(str(part) for part in error["loc"])
    key = f"{section}.{location}" if location else section
    if error["type"] == "extra_forbidden":
        return f"{source}: {key} is not an option of [{section}]"
    message = error["msg"]
    context = error.get("ctx") or {}
    if any(name in context for name in ("ge", "le", "gt", "lt")):
        allowed = allowed_range(cls, location) if cls is not None else None
        bounds = allowed or ", ".join(f"{n} {v}" for n, v in context.items() if n in ("ge", "le", "gt", "lt"))
        message = f"{error.get('input')!r} is out of range (allowed: {bounds})"
    return f"{source}: {key}: {message}"


def parse_thresholds(data: Mapping[str, Any], source: str = "thresholds") -> Thresholds:
    detectors: dict[str, DetectorOptions] = {}
    models = ModelOptions()
    for section, values in data.items():
        if not isinstance(values, Mapping):
            raise ThresholdError(f"{source}: {section} must be a [section] of options")
        if section == "models":
            cls: type[BaseModel] = ModelOptions
        elif section in REGISTRY:
            cls = REGISTRY[section].Options
        else:
            known = ", ".join(sorted([*REGISTRY, "models"]))
            raise ThresholdError(f"{source}: [{section}] is not a known detector (known: {known})")
        try:
            options = cls.model_validate(dict(values))
        except ValidationError as problem:
            raise ThresholdError(_one_line(source, section, problem.errors(include_url=False)[0], cls)) from None
        if section == "models":
            models = options  # type: ignore[assignment]
        else:
            detectors[section] = options  # type: ignore[assignment]
    for name, options in detectors.items():
        check = getattr(options, "check", None)
        if check is not None:
            problem = check()
            if problem:
                raise ThresholdError(f"{source}: [{name}] {problem}")
    return Thresholds(detectors=detectors, models=models, source=source)


def load_thresholds(path: Path | None) -> Thresholds:
    if path is None:
        return Thresholds()
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ThresholdError(f"{path}: no such file") from None
    except tomllib.TOMLDecodeError as problem:
        raise ThresholdError(f"{path}: not valid TOML: {problem}") from None
    return parse_thresholds(data, str(path))

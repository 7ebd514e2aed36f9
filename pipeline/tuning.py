"""Threshold changes with an audit trail: versions live in the store.

Every change is a new version of the whole thresholds file (TOML text) with
who, when and a required reason; ``history`` shows each version's changes as
``key: old → new``. Running workers poll the store for a newer version and
apply it without a restart; every alert records the version that raised it.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from typing import Any, Mapping

from detectors.base import REGISTRY
from detectors.config import ModelOptions, ThresholdError, Thresholds, parse_thresholds


@dataclass(frozen=True)
class Version:
    number: int | None  # None: nothing stored yet, the built-in defaults
    thresholds: Thresholds


def _flat(thresholds: Thresholds) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name in sorted(REGISTRY):
        for key, value in thresholds.options_for(name).model_dump().items():
            values[f"{name}.{key}"] = value
    for key, value in thresholds.models.model_dump().items():
        values[f"models.{key}"] = value
    return values


def diff(old: Thresholds, new: Thresholds) -> list[tuple[str, Any, Any]]:
    before, after = _flat(old), _flat(new)
    return [(key, before.get(key), after[key]) for key in after if before.get(key) != after[key]]


def _parse_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw  # a bare word: let validation say what it should have been


def with_value(thresholds: Thresholds, key: str, raw_value: str, source: str = "thresholds") -> Thresholds:
    """A copy with ``section.option`` set; ThresholdError naming the key and its range if invalid."""
    section, _, option = key.partition(".")
    if not option:
        raise ThresholdError(f"{source}: {key!r} must be written detector.option, e.g. credit_limit.warning_utilisation")
    data = tomllib.loads(thresholds.to_toml())
    if section not in data:
        known = ", ".join(sorted([*REGISTRY, "models"]))
        raise ThresholdError(f"{source}: [{section}] is not a known detector (known: {known})")
    fields = (ModelOptions if section == "models" else REGISTRY[section].Options).model_fields
    if option not in fields:
        raise ThresholdError(f"{source}: {key} is not an option of [{section}] (options: {', '.join(sorted(fields))})")
    data[section][option] = _parse_value(raw_value)
    return parse_thresholds(data, source)


def current(store: Any) -> Version:
    latest = store.threshold_changes(limit=1)
    if not latest:
        return Version(None, Thresholds())
    row = latest[0]
    return Version(row["version"], parse_thresholds(tomllib.loads(row["content"]), f"thresholds version {row['version']}"))


def change(store: Any, key: str, raw_value: str, by: str, reason: str) -> tuple[int, list[tuple[str, Any, Any]]]:
    return change_many(store, {key: raw_value}, by, reason)


def change_many(store: Any, values: Mapping[str, str], by: str, reason: str,
                source: str = "cli") -> tuple[int, list[tuple[str, Any, Any]]]:
    """Set several ``section.option`` values as one new version (the CLI sets one, the web page several)."""
    if not reason or not reason.strip():
        raise ThresholdError("a reason is required for every threshold change (--reason)")
    now = current(store)
    updated = now.thresholds
    for key, raw_value in values.items():
        updated = with_value(updated, key, raw_value)
    changes = diff(now.thresholds, updated)
    if not changes:
        return (now.number or 0), []
    version = store.record_thresholds(updated.to_toml(), by=by, source=source, note=reason.strip())
    return version, changes


def record_file(store: Any, thresholds: Thresholds, by: str, reason: str) -> int:
    """Store a whole thresholds file as a version (unchanged content keeps the current version)."""
    return store.record_thresholds(thresholds.to_toml(), by=by, source=thresholds.source, note=reason)


def history(store: Any, limit: int = 50) -> list[dict[str, Any]]:
    """Newest first, each with its changes against the version before it."""
    rows = list(reversed(store.threshold_changes(limit=limit + 1)))
    entries = []
    previous = Thresholds()
    for index, row in enumerate(rows):
        parsed = parse_thresholds(tomllib.loads(row["content"]), f"thresholds version {row['version']}")
        if index > 0 or len(rows) <= limit:
            entries.append({
                "version": row["version"], "changed_at": row["changed_at"], "changed_by": row["changed_by"],
                "reason": row["note"], "source": row["source"],
                "changes": [{"key": k, "old": o, "new": n} for k, o, n in diff(previous, parsed)],
            })
        previous = parsed
    return list(reversed(entries))[:limit]

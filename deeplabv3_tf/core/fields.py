"""Reading frozen dataclasses back from JSON: unknown keys are an error that names them."""

from __future__ import annotations

import dataclasses
from typing import Any


def check_known_fields(cls, values: dict[str, Any], what: str) -> None:
    """Refuses keys of `values` that are not fields of dataclass `cls`, naming them."""
    unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise ValueError(f"Unknown {what} fields: {unknown}.")

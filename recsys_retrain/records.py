"""Helpers shared by the frozen dataclasses that pass between stages."""

from __future__ import annotations

import math
from dataclasses import fields
from typing import Any


def lenient_from_dict(cls: type, payload: dict[str, Any]) -> Any:
    """Builds a dataclass from a dict, ignoring unknown keys, so a dict written by a newer version still loads."""
    return cls(**{f.name: payload[f.name] for f in fields(cls) if f.name in payload})


def json_float(x: Any) -> float | None:
    """A float JSON can hold: None stays None, and NaN or inf (a diverged step) become None."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None

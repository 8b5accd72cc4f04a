"""How numbers and names read in reports: one place decides that a missing or non-finite value shows as "—".

Every number formatter here is wrapped by `_or_dash`, which checks its arguments once: a None, NaN or infinite
value gives DASH instead of a crash or a "nan%". The formatters themselves only ever see finite floats.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

DASH = "—"
NO_LABELS = "(none)"  # how an empty label set reads
METRICS = (
    ("accuracy", "accuracy"),
    ("precision", "precision (macro)"),
    ("recall", "recall (macro)"),
    ("f1", "F1 (macro)"),
)


def finite(value: Any) -> float | None:
    """`value` as a float, or None when it is missing, not a number (bools included), NaN or infinite."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _or_dash(render: Callable[..., str]) -> Callable[..., str]:
    """Wrap a formatter so that it gets finite floats only: any other positional argument gives DASH.

    Options (digits, units) are keyword-only in every formatter, so they are never mistaken for values.
    """

    @functools.wraps(render)
    def guarded(*values: Any, **options: Any) -> str:
        numbers = [finite(v) for v in values]
        return DASH if None in numbers else render(*numbers, **options)

    return guarded


@_or_dash
def percent(value: float, *, digits: int = 1) -> str:
    """0.8612 -> '86.1%'."""
    return f"{100 * value:.{digits}f}%"


@_or_dash
def change(after: float, before: float) -> str:
    """A change between two fractions in percentage points: (0.86, 0.5) -> '+36.0 pp'."""
    return f"{100 * (after - before):+.1f} pp"


@_or_dash
def count(value: float) -> str:
    """1234567 -> '1,234,567'."""
    return f"{round(value):,}"


@_or_dash
def fixed(value: float, *, digits: int = 3, unit: str = "") -> str:
    """1234.5 -> '1,234.500', with ' unit' after it when a unit is given."""
    return f"{value:,.{digits}f}" + (f" {unit}" if unit else "")


@_or_dash
def sci(value: float) -> str:
    """0.0004 -> '4.00e-04'."""
    return f"{value:.2e}"


@_or_dash
def seconds(value: float) -> str:
    """Seconds, with minutes beside them past two minutes: '12.0 s', '600 s (10.0 min)'."""
    return f"{value:,.1f} s" if value < 120 else f"{value:,.0f} s ({value / 60:.1f} min)"


@_or_dash
def megabytes(value: float) -> str:
    return f"{value:,.1f} MB"


@_or_dash
def size(value: float) -> str:
    """A byte count in binary units: 1234567 -> '1.2 MiB'."""
    if abs(value) < 1024:
        return f"{value:,.0f} B"
    exponent = min(int(math.log(abs(value), 1024)), 3)
    return f"{value / 1024**exponent:,.1f} {('KiB', 'MiB', 'GiB')[exponent - 1]}"


@_or_dash
def share(part: float, total: float) -> str:
    """'296,450 (1.30%)': a parameter count with its share of the total (the count alone for no total)."""
    if total <= 0:
        return count(part)
    ratio = 100 * part / total
    return f"{count(part)} ({'<0.01' if 0 < ratio < 0.01 else f'{ratio:.2f}'}%)"


@_or_dash
def share_of_count(part: float, total: float) -> str:
    """'1,800 (45.0%)': a row count with its share of the split (the count alone for an empty split)."""
    return count(part) if not total else f"{count(part)} ({100 * part / total:.1f}%)"


def short_name(path_or_id: Any) -> str:
    """A hub id stays as is; a local path shows only its last folder, which keeps titles short and portable."""
    if not path_or_id:
        return DASH
    text = str(path_or_id)
    if text.startswith(("/", ".", "~", "…")) or "\\" in text or re.match(r"^[A-Za-z]:", text):
        return Path(text.replace("\\", "/")).name or text
    return text

"""How numbers are written in messages, reports and gate tables (one place, so they agree)."""

from __future__ import annotations


def fmt_number(value: float | None) -> str:
    """A number with sensible precision ('n/a' when absent)."""
    if value is None:
        return "n/a"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def fmt_bound(value: float) -> str:
    """A threshold bound or judged value: three significant digits below 100."""
    return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"


def fmt_cell(value: float | None, unit: str = "") -> str:
    """A number with the report's precision and its unit, '-' when absent."""
    return "-" if value is None else f"{fmt_number(value)} {unit}".strip()

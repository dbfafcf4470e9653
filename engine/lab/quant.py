"""Calibration: how real numbers become a few bits, and what that costs, value by value.

The rule, stated once (the UI shows :data:`ROUNDING_RULE`): ``q = clamp(round(x / scale) + zero_point, qmin,
qmax)`` with rounding half away from zero, and ``x̂ = (q − zero_point) · scale``. The calibration range is the
values' min–max, or the chosen percentiles (clipping rare extremes buys a finer grid for everything else).

- *Symmetric*: the zero point is 0 and ``scale = max(|lo|, |hi|) / qmax``. Signed that is the classic int8
  ``[-127, 127]·scale`` grid; unsigned (what some courses call "symmetric unsigned", for non-negative data such
  as ReLU outputs) it is ``[0, 255]·scale`` and negative values clamp to 0.
- *Asymmetric* (affine): the range is stretched to include 0 (so 0 stays exact: padding, ReLU zeros), then
  ``scale = (hi − lo) / (qmax − qmin)`` and ``zero_point = round(qmin − lo / scale)``.

The same functions quantize one typed-in list (per tensor) and a whole weight matrix row by row (per
channel, ``axis=1``), so the playground and the layer report cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core.settings import Settings, SettingsError, setting

ROUNDING_RULE = ("q = clamp(round(x / scale) + zero point, qmin, qmax), rounding half away from zero "
                 "(2.5 → 3, −2.5 → −3); dequantized x̂ = (q − zero point) × scale; error = x̂ − x.")
MAX_VALUES = 10_000  # typed-in or sampled values the playground tabulates at once


class QuantSettings(Settings):
    """The playground's knobs; the CLI flags and the Lab form are generated from these fields."""

    bits: int = setting(8, "Bits per value: 8 (int8, 256 levels) or 4 (16 levels).", choices=(8, 4))
    scheme: str = setting(
        "asymmetric",
        "Symmetric: zero point fixed at 0, the grid is centred on 0. Asymmetric (affine): the grid covers exactly "
        "the values' range, shifted by a zero point.",
        choices=("symmetric", "asymmetric"),
    )
    signed: bool = setting(False, "Signed integers (int8: −128…127) or unsigned (uint8: 0…255).")
    clip: str = setting(
        "minmax",
        "Calibration range: the smallest and largest value (min–max), or percentiles that ignore rare extremes.",
        choices=("minmax", "percentile"),
    )
    percentile: float = setting(
        99.9,
        "With percentile clipping: the range is [100 − p, p] percentiles of the values; values outside clamp.",
        minimum=50.0, maximum=100.0, step=0.1,
    )

    @property
    def qmin(self) -> int:
        return -(2 ** (self.bits - 1)) if self.signed else 0

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1 if self.signed else 2**self.bits - 1


@dataclass(frozen=True)
class QuantizedValue:
    """One value's trip through the grid."""

    value: float
    q: int
    dequant: float
    error: float


@dataclass(frozen=True)
class Calibration:
    """What the calibration chose, and every value's result."""

    settings: QuantSettings
    lo: float
    hi: float
    scale: float
    zero_point: int
    qmin: int
    qmax: int
    values: list[QuantizedValue]
    clamped: int
    notes: list[str]

    @property
    def mse(self) -> float:
        return float(np.mean([v.error**2 for v in self.values])) if self.values else 0.0

    @property
    def max_abs_error(self) -> float:
        return max((abs(v.error) for v in self.values), default=0.0)

    def grid(self) -> list[float]:
        """Every representable value, ``(q − zero point) · scale`` for q from qmin to qmax."""
        return [float((q - self.zero_point) * self.scale) for q in range(self.qmin, self.qmax + 1)]

    def to_dict(self) -> dict[str, object]:
        return {"scale": self.scale, "zero_point": self.zero_point, "qmin": self.qmin, "qmax": self.qmax,
                "range": [self.lo, self.hi], "clamped": self.clamped, "mse": self.mse,
                "max_abs_error": self.max_abs_error, "rule": ROUNDING_RULE, "notes": self.notes,
                "settings": self.settings.to_dict(),
                "values": [{"value": v.value, "q": v.q, "dequant": v.dequant, "error": v.error} for v in self.values]}


def round_half_away(x: np.ndarray) -> np.ndarray:
    """Round half away from zero, the rule courses use (numpy's own ``round`` goes half to even: 0.5 → 0)."""
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


def parse_values(text: str) -> list[float]:
    """``"0, 250, 1000"`` (commas, spaces or new lines) -> floats; a clear message names a bad entry."""
    parts = [p for p in text.replace(",", " ").replace(";", " ").split() if p]
    if not parts:
        raise SettingsError("values", "type at least one number, e.g. 0, 250, 1000.")
    if len(parts) > MAX_VALUES:
        raise SettingsError("values", f"at most {MAX_VALUES:,} values at once; you gave {len(parts):,}.")
    out = []
    for position, part in enumerate(parts, start=1):
        try:
            number = float(part)
        except ValueError:
            raise SettingsError("values", f"entry {position} ({part[:20]!r}) is not a number.") from None
        if not np.isfinite(number):
            raise SettingsError("values", f"entry {position} is {part}: only finite numbers can be quantized.")
        out.append(number)
    return out


def calibration_range(x: np.ndarray, settings: QuantSettings, axis: int | None = None) -> tuple[np.ndarray,
                                                                                                  np.ndarray]:
    """The range the grid covers, (lo, hi), per tensor (``axis=None``) or per row (``axis=1``, kept as a column).

    Min–max or percentiles of the values; asymmetric stretches it to include 0, so 0 is exactly representable.
    """
    keep = axis is not None
    if settings.clip == "percentile":
        p = settings.percentile
        lo, hi = np.percentile(x, 100 - p, axis=axis, keepdims=keep), np.percentile(x, p, axis=axis, keepdims=keep)
    else:
        lo, hi = np.min(x, axis=axis, keepdims=keep), np.max(x, axis=axis, keepdims=keep)
    if settings.scheme == "asymmetric":
        return np.minimum(lo, 0.0), np.maximum(hi, 0.0)
    return lo, hi


def scale_and_zero_point(lo: np.ndarray, hi: np.ndarray, settings: QuantSettings) -> tuple[np.ndarray, np.ndarray]:
    """The scheme's scale and zero point for a range (arrays broadcast: one per tensor or per row)."""
    qmin, qmax = settings.qmin, settings.qmax
    if settings.scheme == "symmetric":
        scale = np.maximum(np.abs(lo), np.abs(hi)) / qmax
        scale = np.where(scale > 0, scale, 1.0)
        return scale, np.zeros_like(scale, dtype=np.int64)
    scale = (hi - lo) / (qmax - qmin)
    scale = np.where(scale > 0, scale, 1.0)
    zero_point = np.clip(round_half_away(qmin - lo / scale), qmin, qmax).astype(np.int64)
    return scale, zero_point


def round_trip(x: np.ndarray, scale: np.ndarray | float, zero_point: np.ndarray | int, qmin: int, qmax: int
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The rule itself: ``(unclamped q, q, dequantized)`` of ``x`` on a given grid (:data:`ROUNDING_RULE`)."""
    raw = round_half_away(x / scale) + zero_point
    q = np.clip(raw, qmin, qmax)
    return raw, q, (q - zero_point) * scale


def quantize_array(x: np.ndarray, settings: QuantSettings, axis: int | None = None
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(q, dequantized, scale, zero_point)`` of ``x`` under ``settings``, per tensor or per row."""
    scale, zero_point = scale_and_zero_point(*calibration_range(x, settings, axis), settings)
    _, q, dequant = round_trip(x, scale, zero_point, settings.qmin, settings.qmax)
    return q.astype(np.int64), dequant, scale, zero_point


def calibrate(values: list[float], settings: QuantSettings | None = None) -> Calibration:
    """The playground: quantize typed-in (or sampled) values per tensor and report every step."""
    settings = settings or QuantSettings()
    if not values:
        raise SettingsError("values", "type at least one number, e.g. 0, 250, 1000.")
    x = np.asarray(values, dtype=np.float64)
    lo, hi = calibration_range(x, settings)
    scale, zero_point = scale_and_zero_point(lo, hi, settings)
    raw, q, dequant = round_trip(x, scale, zero_point, settings.qmin, settings.qmax)
    rows = [QuantizedValue(float(v), int(i), float(d), float(d - v)) for v, i, d in zip(x, q, dequant, strict=True)]
    clamped = int(np.sum((raw < settings.qmin) | (raw > settings.qmax)))
    return Calibration(settings=settings, lo=float(lo), hi=float(hi), scale=float(scale), zero_point=int(zero_point),
                       qmin=settings.qmin, qmax=settings.qmax, values=rows, clamped=clamped,
                       notes=_notes(x, settings))


def _notes(x: np.ndarray, settings: QuantSettings) -> list[str]:
    """What a learner should notice about this choice on these values."""
    notes = []
    if settings.scheme == "symmetric" and not settings.signed and np.any(x < 0):
        notes.append("Unsigned symmetric has no negative levels: negative values clamp to 0. Use signed, or "
                     "asymmetric.")
    if settings.scheme == "symmetric" and settings.signed and np.all(x >= 0):
        notes.append("All values are non-negative, so the negative half of the signed grid is never used: "
                     "unsigned or asymmetric gives twice the resolution.")
    if settings.clip == "percentile":
        notes.append(f"Values outside the {100 - settings.percentile:g}–{settings.percentile:g} percentile range "
                     "clamp to the grid's ends: a larger error on them, a finer grid for the rest.")
    return notes

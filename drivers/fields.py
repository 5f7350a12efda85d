"""The strictness every config model shares: the agent's, the rules' and each driver's.

A config file is a pushed, possibly hostile input (issue 9 item 10). pydantic's lax mode
turned ``commit_interval_s = "0.5"`` into a float and ``record_interval_s = true`` into
1.0 without a word, and let ``nan``, ``inf`` and ``1e308`` through to code that then
overflowed, never fired or spun. Every config model derives from :class:`StrictModel`:

- no coercion: a string is not a number, a bool is not a number, a float is not an int;
  a TOML integer where a float is expected is still accepted (``delay_s = 600``);
- no ``nan`` or ``inf`` in any float;
- no number beyond ±2**53 in any field (where JSON numbers stop being exact, the bound
  the store puts on readings too), so nothing configured overflows later; fields with a
  meaningful range bound themselves more tightly (``quota_mb``, the intervals);
- loops have a floor, :data:`MIN_PERIOD_S`, so a ``1e-300`` interval cannot pin a core.

The bound lives in a validator, not in an ``Annotated`` type: pydantic lets a type's
``ge``/``le`` silently override a field's own (measured on 2.14), so a field's tighter
bound would be lost.

The agent imports these from here (``drivers`` never imports ``agent``).
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AllowInfNan, BaseModel, ConfigDict, Strict, field_validator

#: Model config of every config model: unknown keys refused, frozen, strict, finite.
STRICT = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)

#: Largest magnitude of any configured number.
MAX_MAGNITUDE = 2**53
#: Ten years: the longest duration a setting may name.
MAX_SECONDS = 10 * 366 * 86400.0
#: Shortest period of anything that loops (polls, commits, syncs, watchdogs).
MIN_PERIOD_S = 0.01

#: A finite float, never coerced from a string or a bool (for models outside this base).
Finite = Annotated[float, Strict(), AllowInfNan(False)]


class StrictModel(BaseModel):
    """Base of every config model (see the module docstring)."""

    model_config = STRICT

    @field_validator("*", mode="after")
    @classmethod
    def _bounded(cls, value: Any) -> Any:
        check_magnitude(value)
        return value


def check_magnitude(value: Any) -> None:
    """Raise ValueError if ``value`` (or a number directly in a list of them) is beyond ±2**53."""
    items = value if isinstance(value, (list, tuple)) else (value,)
    for v in items:
        if isinstance(v, (int, float)) and not isinstance(v, bool) and abs(v) > MAX_MAGNITUDE:
            raise ValueError(f"must be within ±2**53 ({MAX_MAGNITUDE})")

"""``config_version``: what it may be and how two compare.

A version is an integer (``42``) or dotted decimal integers set by the fleet's tool
(``"2025.6.1"``, a date, a build number). Two versions compare number by number, as
tuples of integers, after trailing zeros are dropped: ``7 == "7" == "7.0"``,
``"7.1" > 7``, ``"2025.10.1" > "2025.9.30"``. No letters, no pre-release tags: a
fleet's order must be one that every tool and person reads the same way. ``0`` (the
default) is "unversioned", lower than every version a fleet sets.
"""

from __future__ import annotations

from functools import total_ordering


@total_ordering
class Version:
    """A comparable ``config_version`` (see the module docstring)."""

    __slots__ = ("key", "text")

    def __init__(self, value: int | str) -> None:
        text = str(value)
        parts = [int(p) for p in text.split(".")]
        while len(parts) > 1 and parts[-1] == 0:
            parts.pop()
        self.key: tuple[int, ...] = tuple(parts)
        self.text = text

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Version) and self.key == other.key

    def __lt__(self, other: Version) -> bool:
        return self.key < other.key

    def __hash__(self) -> int:
        return hash(self.key)

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return f"Version({self.text!r})"


__all__ = ["Version"]

"""Statement text the gateway holds for audit records, counted per connection and for the process.

A connection keeps the text of its prepared statements, so that later Binds and EXECUTEs are
recorded with what runs. Each connection may hold ``PER_CONNECTION``; ``GATEWAY`` bounds the sum
over every connection of both listeners, so a few connections cannot take the gateway's memory
from everyone (review: one MySQL connection held 264 MiB, and nothing bounded several).

Sizes are an upper bound of what a ``str`` costs in memory, read in O(1): its length for ASCII
text, four times its length otherwise (CPython stores up to 4 bytes per character), so 64M astral
characters no longer pass as 64M "characters".
"""

from __future__ import annotations

import weakref

PER_CONNECTION = 64 << 20
GATEWAY_WIDE = 256 << 20


def text_size(text: str) -> int:
    return len(text) if text.isascii() else 4 * len(text)


class TextBudget:
    """What every connection's share holds together, against ``limit``."""

    def __init__(self, limit: int = GATEWAY_WIDE):
        self.limit = limit
        self.used = 0

    def room_for(self, size: int) -> bool:
        return self.used + size <= self.limit

    def share(self) -> BudgetShare:
        return BudgetShare(self)


class BudgetShare:
    """One connection's part of a budget. What it still holds goes back when it is dropped (the
    connection's maps are garbage), so no ending path of a session can leak the budget."""

    __slots__ = ("__weakref__", "_held", "budget")

    def __init__(self, budget: TextBudget):
        self.budget = budget
        self._held = [0]  # a cell the finalizer shares: it must not hold the share itself
        weakref.finalize(self, _give_back, budget, self._held)

    @property
    def held(self) -> int:
        return self._held[0]

    def change(self, delta: int) -> None:
        self._held[0] += delta
        self.budget.used += delta


def _give_back(budget: TextBudget, held: list[int]) -> None:
    budget.used -= held[0]
    held[0] = 0


GATEWAY = TextBudget()

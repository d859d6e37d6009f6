"""What a full listing costs, as the last complete pass measured it.

Deadline checks and --once's stop confirmation both ask the same question: is one
listing of every user cheaper than reading these users one by one?
"""

from __future__ import annotations


class ListingCost:
    def __init__(self) -> None:
        # Hub reads of the last complete pass; unknown (very dear) until one has run.
        self.reads = 1_000_000

    def cheaper_than(self, looks: int) -> bool:
        """Would one full listing cost no more requests than ``looks`` single-user reads?"""
        return looks > 1 and looks >= self.reads

"""What the engine asks of hubcull's memory across restarts (state.py): warnings, keeps.

A protocol, so the engine does not depend on where that memory lives (a SQLite file in
production, nothing at all in most engine tests).
"""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

from ..model import Server
from ..policy import Marks
from .context import Key


class MarksBook(Protocol):
    def marks(self, user: str, server: Server) -> Marks:
        """The warning sent and the keep asked for, for this run of the server."""

    def warned(self, user: str, server: str, cull_at: datetime, at: datetime) -> None:
        """A warning was sent for the cull at ``cull_at``."""

    def retain(self, listed: set[Key], since: datetime) -> None:
        """After a complete pass: forget servers it did not list (they stopped)."""

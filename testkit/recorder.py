"""Every event an engine emitted, kept in order, for tests to assert on."""

from __future__ import annotations

from typing import TypeVar

from hubcull.events import Event, EventBus

E = TypeVar("E", bound=Event)


class Recorder:
    """A bus (pass it as ``emit``) that also keeps every event."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.bus = EventBus()
        self.bus.subscribe(Event, self.events.append)

    def __call__(self, event: Event) -> None:
        self.bus.emit(event)

    def of(self, kind: type[E]) -> list[E]:
        return [e for e in self.events if isinstance(e, kind)]

    def clear(self) -> None:
        self.events.clear()

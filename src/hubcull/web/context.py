"""Everything the web endpoints read: the status view and the observers, the rules, auth."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from ..observe.history import RecentCulls
from ..observe.metrics import Metrics
from ..observe.status import StatusView
from ..rules import RuleSet
from ..state import StateStore
from .auth import Directory
from .keeps import KeepDesk

if TYPE_CHECKING:
    from jupyterhub.services.auth import HubAuth, HubOAuth


@dataclass
class WebContext:
    status: StatusView
    history: RecentCulls
    metrics: Metrics
    rules: RuleSet
    directory: Directory
    token_auth: HubAuth  # checks API tokens (metrics, the API): never redirects
    oauth: HubOAuth | None  # logs browsers in; None when the Hub gave no OAuth client
    api_token: Callable[[], str]  # hubcull's own token, as it is now (files rotate)
    clock: Callable[[], datetime]
    started: datetime
    unhealthy_after: float
    authenticate_prometheus: bool = True
    refresh: int = 30  # seconds between the page's own reloads
    hub_url: str = "/hub/"  # the Hub's home, for a link back
    store: StateStore | None = None  # warnings sent and keeps asked for
    keeps: KeepDesk | None = None  # None: no keeping (no state store)

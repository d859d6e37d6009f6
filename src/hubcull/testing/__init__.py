"""A real local JupyterHub for hubcull's tests, benchmarks and demo (needs the `demo` extra)."""

from .hub import (
    CULLER_SCOPES,
    HubStartError,
    LocalHub,
    ServerSpec,
    Service,
    find_chp,
    free_port,
    server_path,
)
from .overlap import time_at_each_count

__all__ = [
    "CULLER_SCOPES",
    "HubStartError",
    "LocalHub",
    "ServerSpec",
    "Service",
    "find_chp",
    "free_port",
    "server_path",
    "time_at_each_count",
]

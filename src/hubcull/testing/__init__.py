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

__all__ = [
    "CULLER_SCOPES",
    "HubStartError",
    "LocalHub",
    "ServerSpec",
    "Service",
    "find_chp",
    "free_port",
    "server_path",
]

"""hubcull's web server (tornado, as JupyterHub services use): health, metrics and pages.

As a Hub-managed service with a ``url``, it listens where ``$JUPYTERHUB_SERVICE_URL``
says and serves under ``$JUPYTERHUB_SERVICE_PREFIX`` (the Hub's proxy routes
``/services/<name>/`` there without stripping it). Standalone, ``--web-url`` turns it
on. Without either, no port is opened.

- ``<prefix>health``: no login (Kubernetes probes, uptime checks);
- ``<prefix>metrics``: Prometheus text, with a Hub API token allowed to access this
  service unless ``--authenticate-prometheus=false``;
- ``<prefix>``: the page, behind the Hub's own OAuth login.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import secrets
import stat
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tornado import httpserver, web
from tornado.log import access_log

from .context import WebContext

HERE = Path(__file__).parent


class WebError(Exception):
    """The web server cannot start as configured: one line, for the operator."""


def _log_request(handler: web.RequestHandler) -> None:
    """One access line per request: method, path (never the query: it may hold a token),
    status and time. Health and metrics scrapes, every few seconds, go to DEBUG."""
    status = handler.get_status()
    path = handler.request.path
    quiet = path.endswith(("/health", "/metrics")) or path.startswith(
        handler.settings.get("static_url_prefix", "/static/")
    )
    level = logging.DEBUG if quiet and status < 400 else logging.INFO
    if status >= 500:
        level = logging.ERROR
    ms = 1000.0 * handler.request.request_time()
    access_log.log(level, "%d %s %s %.1fms", status, handler.request.method, path, ms)


def load_cookie_secret(path: str) -> bytes:
    """The secret that signs login cookies, kept in a file (0600) so that users stay
    logged in across restarts; created on first use."""
    p = Path(path)
    try:
        if p.exists():
            try:
                secret = bytes.fromhex(p.read_text().strip())
            except ValueError:
                secret = b""
            if len(secret) < 32:
                raise WebError(
                    f"the cookie secret file {path} does not hold a hex secret of 32 bytes or "
                    "more: remove it and hubcull writes a new one (users then log in again)"
                )
            return secret
        p.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, stat.S_IRUSR | stat.S_IWUSR)
        value = secrets.token_hex(32)
        with os.fdopen(fd, "w") as f:
            f.write(value + "\n")
        return bytes.fromhex(value)
    except OSError as e:
        raise WebError(
            f"cannot read or create the cookie secret file {path}: {e.strerror}"
        ) from None


def make_app(context: WebContext, prefix: str, cookie_secret: bytes) -> web.Application:
    # jupyterhub (HubOAuth, HubAuth) is needed only here: a hubcull run from cron without
    # a web server does not need it installed.
    from .handlers import (
        HealthHandler,
        KeepAPIHandler,
        KeepFormHandler,
        MetricsHandler,
        OAuthCallbackHandler,
        PageHandler,
    )

    prefix = "/" + prefix.strip("/") + "/" if prefix.strip("/") else "/"
    routes: list[Any] = [
        (prefix + "health", HealthHandler, {"context": context}),
        (prefix + "metrics", MetricsHandler, {"context": context}),
        (prefix + "api/keep", KeepAPIHandler, {"context": context}),
    ]
    if context.oauth is not None:
        routes += [
            (prefix + "oauth_callback", OAuthCallbackHandler, {"context": context}),
            (prefix + "keep", KeepFormHandler, {"context": context}),
            (prefix, PageHandler, {"context": context}),
        ]
    return web.Application(
        routes,
        cookie_secret=cookie_secret,
        template_path=str(HERE / "templates"),
        static_path=str(HERE / "static"),
        static_url_prefix=prefix + "static/",
        xsrf_cookies=True,
        log_function=_log_request,
    )


def listen_address(url: str, ip: str = "") -> tuple[str, int]:
    """Where to listen for ``url``: its port, and ``ip`` or the URL's host when it is an
    address this machine has (a Kubernetes service name is not: then every interface)."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if parts.scheme not in ("http", ""):
        raise WebError(f"the web URL {url} must be http:// (TLS ends at the Hub's proxy)")
    port = parts.port or 80
    host = ip or parts.hostname or ""
    if not ip and host not in ("localhost", ""):
        try:
            ipaddress.ip_address(host)
        except ValueError:
            host = ""  # a name such as "hub" (zero-to-jupyterhub): listen on all interfaces
    return host, port


def start(app: web.Application, url: str, ip: str = "") -> httpserver.HTTPServer:
    host, port = listen_address(url, ip)
    server = httpserver.HTTPServer(app, xheaders=True)
    try:
        server.listen(port, address=host)
    except OSError as e:
        raise WebError(f"cannot listen on {host or '*'}:{port} ({url}): {e.strerror}") from None
    return server


__all__ = ["WebContext", "WebError", "listen_address", "load_cookie_secret", "make_app", "start"]

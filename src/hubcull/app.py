"""The command line and configuration shell around the engine.

Every option is a traitlet whose help text is its documentation. Options that
jupyterhub-idle-culler has live on :class:`IdleCuller`, under the same names,
defaults and meanings, so its flags and its ``c.IdleCuller.*`` config files work
unchanged; hubcull's own options live on :class:`HubCull`, which inherits them all
(``c.HubCull.timeout`` works too).

Exit codes: 0 done, 1 a pass failed, 2 bad configuration or credentials.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import os
import re
import signal
import sys
import traceback
from textwrap import dedent
from typing import Any

from tornado.log import LogFormatter
from traitlets import (
    Bool,
    Callable,
    CaselessStrEnum,
    Dict,
    Float,
    Int,
    List,
    TraitError,
    Unicode,
    default,
    validate,
)
from traitlets.config import Application, ArgumentError
from traitlets.config.loader import ConfigFileNotFound, KVArgParseConfigLoader

from . import __version__
from .activity import ProbeError, Prober
from .engine import Engine, EngineOptions, utcnow
from .events import DeadlineMode, EventBus, PassReport, StopLimitChanged
from .hub import (
    HubClient,
    HubError,
    HubUnreachable,
    RetryPolicy,
    TokenSource,
    make_internal_ssl_context,
)
from .limits import AdaptiveGate, AdaptiveLimit
from .logsafe import RedactSecrets
from .notify import Command, Notifier, Webhook
from .observe.audit import AuditLog
from .observe.dryrun import DryRunPrinter
from .observe.explain import ExplainPrinter
from .observe.history import RecentCulls
from .observe.logs import JsonFormatter, LogLines
from .observe.metrics import Metrics
from .observe.status import StatusView
from .policy import MAX_SECONDS, ProbeRules
from .preflight import Connection, StartupError, preflight
from .rules import Flags, RuleError, RuleSet, parse_rules
from .state import StateStore
from .web import WebError

DEFAULT_API_URL = "http://127.0.0.1:8081/hub/api"
EXIT_OK, EXIT_PASS_FAILED, EXIT_CONFIG = 0, 1, 2
# After SIGTERM, how long requests in flight may take before they are abandoned:
# well inside the 10 s a Hub (or Kubernetes) gives a service before killing it.
SHUTDOWN_GRACE = 8.0
# After a one-pass run, how long its warnings and notices may take to be sent.
NOTIFY_DRAIN = 30.0


# What each numeric option accepts: (lowest, lowest allowed itself?, highest, in words).
_RANGES: dict[str, tuple[float, bool, float, str]] = {
    "timeout": (0, False, MAX_SECONDS, "a positive number of seconds"),
    "cull_every": (0, True, MAX_SECONDS, "0 (half the timeout) or a number of seconds"),
    "max_age": (0, True, MAX_SECONDS, "0 (off) or a number of seconds"),
    "user_timeout": (0, True, MAX_SECONDS, "0 (the timeout) or a number of seconds"),
    "unhealthy_after": (0, True, MAX_SECONDS, "0 (three times cull_every) or a number of seconds"),
    "warn_before": (0, True, MAX_SECONDS, "0 (no warnings) or a number of seconds"),
    "min_warning": (0, True, MAX_SECONDS, "0 or a number of seconds"),
    "max_keep": (0, True, MAX_SECONDS, "0 (off) or a number of seconds"),
    "api_page_size": (0, True, 1_000_000, "0 (the Hub's default) or a page size"),
    "concurrency": (0, True, 10_000, "0 (no limit) or a positive number"),
    "retries": (0, True, 20, "between 0 and 20"),
    "busy_timeout": (0, True, MAX_SECONDS, "0 (no limit) or a number of seconds"),
    "cpu_threshold": (0, True, 100_000, "0 (off) or a percentage"),
    "stop_wait": (0, False, MAX_SECONDS, "a positive number of seconds"),
    "request_timeout": (0, False, MAX_SECONDS, "a positive number of seconds"),
    "probe_timeout": (0, False, MAX_SECONDS, "a positive number of seconds"),
}


def _in_range(proposal: Any) -> Any:
    """The one validator of every numeric option: a clear message naming the flag."""
    name, value = proposal.trait.name, proposal.value
    low, low_ok, high, words = _RANGES[name]
    flag = name.replace("_", "-")
    if value > high:
        raise TraitError(f"--{flag} must be at most {int(high)}, not {value}")
    if not (value >= low if low_ok else value > low):
        raise TraitError(f"--{flag} must be {words}, not {value}")
    return value


class UsageError(Exception):
    """Bad command line or configuration: reported in one line, exit code 2."""


class _OneLineArgParseLoader(KVArgParseConfigLoader):
    """argparse prints the whole usage and exits on a bad flag; we raise instead."""

    def _create_parser(self) -> None:
        base = self.parser_class

        class Parser(base):  # type: ignore[misc,valid-type]
            def error(self, message: str) -> None:  # noqa: D401
                raise UsageError(message)

        self.parser_class = Parser
        super()._create_parser()


def _help(text: str) -> str:
    return dedent(text).strip()


class IdleCuller(Application):
    """The options of jupyterhub-idle-culler 2.0.0, same names, defaults and meanings."""

    url = Unicode(
        help=_help(
            """
            The JupyterHub API URL. Default: $JUPYTERHUB_API_URL (the Hub sets it for
            managed services), else http://127.0.0.1:8081/hub/api.
            """
        )
    ).tag(config=True)

    @default("url")
    def _url_default(self) -> str:
        return os.environ.get("JUPYTERHUB_API_URL") or DEFAULT_API_URL

    timeout = Int(
        600,
        help=_help(
            """
            The idle timeout, in seconds: a server whose last activity is older than this
            is culled.
            """
        ),
    ).tag(config=True)

    cull_every = Int(
        0,
        help=_help(
            """
            The interval, in seconds, between full passes over all users.
            Default (0): half the timeout.
            """
        ),
    ).tag(config=True)

    max_age = Int(
        0,
        help=_help(
            """
            The maximum age, in seconds, of a server: older ones are culled even when
            active (and, with cull_users, users created longer ago are deleted).
            0 disables it.
            """
        ),
    ).tag(config=True)

    cull_users = Bool(
        False,
        help=_help(
            """
            Delete inactive users too, once all their servers are stopped. For
            temporary-user deployments (tmpnb-like, BinderHub with authentication).
            """
        ),
    ).tag(config=True)

    cull_admin_users = Bool(
        True,
        help="Whether admin users may be deleted (only with cull_users=True).",
    ).tag(config=True)

    remove_named_servers = Bool(
        False,
        help=_help(
            """
            Remove named servers for good after stopping them, instead of keeping them
            for the user to start again (useful for BinderHub with authentication).
            """
        ),
    ).tag(config=True)

    cull_default_servers = Bool(True, help="Whether default servers are culled.").tag(config=True)

    cull_named_servers = Bool(True, help="Whether named servers are culled.").tag(config=True)

    concurrency = Int(
        10,
        help=_help(
            """
            The most requests hubcull has outstanding to the Hub at any moment.
            0 means no limit, which can overload a Hub during a mass cull.
            """
        ),
    ).tag(config=True)

    api_page_size = Int(
        0,
        help=_help(
            """
            Users per page when listing users (the Hub caps it at its api_page_max_limit,
            200 by default). 0: 50, the Hub's default (200 with --deadline-checks=budget).
            Larger pages mean fewer requests, but the Hub builds each one in a single step
            on its only event loop, holding every other request meanwhile.
            """
        ),
    ).tag(config=True)

    ssl_enabled = Bool(
        False,
        help=_help(
            """
            The Hub API uses internal TLS (JupyterHub.internal_ssl): authenticate with the
            Hub's internal certificates from internal_certs_location.
            """
        ),
    ).tag(config=True)

    internal_certs_location = Unicode(
        "internal-ssl",
        help="Where the Hub's generated internal-ssl certificates are (with ssl_enabled).",
    ).tag(config=True)

    config_file = Unicode(
        "hubcull_config.py",
        help=_help(
            """
            The config file to load. When the default hubcull_config.py is absent, an
            idle_culler_config.py written for jupyterhub-idle-culler is loaded instead.
            """
        ),
    ).tag(config=True)

    generate_config = Bool(False, help="Print a config file with every option, then exit.").tag(
        config=True
    )

    cull_arbiter_hook = Callable(
        None,
        allow_none=True,
        help=_help(
            """
            A function deciding whether an eligible server is idle, instead of the plain
            "inactive >= timeout" comparison (max_age still applies on top). Called with
            keyword arguments inactive (a timedelta), inactive_limit (the timeout, in
            seconds) and server (the Hub's server model, a dict); may be async. Return
            True to cull. Example, a longer timeout for a profile:

                def arbiter(inactive, inactive_limit, server):
                    profile = (server.get("user_options") or {}).get("profile")
                    limit = 4 * inactive_limit if profile == "gpu-long" else inactive_limit
                    return inactive.total_seconds() >= limit
                c.IdleCuller.cull_arbiter_hook = arbiter

            If the hook raises, the server is kept (and the error logged once).
            """
        ),
    ).tag(config=True)

    @default("log_level")
    def _log_level_default(self) -> int:
        return logging.INFO

    @default("log_datefmt")
    def _log_datefmt_default(self) -> str:
        return "%Y-%m-%d %H:%M:%S"

    @default("log_format")
    def _log_format_default(self) -> str:
        # JupyterHub's own log line format: operators' parsers already know it.
        return (
            "%(color)s[%(levelname)1.1s %(asctime)s.%(msecs).03d %(name)s "
            "%(module)s:%(lineno)d]%(end_color)s %(message)s"
        )

    _log_formatter_cls = LogFormatter

    @default("raise_config_file_errors")
    def _raise_config_file_errors_default(self) -> bool:
        # A broken config file must stop us with its error, not be skipped with a warning.
        return True

    @validate("timeout", "cull_every", "max_age", "api_page_size", "concurrency")
    def _check_compat_range(self, proposal: Any) -> Any:
        return _in_range(proposal)


_COMPAT_OPTIONS = [
    "url",
    "timeout",
    "cull-every",
    "max-age",
    "cull-users",
    "cull-admin-users",
    "remove-named-servers",
    "cull-default-servers",
    "cull-named-servers",
    "concurrency",
    "api-page-size",
    "ssl-enabled",
    "internal-certs-location",
]
_BOOL_OPTIONS = [
    "cull-users",
    "cull-admin-users",
    "remove-named-servers",
    "cull-default-servers",
    "cull-named-servers",
    "ssl-enabled",
]


class HubCull(IdleCuller):
    """hubcull: stop idle JupyterHub servers (and users), a drop-in for jupyterhub-idle-culler."""

    name = "hubcull"
    version = __version__
    _pages_on = False  # the page behind the Hub's login is served
    _engine: Engine | None = None

    def _reconsider(self, user: str, server: str) -> None:
        """A keep changed: have the engine look at the server again now."""
        if self._engine is not None:
            self._engine.reconsider(user, server)

    description = _help(
        """
        Stop idle single-user servers (and, with --cull-users, idle users) through the
        JupyterHub REST API. Run it as a Hub-managed service, or standalone with a token.
        Exit codes: 0 done, 1 a pass failed, 2 bad configuration or credentials.
        """
    )
    examples = _help(
        """
        hubcull --timeout=3600 --cull-every=600          # long-running, like the incumbent
        hubcull --timeout=3600 --dry-run                 # what would be culled right now
        hubcull --once --timeout=3600 --cull-users       # one pass, for a cron job
        hubcull demo                                     # a local demo Hub, culled live
        """
    )

    api_token_file = Unicode(
        "",
        help=_help(
            """
            Read the API token from this file instead of $JUPYTERHUB_API_TOKEN (for
            Kubernetes secrets). The file is read again when it changes.
            """
        ),
    ).tag(config=True)

    rules = List(
        Dict(),
        help=_help(
            """
            Culling rules per profile, group, user and server: a list of dicts; the first
            rule whose keys all match a server decides it, and the flags (--timeout,
            --max-age, --remove-named-servers, --cull-default-servers, ...) form the rule
            named "default" that applies when none matches. For example:

                c.HubCull.rules = [
                    {"name": "staff", "groups": ["staff"], "cull": False},
                    {"name": "gpu", "profile": "gpu*", "timeout": 1800, "max_age": 28800},
                    {"name": "named", "named": True, "timeout": 7200, "remove_named": True},
                    {"name": "guests", "users": ["guest-*"], "timeout": 900,
                     "user_timeout": 86400},
                ]

            Match keys (all given must match): users (globs on the user name), groups
            (the user is in any; needs read:users:groups), admin (true/false), server
            (glob on the server name, "" is the default server), named (true: named
            servers, false: the default server), profile (glob on
            user_options["profile"], KubeSpawner's profile_list slug), user_options
            (option name -> glob on its value). Settings (left out: from the flags):
            timeout, max_age (0: off), cull (false: never culled), remove_named,
            user_timeout. A rule with only user keys (users, groups, admin) also decides
            its users' deletion with --cull-users: its user_timeout, or with cull false
            an exemption. `hubcull explain` shows which rule applies to each server.
            """
        ),
    ).tag(config=True)

    user_timeout = Int(
        0,
        help=_help(
            """
            With cull_users: how long, in seconds, a user must be inactive before they
            are deleted. 0: the timeout. Rules with only user keys may set their own
            (user_timeout).
            """
        ),
    ).tag(config=True)

    once = Bool(
        False,
        help="Run one complete pass, then exit: 0 when it succeeded, 1 when it failed.",
    ).tag(config=True)

    dry_run = Bool(
        False,
        help=_help(
            """
            Decide everything, stop nothing: print each server (and user) that would be
            culled, with the reason, then exit like --once.
            """
        ),
    ).tag(config=True)

    deadline_checks = CaselessStrEnum(
        [m.value for m in DeadlineMode],
        default_value="always",
        help=_help(
            """
            Between full passes, hubcull wakes at each running server's deadline, re-reads
            that user (activity may have moved) and stops the server if it is still due.
            always: every deadline, one small Hub request per server that becomes due
            (stops within a second of the deadline). budget: never more Hub reads than a
            culler that lists every user every cull_every at the same page size
            (jupyterhub-idle-culler); hubcull then asks for pages of 200 (unless
            --api-page-size is set) and spends what that saves on deadline checks,
            batching them when many fall due. off: no deadline checks; servers wait for
            the next full pass.
            """
        ),
    ).tag(config=True)

    stop_wait = Float(
        60.0,
        help=_help(
            """
            How long, in seconds, to follow up a stop the Hub answered 202 (still stopping)
            before leaving it to the next pass. A user is deleted only after all their
            servers are confirmed stopped.
            """
        ),
    ).tag(config=True)

    request_timeout = Float(
        60.0,
        help=_help(
            """
            Timeout, in seconds, of each request to the Hub.
            Default: $JUPYTERHUB_REQUEST_TIMEOUT, else 60.
            """
        ),
    ).tag(config=True)

    retries = Int(
        3,
        help=_help(
            """
            How many times a failed request to the Hub is retried: connection errors,
            timeouts, 5xx and 429 (honouring Retry-After), with exponential backoff and
            jitter. Other errors are not retried.
            """
        ),
    ).tag(config=True)

    check_kernels = Bool(
        False,
        help=_help(
            """
            Before culling a server the Hub finds idle, ask the server itself (through
            the proxy, with this service's token; needs the access:servers scope): a busy
            kernel, or any activity the Hub has not seen yet (kernel messages, terminals,
            API calls), keeps it alive. Only servers the Hub finds due are asked, never
            the whole fleet, and asking never counts as activity. A server that cannot
            be asked is judged on the Hub's view, with one warning.
            """
        ),
    ).tag(config=True)

    busy_timeout = Int(
        86400,
        help=_help(
            """
            With check_kernels: the longest, in seconds, a busy kernel with no other
            activity keeps a server alive, so a runaway loop cannot hold a GPU forever.
            0: no limit. max_age still applies on top.
            """
        ),
    ).tag(config=True)

    probe_timeout = Float(
        10.0,
        help="With check_kernels: timeout, in seconds, of each request to a server.",
    ).tag(config=True)

    proxy_url = Unicode(
        "",
        help=_help(
            """
            With check_kernels: the proxy's URL, through which single-user servers are
            reached (e.g. http://proxy-public in zero-to-jupyterhub, or the Hub's public
            URL). Default: each server's full_url, known when JupyterHub.public_url is set.
            """
        ),
    ).tag(config=True)

    cpu_threshold = Float(
        0.0,
        help=_help(
            """
            With check_kernels and the jupyter-resource-usage extension in the servers
            (with CPU tracking on): CPU use, in percent, at or above which a server counts
            as in use. 0: off.
            """
        ),
    ).tag(config=True)

    # --- seeing what hubcull does: the web server, metrics, audit -------------------

    web_url = Unicode(
        help=_help(
            """
            Where hubcull's web server listens (health, Prometheus metrics, and the page
            behind the Hub's login), e.g. http://0.0.0.0:10101. Default:
            $JUPYTERHUB_SERVICE_URL, which the Hub sets for a managed service declared
            with a "url"; without either, no port is opened. Only long-running hubcull
            serves (not --once, --dry-run or explain).
            """
        ),
    ).tag(config=True)

    @default("web_url")
    def _web_url_default(self) -> str:
        return os.environ.get("JUPYTERHUB_SERVICE_URL", "")

    web_ip = Unicode(
        "",
        help=_help(
            """
            The address the web server binds. Default: the host of the web URL when it
            is an IP address or localhost, else every interface (a name such as
            http://hub:10101 on zero-to-jupyterhub is reached through the cluster).
            """
        ),
    ).tag(config=True)

    web_prefix = Unicode(
        help=_help(
            """
            The URL path the web server serves under. Default:
            $JUPYTERHUB_SERVICE_PREFIX (/services/<name>/ for a managed service), else /.
            """
        ),
    ).tag(config=True)

    @default("web_prefix")
    def _web_prefix_default(self) -> str:
        return os.environ.get("JUPYTERHUB_SERVICE_PREFIX", "/")

    service_name = Unicode(
        help=_help(
            """
            The name this service has in the Hub's config: who may see its pages and
            metrics (access:services!service=<name>). Default: $JUPYTERHUB_SERVICE_NAME,
            else hubcull.
            """
        ),
    ).tag(config=True)

    @default("service_name")
    def _service_name_default(self) -> str:
        return os.environ.get("JUPYTERHUB_SERVICE_NAME", "hubcull")

    authenticate_prometheus = Bool(
        True,
        help=_help(
            """
            Whether <prefix>metrics asks for a Hub API token allowed to access this
            service (as the Hub's own /hub/metrics asks for read:metrics). False: the
            metrics are open to anyone who reaches the port.
            """
        ),
    ).tag(config=True)

    unhealthy_after = Int(
        0,
        help=_help(
            """
            <prefix>health answers 503 once no pass has succeeded for this many
            seconds. 0: three times cull_every.
            """
        ),
    ).tag(config=True)

    admin_groups = List(
        Unicode(),
        help=_help(
            """
            Members of these Hub groups see the admin page (every server, the recent
            culls, the rules, health), as Hub admins do.
            """
        ),
    ).tag(config=True)

    admin_scope = Unicode(
        "custom:hubcull:admin",
        help=_help(
            """
            Holders of this scope see the admin page, as Hub admins do. Define it with
            c.JupyterHub.custom_scopes, grant it with a role, and list it in the
            service's oauth_client_allowed_scopes (see the README). Empty: off.
            """
        ),
    ).tag(config=True)

    cookie_secret_file = Unicode(
        "hubcull_cookie_secret",
        help=_help(
            """
            The file holding the secret that signs login cookies (created, 0600, on
            first use), so that users stay logged in across restarts.
            """
        ),
    ).tag(config=True)

    audit_log = Unicode(
        "",
        help=_help(
            """
            Append one JSON line per cull, user deletion and lost stop to this file:
            time, user, server, action, rule, reason, last activity and who reported it,
            deadline, the Hub's answer, hubcull's version, dry run. Reopened when
            logrotate moves it.
            """
        ),
    ).tag(config=True)

    log_style = CaselessStrEnum(
        ["text", "json"],
        default_value="text",
        help=_help(
            """
            text: the Hub's own log format. json: one JSON object per line (time, level,
            logger, message), for Loki and ELK.
            """
        ),
    ).tag(config=True)

    # --- warning people, and letting them keep their servers -------------------------

    warn_before = Int(
        0,
        help=_help(
            """
            Warn a server's user this many seconds before it is culled, through the
            notifiers (--notify-webhook, --notify-command), on time: the warning has a
            deadline of its own, like the cull. Once per idle spell (new activity re-arms
            it), never twice because hubcull restarted. 0: no warnings. Also a rule
            setting (warn_before).
            """
        ),
    ).tag(config=True)

    min_warning = Int(
        60,
        help=_help(
            """
            With warnings on: a server is never culled sooner than this many seconds
            after its warning, even one first seen closer to its deadline than
            warn_before (hubcull just started, a rule changed). People always get their
            warning.
            """
        ),
    ).tag(config=True)

    max_keep = Int(
        0,
        help=_help(
            """
            The longest, in seconds, a user may keep a server from the moment they ask
            (on hubcull's page, or POST <prefix>api/keep). A kept server is not culled
            for idleness until the keep ends; max_age still applies. 0: off. Also a rule
            setting (max_keep).
            """
        ),
    ).tag(config=True)

    state_file = Unicode(
        "hubcull-state.sqlite",
        help=_help(
            """
            The SQLite file that remembers warnings sent and keeps across restarts (in
            the working folder by default). A lost or corrupt file is logged and started
            anew; it never stops culling. Empty: remember in memory only.
            """
        ),
    ).tag(config=True)

    notify_webhook = Unicode(
        "",
        help=_help(
            """
            POST a JSON message here to warn a user before a cull ({"event": "warning",
            "user", "server", "rule", "cull_at", "idle_seconds", "keep_url"}) and after
            it ({"event": "culled", ..., "reason"}). Retried in the background; never
            delays a cull. The URL may hold a secret: it is never logged whole.
            """
        ),
    ).tag(config=True)

    notify_command = Unicode(
        "",
        help=_help(
            """
            Run this command for each warning and cull, with the details in HUBCULL_*
            environment variables (HUBCULL_EVENT, HUBCULL_USER, HUBCULL_SERVER,
            HUBCULL_RULE, HUBCULL_CULL_AT, HUBCULL_KEEP_URL, ...) and the same JSON on its
            standard input. A non-zero exit is logged and retried; it never delays a cull.
            """
        ),
    ).tag(config=True)

    notify_secret_file = Unicode(
        "",
        help=_help(
            """
            A file holding a shared secret: webhooks then carry an X-Hubcull-Signature
            header, sha256=<HMAC-SHA256 of the body>, for receivers to check.
            """
        ),
    ).tag(config=True)

    public_url = Unicode(
        help=_help(
            """
            The public address of hubcull's page, for the keep_url of warnings. Default:
            $JUPYTERHUB_PUBLIC_URL (set for a managed service when the Hub's public_url
            is set), else the page's path (the web prefix).
            """
        ),
    ).tag(config=True)

    @default("public_url")
    def _public_url_default(self) -> str:
        return os.environ.get("JUPYTERHUB_PUBLIC_URL", "")

    @default("request_timeout")
    def _request_timeout_default(self) -> float:
        raw = os.environ.get("JUPYTERHUB_REQUEST_TIMEOUT")
        if raw:
            try:
                value = float(raw)
            except ValueError:
                raise TraitError(f"JUPYTERHUB_REQUEST_TIMEOUT is not a number: {raw!r}") from None
            if value > 0:
                return value
        return 60.0

    @validate(
        "retries",
        "busy_timeout",
        "cpu_threshold",
        "stop_wait",
        "request_timeout",
        "probe_timeout",
        "user_timeout",
        "unhealthy_after",
        "warn_before",
        "min_warning",
        "max_keep",
    )
    def _check_range(self, proposal: Any) -> Any:
        return _in_range(proposal)

    aliases = {
        **{opt: f"IdleCuller.{opt.replace('-', '_')}" for opt in _COMPAT_OPTIONS},
        "config": "IdleCuller.config_file",
        "api-token-file": "HubCull.api_token_file",
        "stop-wait": "HubCull.stop_wait",
        "request-timeout": "HubCull.request_timeout",
        "busy-timeout": "HubCull.busy_timeout",
        "retries": "HubCull.retries",
        "probe-timeout": "HubCull.probe_timeout",
        "proxy-url": "HubCull.proxy_url",
        "cpu-threshold": "HubCull.cpu_threshold",
        "web-url": "HubCull.web_url",
        "web-ip": "HubCull.web_ip",
        "web-prefix": "HubCull.web_prefix",
        "service-name": "HubCull.service_name",
        "authenticate-prometheus": "HubCull.authenticate_prometheus",
        "unhealthy-after": "HubCull.unhealthy_after",
        "admin-groups": "HubCull.admin_groups",
        "admin-scope": "HubCull.admin_scope",
        "cookie-secret-file": "HubCull.cookie_secret_file",
        "audit-log": "HubCull.audit_log",
        "log-format": "HubCull.log_style",
        "warn-before": "HubCull.warn_before",
        "min-warning": "HubCull.min_warning",
        "max-keep": "HubCull.max_keep",
        "state-file": "HubCull.state_file",
        "notify-webhook": "HubCull.notify_webhook",
        "notify-command": "HubCull.notify_command",
        "notify-secret-file": "HubCull.notify_secret_file",
        "public-url": "HubCull.public_url",
        "deadline-checks": "HubCull.deadline_checks",
        "user-timeout": "HubCull.user_timeout",
        "log-level": "Application.log_level",
    }
    # A flag and an alias of the same name: "--cull-users" alone means True,
    # "--cull-users=false" still works (deployments use both forms).
    flags = {
        **{
            opt: (
                {"IdleCuller": {opt.replace("-", "_"): True}},
                IdleCuller.class_traits()[opt.replace("-", "_")].help
                + f" Alone, --{opt} means True.",
            )
            for opt in _BOOL_OPTIONS
        },
        "generate-config": ({"IdleCuller": {"generate_config": True}}, "Print a full config file."),
        "once": ({"HubCull": {"once": True}}, "Run one pass, then exit."),
        "dry-run": ({"HubCull": {"dry_run": True}}, "Print what would be culled; stop nothing."),
        "check-kernels": (
            {"HubCull": {"check_kernels": True}},
            "Ask servers the Hub finds idle for their own view (busy kernels, terminals).",
        ),
        "debug": ({"Application": {"log_level": logging.DEBUG}}, "Log at DEBUG level."),
        "authenticate-prometheus": (
            {"HubCull": {"authenticate_prometheus": True}},
            "<prefix>metrics asks for a Hub API token (the default). Alone, means True.",
        ),
    }

    subcommands = {
        "demo": ("hubcull.demo.DemoApp", "Run a local demo JupyterHub and cull it live."),
        "explain": (
            "hubcull.app.ExplainApp",
            "Show every running server, the rule that applies and when it becomes due "
            "(takes the same options; changes nothing).",
        ),
    }

    def _create_loader(self, argv, aliases, flags, classes):  # type: ignore[no-untyped-def]
        return _OneLineArgParseLoader(
            argv, aliases, flags, classes=classes, log=self.log, subcommands=self.subcommands
        )

    # traitlets' own decorator logs and exits 1 on bad values; we want one line and exit 2.
    def parse_command_line(self, argv: Any = None) -> None:
        argv = list(sys.argv[1:] if argv is None else argv)
        if not (argv and argv[0] in self.subcommands):
            self._check_option_names(argv)
        try:
            Application.parse_command_line.__wrapped__(self, argv)  # type: ignore[attr-defined]
        except (ArgumentError, UsageError) as e:
            raise UsageError(self._explain_argparse(str(e))) from None
        if self.subapp is None and self.extra_args:
            raise UsageError(f"unexpected argument {self.extra_args[0]!r} (see hubcull --help)")

    def _check_option_names(self, argv: list[str]) -> None:
        """A mistyped option must fail, not be ignored: '--cull-user' would cull nobody's users."""
        known_classes = {c.__name__: c for c in type(self).mro() if isinstance(c, type)}
        for arg in argv:
            if arg == "--":
                break
            if not arg.startswith("--") or arg in ("--help", "--help-all", "--version"):
                continue
            name = arg[2:].split("=", 1)[0]
            if name in self.aliases or name in self.flags:
                continue
            cls_name, _, trait = name.partition(".")
            cls = known_classes.get(cls_name)
            if cls is not None and trait in cls.class_traits(config=True):
                continue
            raise UsageError(f"unknown option --{name} (see hubcull --help)")

    def _explain_argparse(self, message: str) -> str:
        m = re.match(r"argument --([\w.-]+): expected one argument", message)
        if m:
            dest = m.group(1)
            flag = next(
                (a for a, t in self.aliases.items() if t.split(".")[-1] == dest.split(".")[-1]),
                dest,
            )
            return f"--{flag} needs a value"
        return message

    def initialize(self, argv: Any = None) -> None:
        self.parse_command_line(argv)
        if self.subapp is not None:
            return
        if self.generate_config:
            return
        self._load_config_file_in_cwd()
        # The command line wins over config files.
        self.update_config(self.cli_config)
        self._setup_logging()
        # Invalid rules stop hubcull here, in one line, before anything is culled.
        self.ruleset = self.build_rules()

    def _load_config_file_in_cwd(self) -> None:
        explicit = any(
            "config_file" in section
            for name, section in self.cli_config.items()
            if name in ("IdleCuller", "HubCull")
        )
        candidates = [self.config_file]
        if not explicit and self.config_file == "hubcull_config.py":
            candidates.append("idle_culler_config.py")
        for path in candidates:
            # traitlets loads name.py and name.json together: either may be there.
            base, ext = os.path.splitext(path)
            twins = [base + ".py", base + ".json"] if ext in (".py", ".json") else [path]
            if not any(os.path.isfile(p) for p in twins):
                if explicit:
                    raise UsageError(f"config file not found: {path}")
                continue
            try:
                # undecorated: traitlets would log and exit 1 on a bad value
                Application.load_config_file.__wrapped__(self, path)  # type: ignore[attr-defined]
            except ConfigFileNotFound:
                raise UsageError(f"config file not found: {path}") from None
            except SyntaxError as e:
                raise UsageError(f"config file {path}, line {e.lineno}: {e.msg}") from None
            except (TraitError, UsageError):
                raise
            except Exception as e:
                line = next(
                    (
                        f.lineno
                        for f in traceback.extract_tb(e.__traceback__)
                        if os.path.basename(f.filename) == os.path.basename(path)
                    ),
                    None,
                )
                where = f"{path}, line {line}" if line else path
                raise UsageError(f"config file {where}: {type(e).__name__}: {e}") from None
            self.log.debug("Loaded config file %s", path)
            return

    def _setup_logging(self) -> None:
        self._redactor = RedactSecrets()
        self.log.name = "hubcull"
        self.log.propagate = False
        for handler in self.log.handlers:
            handler.addFilter(self._redactor)
            if self.log_style == "json":
                handler.setFormatter(JsonFormatter())
        # Libraries' warnings (and tornado's access log of the web server) go through the
        # same redacting handler, not Python's last resort.
        levels = {
            "asyncio": logging.WARNING,
            "aiohttp": logging.WARNING,
            "tornado.access": self.log.level,
            "tornado.application": self.log.level,
        }
        for name, level in levels.items():
            lib = logging.getLogger(name)
            lib.setLevel(level)
            for handler in self.log.handlers:
                if handler not in lib.handlers:
                    lib.addHandler(handler)
            lib.propagate = False

    # --- running ---------------------------------------------------------------

    def culling_flags(self) -> Flags:
        """The flags as the rule named "default"."""
        return Flags(
            timeout=self.timeout,
            max_age=self.max_age,
            cull_users=self.cull_users,
            cull_admin_users=self.cull_admin_users,
            cull_default_servers=self.cull_default_servers,
            cull_named_servers=self.cull_named_servers,
            remove_named_servers=self.remove_named_servers,
            user_timeout=self.user_timeout or None,
            warn_before=self.warn_before,
            max_keep=self.max_keep,
            min_warning=self.min_warning,
        )

    def build_rules(self) -> RuleSet:
        try:
            return RuleSet(parse_rules(self.rules), self.culling_flags())
        except RuleError as e:
            raise UsageError(str(e)) from None

    def token_source(self) -> TokenSource:
        if self.api_token_file:
            return TokenSource(path=self.api_token_file, on_new_token=self._redactor.add)
        return TokenSource(os.environ.get("JUPYTERHUB_API_TOKEN"), on_new_token=self._redactor.add)

    def start(self) -> None:
        if self.subapp is not None:
            self.subapp.start()
            return
        if self.generate_config:
            print(self.generate_config_file())
            return
        code = asyncio.run(self.main())
        self.exit(code)

    async def main(self) -> int:
        try:
            token = self.token_source()
            ssl_context = (
                make_internal_ssl_context(self.internal_certs_location)
                if self.ssl_enabled
                else None
            )
        except HubError as e:
            self.log.critical("%s", e)
            return EXIT_CONFIG
        if self.concurrency == 0:
            self.log.warning(
                "--concurrency=0: no limit on concurrent Hub requests; a mass cull can overload "
                "the Hub"
            )
        bus = EventBus(self.log)
        try:
            audit = self._observers(bus)
            notifier = self._notifier(bus)
        except OSError as e:
            self.log.critical("cannot open the audit log %s: %s", self.audit_log, e.strerror)
            return EXIT_CONFIG
        # Stops (and page reads) in flight: adaptive between 1 and the concurrency
        # limit (see limits.py).
        gate = AdaptiveGate(
            AdaptiveLimit(cap=self.concurrency if self.concurrency > 0 else 50),
            on_change=lambda c: bus.emit(StopLimitChanged(utcnow(), c.before, c.after, c.reading)),
        )
        self.metrics.stop_limit.set(gate.limit.limit)  # until its first change
        hub = HubClient(
            self.url,
            token,
            concurrency=self.concurrency,
            stop_gate=gate,
            request_timeout=self.request_timeout,
            ssl_context=ssl_context,
            retry=RetryPolicy(retries=self.retries),
            emit=bus.emit,
        )
        self._warn_plain_http(hub)
        one_pass = self.once or self.dry_run
        try:
            # Before the start-up checks: the Hub checks that a managed service with a
            # url answers there, and a probe of /health should not fail while we start.
            server = None if one_pass else self._start_web(hub, token, bus.emit)
        except WebError as e:
            self.log.critical("%s", e)
            return EXIT_CONFIG
        if notifier is not None:
            notifier.start()
        try:
            async with hub:
                code = await self._run(hub, bus)
                if notifier is not None and one_pass:
                    await notifier.drain(NOTIFY_DRAIN)  # a one-pass run's notices, sent
                return code
        finally:
            if server is not None:
                server.stop()
            if notifier is not None:
                await notifier.close()
            if audit is not None:
                audit.close()
            self.store.close()

    def _observers(self, bus: EventBus) -> AuditLog | None:
        """Attach what watches the engine: log lines, the status view and what reads it."""
        self.status = StatusView()
        self.history = RecentCulls()
        # Warnings sent and keeps, across restarts: a bad file is logged and started anew.
        self.store = StateStore(self.state_file or None, self.log)
        self.metrics = Metrics(
            self.status,
            [r.name for r in self.ruleset.rules] + ["default"],
            kept=lambda: len(self.store.keeps),
        )
        bus.attach(LogLines(self.log))
        bus.attach(self.status)
        bus.attach(self.store)
        bus.attach(self.history)
        bus.attach(self.metrics)
        for printer in self._printers(self.status):
            bus.attach(printer)
        audit = AuditLog(self.audit_log) if self.audit_log else None
        if audit is not None:
            bus.attach(audit)
        return audit

    def _notifier(self, bus: EventBus) -> Notifier | None:
        """The warnings' and culls' notifiers (--notify-webhook, --notify-command)."""
        targets: list[Any] = []
        if self.notify_webhook:
            self._redactor.add(self.notify_webhook)  # chat webhooks hold their secret
            secret = None
            if self.notify_secret_file:
                try:
                    with open(self.notify_secret_file, "rb") as f:
                        secret = f.read().strip()
                except OSError as e:
                    raise UsageError(
                        f"cannot read --notify-secret-file {self.notify_secret_file}: {e.strerror}"
                    ) from None
                if not secret:
                    raise UsageError(f"--notify-secret-file {self.notify_secret_file} is empty")
                self._redactor.add(secret.decode(errors="replace"))
            targets.append(Webhook(self.notify_webhook, secret))
        if self.notify_command:
            targets.append(Command(self.notify_command))
        if not targets:
            if self.warn_before or any(r.settings.warn_before for r in self.ruleset.rules):
                self.log.warning(
                    "Warnings are on (warn_before) but no notifier is set "
                    "(--notify-webhook, --notify-command): nobody will hear of them"
                )
            return None
        notifier = Notifier(targets, bus.emit, utcnow, self._keep_url())
        bus.attach(notifier)
        return notifier

    def _keep_url(self) -> str:
        """Where a warning sends its user to keep the server: the page."""
        if self.public_url:
            return self.public_url
        prefix = self.web_prefix.strip("/")
        return f"/{prefix}/" if prefix else "/"

    async def _run(self, hub: HubClient, bus: EventBus) -> int:
        try:
            connection = await preflight(
                hub, self.ruleset, check_kernels=self.check_kernels, pages=self._pages_on
            )
        except StartupError as e:
            first, *rest = str(e).splitlines()
            self.log.critical("%s", first)
            if rest:
                print("\n".join(rest), file=sys.stderr)
            return EXIT_CONFIG
        self._log_connection(connection)
        self._log_rules()
        engine = Engine(
            hub,
            self.ruleset,
            bus.emit,
            EngineOptions(
                dry_run=self.dry_run,
                page_size=self.api_page_size,
                workers=self.concurrency or 50,
                stop_wait=self.stop_wait,
                verify_stops=self.once,
                deadline_checks=DeadlineMode(self.deadline_checks),
            ),
            arbiter=self.cull_arbiter_hook,
            prober=self._prober(hub),
            probe_rules=ProbeRules(
                busy_timeout=self.busy_timeout,
                cpu_threshold=self.cpu_threshold or None,
            ),
            marks=self.store,
        )
        self._engine = engine
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig, engine)
        if self.once or self.dry_run:
            report = await self._bounded(engine.run_pass(), engine)
            if engine.stopping.is_set():
                return EXIT_OK
            return EXIT_OK if report is not None and report.ok else EXIT_PASS_FAILED
        return await self._run_forever(engine)

    @property
    def every(self) -> int:
        """Seconds between full passes."""
        return self.cull_every or max(1, self.timeout // 2)

    def _start_web(self, hub: HubClient, token: TokenSource, bus_emit: Any) -> Any:
        """Serve health, metrics and the pages, when a web URL is configured."""
        self._pages_on = False
        if not self.web_url:
            return None
        try:
            from jupyterhub.services.auth import HubAuth, HubOAuth
        except ImportError:
            raise WebError(
                "the web server needs jupyterhub's HubAuth: pip install jupyterhub (it is "
                "there when hubcull runs in the Hub's image)"
            ) from None

        from .web import WebContext, load_cookie_secret, make_app, start
        from .web.auth import Directory
        from .web.keeps import KeepDesk

        access = {f"access:services!service={self.service_name}"}
        common: dict[str, Any] = dict(
            api_url=hub.api_url, api_token=token.get(), cache_max_age=60, base_url=self.web_prefix
        )
        if os.environ.get("JUPYTERHUB_OAUTH_ACCESS_SCOPES"):
            access = set(json.loads(os.environ["JUPYTERHUB_OAUTH_ACCESS_SCOPES"]))
        oauth = None
        if os.environ.get("JUPYTERHUB_CLIENT_ID"):
            oauth = HubOAuth(access_scopes=access, **common)
            self._pages_on = True
        else:
            self.log.warning(
                "No page: the Hub gave no OAuth client ($JUPYTERHUB_CLIENT_ID). Give this "
                "service a url in c.JupyterHub.services (the Hub then makes the client), or, "
                "standalone, oauth_client_id and oauth_redirect_uri, and set "
                "JUPYTERHUB_CLIENT_ID and JUPYTERHUB_SERVICE_PREFIX (see docs/deploy.md). "
                "Health and metrics are served."
            )
        context = WebContext(
            status=self.status,
            history=self.history,
            metrics=self.metrics,
            rules=self.ruleset,
            directory=Directory(hub.get_user, self.admin_groups, self.admin_scope),
            token_auth=HubAuth(access_scopes=access, **common),
            oauth=oauth,
            api_token=token.get,
            clock=utcnow,
            started=utcnow(),
            unhealthy_after=self.unhealthy_after or 3 * self.every,
            authenticate_prometheus=self.authenticate_prometheus,
            hub_url=os.environ.get("JUPYTERHUB_BASE_URL", "/").rstrip("/") + "/hub/",
            store=self.store,
            keeps=KeepDesk(
                hub.get_user, self.ruleset, self.store, bus_emit, utcnow, self._reconsider
            ),
        )
        app = make_app(context, self.web_prefix, load_cookie_secret(self.cookie_secret_file))
        server = start(app, self.web_url, self.web_ip)
        prefix = "/" + self.web_prefix.strip("/") + "/" if self.web_prefix.strip("/") else "/"
        self.log.info(
            "Serving %shealth, %smetrics%s at %s",
            prefix,
            prefix,
            f" and the page at {prefix}" if oauth is not None else "",
            self.web_url,
        )
        return server

    def _printers(self, status: StatusView) -> list[Any]:
        """What prints results on stdout: --dry-run's lines."""
        return [DryRunPrinter(status, self._emit)] if self.dry_run else []

    def _log_rules(self) -> None:
        if self.ruleset.rules:
            for line in self.ruleset.describe():
                self.log.info("%s", line)

    def _log_connection(self, c: Connection) -> None:
        if c.filtered_scopes:
            self.log.info(
                "Token scopes are filtered (%s): only those users are culled",
                ", ".join(c.filtered_scopes),
            )
        self.log.info(
            "Connected to JupyterHub %s at %s as %s '%s'",
            c.version,
            c.api_url,
            c.identity.kind,
            c.identity.name,
        )

    def _prober(self, hub: HubClient) -> Prober | None:
        if not self.check_kernels:
            return None

        async def fetch(url: str) -> tuple[int, bytes]:
            try:
                return await hub.probe_get(url, self.probe_timeout)
            except HubUnreachable as e:
                raise ProbeError(e.cause) from None

        return Prober(
            fetch, utcnow, proxy_url=self.proxy_url, resource_usage=bool(self.cpu_threshold)
        )

    def _emit(self, line: str) -> None:
        print(line, flush=True)

    def _warn_plain_http(self, hub: HubClient) -> None:
        if hub.api_url.startswith("http://") and not is_loopback(hub.hub_host):
            self.log.warning(
                "The Hub API URL %s is plain http to a non-loopback host: the API token "
                "crosses the network unencrypted",
                hub.api_url,
            )

    async def _run_forever(self, engine: Engine) -> int:
        every = self.every
        self.log.info(
            "Culling servers idle for %ss%s, a full pass every %ss",
            self.timeout,
            f" or older than {self.max_age}s" if self.max_age else "",
            every,
        )
        await self._bounded(engine.run_forever(every), engine)
        self.log.info("Stopped")
        return EXIT_OK

    async def _bounded(self, work: Any, engine: Engine) -> Any:
        """Run until done; after a stop signal, give what is under way SHUTDOWN_GRACE seconds."""
        task = asyncio.ensure_future(work)
        stop = asyncio.ensure_future(engine.stopping.wait())
        try:
            await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
            if not task.done():
                # New work stops at once (no new page, no new user); requests in flight
                # and the users being handled get a bounded time to finish.
                done, _ = await asyncio.wait({task}, timeout=SHUTDOWN_GRACE)
                if not done:
                    self.log.warning(
                        "Abandoning requests still in flight after %ss", SHUTDOWN_GRACE
                    )
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)
                    return None
            return task.result()
        finally:
            stop.cancel()

    def _on_signal(self, sig: signal.Signals, engine: Engine) -> None:
        if engine.stopping.is_set():
            return
        self.log.info("Received %s, finishing up", signal.Signals(sig).name)
        engine.stopping.set()


class ExplainApp(HubCull):
    """hubcull explain: which rule applies to each running server, and when it becomes due."""

    name = "hubcull-explain"
    description = _help(
        """
        Decide every running server (and, with --cull-users, user) as a pass would, stop
        nothing, and print one row per server, soonest due first: user, server, profile,
        the rule that applies, idle for, running for, due in, verdict. Takes the same
        options and config file as a pass. What it shows as due is what --once culls.
        """
    )
    examples = _help(
        """
        hubcull explain --timeout=3600                   # a table, soonest due first
        hubcull explain --output=json | jq '.[] | select(.verdict != "keep")'
        """
    )
    output = CaselessStrEnum(
        ["table", "json"],
        default_value="table",
        help="table (for people) or json (an array of objects, one per row, on stdout).",
    ).tag(config=True)
    aliases = {**HubCull.aliases, "output": "ExplainApp.output"}
    subcommands: dict[str, Any] = {}

    def initialize(self, argv: Any = None) -> None:
        super().initialize(argv)
        # One pass that decides everything and stops nothing.
        self.dry_run = True
        self.once = True

    def _printers(self, status: StatusView) -> list[Any]:
        return [ExplainPrinter(status, self.output, self._emit)]


def is_loopback(host: str) -> bool:
    """Whether a host name or address stays on this machine (for the plain-http warning)."""
    if host in ("localhost", "localhost.localdomain") or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


_TRAIT_MESSAGE = re.compile(
    r"The '(\w+)' trait of an? \w+ instance (?:expected|must be) (.*)", re.S
)


def _print_error(message: str) -> None:
    """One line on stderr, in the option's own terms where traitlets spoke of traits."""
    m = _TRAIT_MESSAGE.match(message)
    if m:
        message = f"--{m.group(1).replace('_', '-')}: expected {m.group(2)}"
    first = message.strip().splitlines()[0] if message.strip() else "invalid configuration"
    print(f"hubcull: error: {first}", file=sys.stderr)


def main(argv: list[str] | None = None) -> None:
    app = HubCull.instance()
    try:
        app.initialize(argv)
    except (UsageError, TraitError) as e:
        _print_error(str(e))
        sys.exit(EXIT_CONFIG)
    try:
        app.start()
    except KeyboardInterrupt:
        sys.exit(130)
    except (UsageError, TraitError) as e:
        _print_error(str(e))
        sys.exit(EXIT_CONFIG)


__all__ = ["HubCull", "IdleCuller", "PassReport", "main"]

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
    Float,
    Int,
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
from .observe.dryrun import DryRunPrinter
from .observe.logs import LogLines
from .observe.status import StatusView
from .policy import MAX_SECONDS, ProbeRules, Rules
from .preflight import Connection, StartupError, preflight

DEFAULT_API_URL = "http://127.0.0.1:8081/hub/api"
EXIT_OK, EXIT_PASS_FAILED, EXIT_CONFIG = 0, 1, 2
# After SIGTERM, how long requests in flight may take before they are abandoned:
# well inside the 10 s a Hub (or Kubernetes) gives a service before killing it.
SHUTDOWN_GRACE = 8.0


# What each numeric option accepts: (lowest, lowest allowed itself?, highest, in words).
_RANGES: dict[str, tuple[float, bool, float, str]] = {
    "timeout": (0, False, MAX_SECONDS, "a positive number of seconds"),
    "cull_every": (0, True, MAX_SECONDS, "0 (half the timeout) or a number of seconds"),
    "max_age": (0, True, MAX_SECONDS, "0 (off) or a number of seconds"),
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
        "retries", "busy_timeout", "cpu_threshold", "stop_wait", "request_timeout", "probe_timeout"
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
        "deadline-checks": "HubCull.deadline_checks",
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
    }

    subcommands = {
        "demo": ("hubcull.demo.DemoApp", "Run a local demo JupyterHub and cull it live."),
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
        known_classes = {c.__name__: c for c in (HubCull, IdleCuller, Application)}
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
            if not os.path.isfile(path):
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
        # Libraries' warnings go through the same (redacting) handler, not Python's last resort.
        for name in ("asyncio", "aiohttp"):
            lib = logging.getLogger(name)
            lib.setLevel(logging.WARNING)
            for handler in self.log.handlers:
                if handler not in lib.handlers:
                    lib.addHandler(handler)
            lib.propagate = False

    # --- running ---------------------------------------------------------------

    def rules(self) -> Rules:
        return Rules(
            timeout=self.timeout,
            max_age=self.max_age,
            cull_users=self.cull_users,
            cull_admin_users=self.cull_admin_users,
            cull_default_servers=self.cull_default_servers,
            cull_named_servers=self.cull_named_servers,
            remove_named_servers=self.remove_named_servers,
        )

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
        self.status = StatusView()
        bus.attach(LogLines(self.log))
        bus.attach(self.status)
        if self.dry_run:
            bus.attach(DryRunPrinter(self.status, self._emit))
        # Stops (and page reads) in flight: adaptive between 1 and the concurrency
        # limit (see limits.py).
        gate = AdaptiveGate(
            AdaptiveLimit(cap=self.concurrency if self.concurrency > 0 else 50),
            on_change=lambda c: bus.emit(StopLimitChanged(utcnow(), c.before, c.after, c.reading)),
        )
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
        async with hub:
            try:
                connection = await preflight(hub, self.rules(), check_kernels=self.check_kernels)
            except StartupError as e:
                first, *rest = str(e).splitlines()
                self.log.critical("%s", first)
                if rest:
                    print("\n".join(rest), file=sys.stderr)
                return EXIT_CONFIG
            self._log_connection(connection)
            engine = Engine(
                hub,
                self.rules(),
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
            )
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self._on_signal, sig, engine)
            if self.once or self.dry_run:
                report = await self._bounded(engine.run_pass(), engine)
                if engine.stopping.is_set():
                    return EXIT_OK
                return EXIT_OK if report is not None and report.ok else EXIT_PASS_FAILED
            return await self._run_forever(engine)

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
        if not self.proxy_url:
            self.log.warning(
                "--check-kernels without --proxy-url: servers are reached at their full_url, "
                "which the Hub knows only when JupyterHub.public_url is set"
            )

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
        every = self.cull_every or max(1, self.timeout // 2)
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

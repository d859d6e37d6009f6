"""The Hub client's pure logic: backoff, Retry-After, scopes, loopback, token files, redaction.

These are the pieces that decide how hard hubcull leans on a struggling Hub, whether it
starts at all (scopes), whether it warns about a token crossing the network, and whether
a secret can reach a log line. None of them needs a network to be tested.
"""

from __future__ import annotations

import email.utils
import logging
import os
import random
import sys
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from hubcull.app import HubCull, is_loopback
from hubcull.hub import HubError, RetryPolicy, TokenSource, _retry_after
from hubcull.logsafe import REDACTED, RedactSecrets
from hubcull.preflight import scope_granted

SECRET = "0123456789abcdef0123456789abcdef"
OTHER_SECRET = "fedcba9876543210fedcba9876543210"


class _MaxRandom(random.Random):
    """Always draws the top of the range: exposes the exact jitter bound."""

    def uniform(self, a: float, b: float) -> float:
        return b


# --- RetryPolicy.delay --------------------------------------------------------------


@pytest.mark.parametrize("attempt", range(8))
def test_delay_is_full_jitter_within_the_exponential_bound(attempt: int) -> None:
    """Every delay lies in [0, min(cap, base * 2**attempt)]: never above, never negative."""
    policy = RetryPolicy(base=0.5, cap=8.0)
    bound = min(policy.cap, policy.base * 2**attempt)
    rng = random.Random(attempt)
    delays = [policy.delay(attempt, rng) for _ in range(500)]
    assert all(0.0 <= d <= bound for d in delays)
    # Full jitter spreads over the whole range (clients out of lockstep), not a fixed step.
    assert min(delays) < 0.1 * bound
    assert max(delays) > 0.9 * bound


def test_delay_bound_doubles_then_stops_at_the_cap() -> None:
    policy = RetryPolicy(base=0.5, cap=8.0)
    tops = [policy.delay(a, _MaxRandom()) for a in range(8)]
    assert tops == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0, 8.0]


def test_delay_honours_retry_after_even_above_the_cap() -> None:
    """A Hub that asks for 30 s gets 30 s, though the backoff cap is 8 s: no jitter on it."""
    policy = RetryPolicy(cap=8.0, max_retry_after=120.0)
    rng = random.Random(0)
    assert policy.delay(0, rng, retry_after=30.0) == 30.0
    assert policy.delay(5, rng, retry_after=0.0) == 0.0


def test_delay_caps_an_absurd_retry_after() -> None:
    """A Hub asking for a day must not park the culler for a day."""
    policy = RetryPolicy(max_retry_after=120.0)
    rng = random.Random(0)
    assert policy.delay(0, rng, retry_after=86_400.0) == 120.0
    assert policy.delay(0, rng, retry_after=float("inf")) == 120.0
    assert policy.delay(0, rng, retry_after=-5.0) == 0.0


def test_delay_stays_at_the_cap_for_any_attempt() -> None:
    policy = RetryPolicy(retries=2000)
    assert policy.delay(1100, _MaxRandom()) == policy.cap


# --- _retry_after --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "seconds"),
    [("120", 120.0), ("0", 0.0), (" 7 ", 7.0), ("3600", 3600.0)],
)
def test_retry_after_delta_seconds(header: str, seconds: float) -> None:
    assert _retry_after(header) == seconds


def test_retry_after_http_date_in_the_future() -> None:
    when = datetime.now(timezone.utc) + timedelta(seconds=90)
    value = _retry_after(email.utils.format_datetime(when, usegmt=True))
    assert value is not None
    assert 80.0 <= value <= 91.0  # the header has whole seconds


def test_retry_after_http_date_in_the_past_means_now() -> None:
    when = datetime.now(timezone.utc) - timedelta(hours=1)
    assert _retry_after(email.utils.format_datetime(when, usegmt=True)) == 0.0
    assert _retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0


@pytest.mark.parametrize(
    "header", [None, "", "   ", "soon", "-5", "1.5", "12s", "Thu, 99 Foo 2015", "0x10"]
)
def test_retry_after_garbage_is_ignored(header: str | None) -> None:
    """A header we cannot read falls back to our own backoff (None), never an exception."""
    assert _retry_after(header) is None


@pytest.mark.parametrize("header", ["²", "1²", "①"])
def test_retry_after_unicode_digits_are_ignored_not_raised(header: str) -> None:
    assert _retry_after(header) is None


# --- scope_granted -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("needed", "scopes", "granted"),
    [
        ("read:servers", {"read:servers"}, True),
        ("read:servers", {"list:users", "read:servers", "delete:servers"}, True),
        # Filtered scopes grant the scope for part of the Hub: enough to start.
        ("read:servers", {"read:servers!group=staff"}, True),
        ("list:users", {"list:users!user=alice", "list:users!group=x"}, True),
        ("delete:servers", {"delete:servers!server=alice/gpu"}, True),
        # Not a prefix match: a longer scope name is another scope.
        ("read:servers", {"read:servers_extra"}, False),
        ("read:servers", {"read:servers_extra!group=staff"}, False),
        ("read:users", {"read:users:activity", "read:users:name"}, False),
        ("read:servers", {"read:server"}, False),
        ("read:servers", {"read"}, False),
        ("delete:servers", set(), False),
        ("delete:servers", {"read:servers"}, False),
    ],
)
def test_scope_granted(needed: str, scopes: set[str], granted: bool) -> None:
    assert scope_granted(needed, frozenset(scopes)) is granted


def test_a_users_own_self_scopes_do_not_count() -> None:
    scopes = frozenset({"list:users", "read:users:groups!user=token-owner"})
    assert not scope_granted("read:users:groups", scopes, owner="token-owner")
    assert scope_granted("read:users:groups", scopes | {"read:users:groups!group=a"}, "token-owner")


# --- is_loopback ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("hub.localhost", True),
        ("10.0.0.1", False),
        ("192.168.1.5", False),
        ("::2", False),
        ("example.org", False),
        ("localhost.example.org", False),
        ("127.0.0.1.example.org", False),
        ("hub.invalid", False),
        ("", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    """Decides the plain-http warning: only hosts that cannot leave this machine are quiet."""
    assert is_loopback(host) is loopback


# --- TokenSource -----------------------------------------------------------------------


def _bump_mtime(path: Path, seconds: float = 10.0) -> None:
    """Move the mtime on explicitly: a rewrite within the clock tick keeps the same mtime."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + int(seconds * 1e9)))


def test_token_from_a_value_is_stripped() -> None:
    source = TokenSource("  abcd1234\n")
    assert source.present
    assert source.get() == "abcd1234"


def test_no_token_is_a_clear_error() -> None:
    source = TokenSource(None)
    assert not source.present
    with pytest.raises(HubError, match="no API token"):
        source.get()


def test_token_file_is_read_and_stripped(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text(f"{SECRET}\n")
    source = TokenSource(path=str(path))
    assert source.present
    assert source.get() == SECRET


def test_token_file_is_read_again_when_it_changes(tmp_path: Path) -> None:
    """A rotated Kubernetes secret takes effect without a restart."""
    path = tmp_path / "token"
    path.write_text(SECRET)
    source = TokenSource(path=str(path))
    assert source.get() == SECRET
    path.write_text(OTHER_SECRET + "\n")
    _bump_mtime(path)
    assert source.get() == OTHER_SECRET
    assert source.get() == OTHER_SECRET


def test_token_file_replaced_atomically_is_read_again(tmp_path: Path) -> None:
    """Rotation by rename (what kubelet does with its symlink swap) is seen too."""
    path = tmp_path / "token"
    path.write_text(SECRET)
    source = TokenSource(path=str(path))
    new = tmp_path / "token.new"
    new.write_text(OTHER_SECRET)
    _bump_mtime(new)
    os.replace(new, path)
    assert source.get() == OTHER_SECRET


def test_token_file_is_not_reread_while_unchanged(tmp_path: Path) -> None:
    """The file is read on change only, not on every request (mtime is the signal)."""
    path = tmp_path / "token"
    path.write_text(SECRET)
    source = TokenSource(path=str(path))
    st = path.stat()
    path.write_text(OTHER_SECRET)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert source.get() == SECRET


def test_missing_token_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "nope"
    with pytest.raises(HubError) as err:
        TokenSource(path=str(path))
    assert str(err.value) == f"cannot read the API token file {path}: No such file or directory"


@pytest.mark.parametrize("content", ["", "\n", "   \n\t"])
def test_empty_token_file_is_a_clear_error(tmp_path: Path, content: str) -> None:
    path = tmp_path / "token"
    path.write_text(content)
    with pytest.raises(HubError) as err:
        TokenSource(path=str(path))
    assert str(err.value) == f"the API token file {path} is empty"


def test_token_file_emptied_mid_rotation_fails_then_recovers(tmp_path: Path) -> None:
    """A file caught half-written is an error for that request, and read again next time."""
    path = tmp_path / "token"
    path.write_text(SECRET)
    source = TokenSource(path=str(path))
    path.write_text("")
    _bump_mtime(path)
    with pytest.raises(HubError, match="is empty"):
        source.get()
    path.write_text(OTHER_SECRET)
    _bump_mtime(path, 20)
    assert source.get() == OTHER_SECRET


def test_token_file_deleted_keeps_the_last_token(tmp_path: Path) -> None:
    """A file briefly missing (a secret being swapped) does not stop the culler."""
    path = tmp_path / "token"
    path.write_text(SECRET)
    source = TokenSource(path=str(path))
    path.unlink()
    assert source.get() == SECRET


def test_unreadable_token_file_names_the_reason(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root reads any file")
    path = tmp_path / "token"
    path.write_text(SECRET)
    path.chmod(0)
    with pytest.raises(HubError, match="Permission denied"):
        TokenSource(path=str(path))


# --- RedactSecrets ------------------------------------------------------------------


def _record(
    msg: str, args: tuple[object, ...] = (), exc: BaseException | None = None
) -> logging.LogRecord:
    exc_info = None
    if exc is not None:
        try:
            raise exc
        except BaseException:
            exc_info = sys.exc_info()
    return logging.LogRecord("hubcull", logging.ERROR, __file__, 1, msg, args, exc_info)


def _redactor(*secrets: str) -> RedactSecrets:
    r = RedactSecrets()
    for s in secrets:
        r.add(s)
    return r


def test_redacts_a_secret_in_the_message() -> None:
    record = _record(f"Authorization: token {SECRET}")
    assert _redactor(SECRET).filter(record) is True  # scrubbed, never dropped
    assert record.getMessage() == f"Authorization: token {REDACTED}"


def test_redacts_a_secret_in_the_args() -> None:
    record = _record("headers %s, url %s", ({"Authorization": f"token {SECRET}"}, "/x"))
    _redactor(SECRET).filter(record)
    message = record.getMessage()
    assert SECRET not in message
    assert REDACTED in message and "/x" in message


def test_redacts_a_secret_in_exception_text() -> None:
    record = _record("request failed", exc=RuntimeError(f"bad header token {SECRET}"))
    _redactor(SECRET).filter(record)
    formatted = logging.Formatter("%(message)s").format(record)
    assert SECRET not in formatted
    assert f"bad header token {REDACTED}" in formatted
    assert "Traceback" in formatted  # the traceback itself is kept, only the secret goes


def test_redacts_every_registered_secret_and_stack_info() -> None:
    record = _record("%s and %s", (SECRET, OTHER_SECRET))
    record.stack_info = f"Stack (most recent call last):\n  token={OTHER_SECRET}"
    _redactor(SECRET, OTHER_SECRET).filter(record)
    assert record.getMessage() == f"{REDACTED} and {REDACTED}"
    assert OTHER_SECRET not in record.stack_info


def test_clean_records_are_untouched() -> None:
    record = _record("GET %s -> %s", ("/users", 200))
    _redactor(SECRET).filter(record)
    assert record.msg == "GET %s -> %s" and record.args == ("/users", 200)


def test_short_or_empty_secrets_are_not_registered() -> None:
    """Registering '' or 'ab' would redact every line into noise."""
    redactor = _redactor("", "ab")
    record = _record("a normal line about abstractions")
    redactor.filter(record)
    assert record.getMessage() == "a normal line about abstractions"


@pytest.fixture
def app_logging() -> Iterator[None]:
    """HubCull._setup_logging re-wires the asyncio/aiohttp loggers: put them back after."""
    saved: dict[str, tuple[int, list[logging.Handler], bool]] = {}
    for name in ("asyncio", "aiohttp"):
        lib = logging.getLogger(name)
        saved[name] = (lib.level, list(lib.handlers), lib.propagate)
    yield
    for name, (level, handlers, propagate) in saved.items():
        lib = logging.getLogger(name)
        lib.setLevel(level)
        lib.handlers[:] = handlers
        lib.propagate = propagate


def _app_with_token_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[HubCull, Path]:
    monkeypatch.chdir(tmp_path)  # no hubcull_config.py from the developer's cwd
    path = tmp_path / "token"
    path.write_text(SECRET)
    app = HubCull()
    app.initialize([f"--api-token-file={path}"])
    return app, path


def test_app_redacts_the_token_it_starts_with(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    app_logging: None,
) -> None:
    """The app's second lock: a token logged by mistake is scrubbed before any handler writes."""
    app, _ = _app_with_token_file(tmp_path, monkeypatch)
    capsys.readouterr()
    app.token_source()
    app.log.warning("leaked %s", SECRET)
    err = capsys.readouterr().err
    assert "leaked" in err
    assert SECRET not in err and REDACTED in err


def test_app_redacts_a_rotated_token(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    app_logging: None,
) -> None:
    app, path = _app_with_token_file(tmp_path, monkeypatch)
    source = app.token_source()
    path.write_text(OTHER_SECRET)
    _bump_mtime(path)
    assert source.get() == OTHER_SECRET  # every request now carries this token
    capsys.readouterr()
    app.log.warning("leaked %s", OTHER_SECRET)
    err = capsys.readouterr().err
    assert "leaked" in err
    assert OTHER_SECRET not in err

"""Start-up checks on a real Hub: each failure is one clear line, exit code 2, no traceback."""

from __future__ import annotations

from pathlib import Path

from hubcull.testing import LocalHub, ServerSpec, free_port

from .conftest import ago, run_hubcull

MINIMAL = ["list:users", "read:servers", "delete:servers"]


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("[C ")]


async def test_unreachable_hub_names_the_url_and_the_cause(clean_hub: LocalHub) -> None:
    url = f"http://127.0.0.1:{free_port()}/hub/api"
    run = await run_hubcull(clean_hub, "--once", url=url)
    assert run.code == 2, run
    (line,) = error_lines(run.stderr)
    assert f"cannot reach the Hub at {url}: Connection refused" in line


async def test_not_a_hub_api(clean_hub: LocalHub) -> None:
    # The proxy's public root answers, but it is not the Hub's REST API.
    run = await run_hubcull(clean_hub, "--once", url=clean_hub.public_url + "/nothing/here")
    assert run.code == 2, run
    (line,) = error_lines(run.stderr)
    assert "does not look like a JupyterHub API" in line


async def test_missing_token(clean_hub: LocalHub) -> None:
    run = await run_hubcull(clean_hub, "--once", token=None)
    assert run.code == 2, run
    (line,) = error_lines(run.stderr)
    assert "no API token: set JUPYTERHUB_API_TOKEN" in line


async def test_rejected_token_is_said_and_never_shown(clean_hub: LocalHub) -> None:
    bogus = "0123456789abcdef-not-a-token"
    clean_hub.secrets.add(bogus)
    run = await run_hubcull(clean_hub, "--once", token=bogus)
    assert run.code == 2, run
    (line,) = error_lines(run.stderr)
    assert "rejected the API token (403 Forbidden): is it mistyped, revoked, expired" in line


async def test_missing_scopes_are_named_with_the_role_to_grant(clean_hub: LocalHub) -> None:
    token = await clean_hub.new_token(["list:users"])
    run = await run_hubcull(clean_hub, "--once", token=token)
    assert run.code == 2, run
    (line,) = error_lines(run.stderr)
    assert "lacks scopes: read:servers (to see their servers and activity), " in line
    assert "delete:servers (to stop servers)" in line
    assert "c.JupyterHub.load_roles = [" in run.stderr
    assert '"scopes": ["list:users", "read:servers", "delete:servers"]' in run.stderr


async def test_cull_users_needs_user_scopes(clean_hub: LocalHub) -> None:
    token = await clean_hub.new_token(MINIMAL)
    run = await run_hubcull(clean_hub, "--once", "--cull-users", token=token)
    assert run.code == 2, run
    (line,) = error_lines(run.stderr)
    assert "read:users" in line and "delete:users (to delete users (--cull-users))" in line
    # Without --cull-users the same token is enough.
    run = await run_hubcull(clean_hub, "--once", token=token)
    assert run.code == 0, run


async def test_group_filtered_scopes_cull_only_that_group(clean_hub: LocalHub) -> None:
    hub = clean_hub
    await hub.start_servers(
        [
            ServerSpec("in-group", last_activity=ago(7200)),
            ServerSpec("outsider", last_activity=ago(7200)),
        ]
    )
    status, _ = await hub.api("POST", "/groups/team", body={"users": ["in-group"]})
    assert status == 201
    try:
        token = await hub.new_token([f"{s}!group=team" for s in MINIMAL])
        run = await run_hubcull(hub, "--once", "--timeout=600", token=token)
    finally:
        await hub.api("DELETE", "/groups/team")
    assert run.code == 0, run
    assert "Token scopes are filtered" in run.stderr
    assert set(await hub.active_servers()) == {("outsider", "")}


async def test_token_from_file(clean_hub: LocalHub, tmp_path: Path) -> None:
    hub = clean_hub
    await hub.start_servers([ServerSpec("filed", last_activity=ago(7200))])
    token_file = tmp_path / "token"
    token_file.write_text(hub.token("hubcull") + "\n")
    run = await run_hubcull(hub, "--once", f"--api-token-file={token_file}", token=None)
    assert run.code == 0, run
    assert not await hub.active_servers()

    run = await run_hubcull(hub, "--once", f"--api-token-file={tmp_path / 'absent'}", token=None)
    assert run.code == 2, run
    (line,) = error_lines(run.stderr)
    assert f"cannot read the API token file {tmp_path / 'absent'}" in line

    (tmp_path / "empty").write_text("\n")
    run = await run_hubcull(hub, "--once", f"--api-token-file={tmp_path / 'empty'}", token=None)
    assert run.code == 2, run
    assert "is empty" in error_lines(run.stderr)[0]


async def test_bad_option_values_fail_in_one_line(clean_hub: LocalHub) -> None:
    cases = {
        "--timeout=abc": "hubcull: error: --timeout: expected an int, not the str 'abc'.",
        "--timeout=-5": "hubcull: error: --timeout must be a positive number of seconds",
        "--concurrency=-1": "hubcull: error: --concurrency must be 0 (no limit) or a positive",
        "--cull-users=maybe": "hubcull: error: --cull-users: expected a boolean",
        "--cull-user": "hubcull: error: unknown option --cull-user (see hubcull --help)",
        "--request-timeout=0": "hubcull: error: --request-timeout must be a positive number",
        "--deadline-checks=sometimes": (
            "hubcull: error: --deadline-checks: expected any of ['always', 'budget', 'off']"
        ),
    }
    for arg, message in cases.items():
        run = await run_hubcull(clean_hub, "--once", arg)
        assert run.code == 2, (arg, run)
        assert run.stdout == ""
        assert run.stderr.strip().startswith(message), (arg, run.stderr)
        assert len(run.stderr.strip().splitlines()) == 1, (arg, run.stderr)


async def test_concurrency_zero_means_no_limit_with_a_warning(clean_hub: LocalHub) -> None:
    await clean_hub.start_servers([ServerSpec("nolimit", last_activity=ago(7200))])
    run = await run_hubcull(clean_hub, "--once", "--concurrency=0", "--timeout=600")
    assert run.code == 0, run
    assert "--concurrency=0: no limit on concurrent Hub requests" in run.stderr
    assert not await clean_hub.active_servers()

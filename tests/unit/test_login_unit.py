"""The login policy and provider cache logic, driven with a fake fetcher and a fake clock.

Pure logic only: the behaviours the issues name are proven end to end in test_pool.py and
test_zero_failures.py against PostgreSQL, PgBouncer and the Secrets Manager endpoint.
"""

from __future__ import annotations

from typing import Any

import pytest

from dbcreds import (
    AuthenticationFailed,
    SecretProvider,
    SecretsManagerUnavailable,
    UntrustedServer,
)
from dbcreds.login import LoginPolicy, Try, Wait, drive
from support import Clock, FakeSM, Refused


def provider(sm: FakeSM, clock: Clock, **kw: Any) -> SecretProvider:
    return SecretProvider("app", ttl=300, jitter=0.0, fetcher=sm, clock=clock, **kw)


def login(
    policy: LoginPolicy, accepts: set[str], proxy_down: bool = False
) -> tuple[str, list[float]]:
    waits: list[float] = []

    def attempt(secret: Any) -> str:
        if proxy_down:
            raise Refused("ERROR: server login has been failing, try again later")
        if secret.password not in accepts:
            raise Refused('FATAL:  password authentication failed for user "u"')
        return str(secret.password)

    return drive(policy.plan(), attempt, waits.append), waits


def test_wrong_everywhere_gives_up_at_once_after_one_refresh() -> None:
    sm, clock = FakeSM(), Clock()
    sm.put("AWSCURRENT", "v1", "wrong")
    policy = LoginPolicy(provider(sm, clock))
    with pytest.raises(AuthenticationFailed) as info:
        login(policy, accepts={"right"})
    assert sm.calls == ["AWSCURRENT", "AWSCURRENT", "AWSPENDING"]  # get, refresh, pending
    assert "wrong" not in str(info.value) and "'app'" in str(info.value)


def test_refused_current_then_newer_current_logs_in_without_waiting() -> None:
    sm, clock = FakeSM(), Clock()
    sm.put("AWSCURRENT", "v1", "old")
    p = provider(sm, clock)
    p.get()
    sm.put("AWSCURRENT", "v2", "new")
    assert login(LoginPolicy(p), accepts={"new"}) == ("new", [])


def test_rotation_window_pending_is_used_and_kept_until_current_catches_up() -> None:
    sm, clock = FakeSM(), Clock()
    sm.put("AWSCURRENT", "v1", "old")
    sm.put("AWSPENDING", "v2", "new")
    p = provider(sm, clock)
    policy = LoginPolicy(p)
    assert login(policy, accepts={"new"}) == ("new", [])
    assert policy.first_choice() == Try(p.get_pending() or p.get(), "AWSPENDING")
    # finishSecret: AWSCURRENT moves to v2; once the provider sees it, back to AWSCURRENT.
    sm.put("AWSCURRENT", "v2", "new")
    p.refresh()
    assert policy.first_choice().stage == "AWSCURRENT"


def test_proxy_side_failure_waits_with_capped_backoff_within_budget() -> None:
    sm, clock = FakeSM(), Clock()
    sm.put("AWSCURRENT", "v1", "pw")
    policy = LoginPolicy(provider(sm, clock), budget=2.0, backoff=(0.1, 0.4), clock=clock)
    plan = policy.plan()
    step = next(plan)
    waits: list[float] = []
    with pytest.raises(AuthenticationFailed):
        while True:
            if isinstance(step, Wait):
                waits.append(step.seconds)
                clock.now += step.seconds
                step = plan.send(None)
            else:
                step = plan.send(Refused("server login has been failing"))
    assert waits and all(w <= 0.4 for w in waits)
    assert sum(waits) <= 2.0
    # One refetch per round at most, not one per try.
    assert sm.calls.count("AWSCURRENT") <= len(waits) + 2


def test_non_auth_errors_are_not_retried() -> None:
    sm, clock = FakeSM(), Clock()
    sm.put("AWSCURRENT", "v1", "pw")
    plan = LoginPolicy(provider(sm, clock)).plan()
    assert isinstance(next(plan), Try)
    with pytest.raises(ConnectionError):
        plan.send(ConnectionError("connection refused"))
    assert sm.calls == ["AWSCURRENT"]


def test_stale_if_error_serves_cached_value_with_backoff_then_gives_up() -> None:
    sm, clock = FakeSM(), Clock()
    sm.put("AWSCURRENT", "v1", "pw")
    p = provider(sm, clock, max_stale=600, error_backoff=(1.0, 8.0))
    assert p.get().password == "pw"
    sm.down = True
    clock.now += 301  # past the TTL
    assert p.get().password == "pw"
    assert p.get_stats()["stale_served"] == 1
    calls = len(sm.calls)
    assert p.get().password == "pw"  # within the backoff: no new call
    assert len(sm.calls) == calls
    clock.now += 400  # past max_stale
    with pytest.raises(SecretsManagerUnavailable):
        p.get()


def test_jitter_shortens_each_entry_within_bounds() -> None:
    sm, clock = FakeSM(), Clock()
    sm.put("AWSCURRENT", "v1", "pw")
    p = SecretProvider("app", ttl=100, jitter=0.2, fetcher=sm, clock=clock)
    p.get()
    clock.now += 79.9
    p.get()
    assert sm.calls == ["AWSCURRENT"]  # still fresh: life is at least 80 s
    clock.now += 20.2
    p.get()
    assert sm.calls == ["AWSCURRENT", "AWSCURRENT"]  # expired: life is at most 100 s


def test_refresh_with_stale_does_not_refetch_a_value_already_replaced() -> None:
    sm, clock = FakeSM(), Clock()
    sm.put("AWSCURRENT", "v1", "old")
    p = provider(sm, clock)
    old = p.get()
    sm.put("AWSCURRENT", "v2", "new")
    new = p.refresh(stale=old)
    assert new.password == "new"
    assert p.refresh(stale=old) is new  # another failing holder of `old`: no call
    assert sm.calls == ["AWSCURRENT", "AWSCURRENT"]


def test_retrying_is_true_only_while_a_login_waits_out_a_refusal() -> None:
    sm, clock = FakeSM(), Clock()
    sm.put("AWSCURRENT", "v1", "pw")
    policy = LoginPolicy(provider(sm, clock), budget=2.0, clock=clock)
    plan = policy.plan()
    step = next(plan)
    assert not policy.retrying
    step = plan.send(Refused("server login has been failing"))
    while not isinstance(step, Wait):
        step = plan.send(Refused("server login has been failing"))
    assert policy.retrying  # the pool keeps expired connections meanwhile
    step = plan.send(None)
    assert isinstance(step, Try)
    with pytest.raises(StopIteration):
        plan.send(None)  # logged in
    assert not policy.retrying


@pytest.mark.parametrize(("message", "error"), [
    ('FATAL:  password authentication failed for user "u"', AuthenticationFailed),
    ("SSL error: certificate verify failed", UntrustedServer),
])
def test_a_login_failure_carries_no_chain_to_the_drivers_error(
    message: str, error: type[Exception]
) -> None:
    """The driver's error holds the connection parameters (password included: psycopg's
    pgconn, the frames' locals): the error callers get must not chain to it."""
    sm, clock = FakeSM(), Clock()
    sm.put("AWSCURRENT", "v1", "s3cret-password")

    class Leaky(Exception):
        def __init__(self, text: str, password: str) -> None:
            super().__init__(text)
            self.password = password

    def attempt(secret: Any) -> str:
        raise Leaky(message, secret.password)

    with pytest.raises(error) as info:
        drive(LoginPolicy(provider(sm, clock)).plan(), attempt, lambda _s: None)
    assert info.value.__cause__ is None and info.value.__context__ is None
    import traceback

    text = "".join(traceback.format_exception(info.value))
    assert "s3cret-password" not in text


class RotatedClient:
    """A boto3 client stand-in: GetSecretValue from a FakeSM, DescribeSecret's LastRotatedDate."""

    def __init__(self, sm: FakeSM, last_rotated: float | None) -> None:
        self.sm, self.last_rotated, self.describes = sm, last_rotated, 0

    def get_secret_value(self, SecretId: str, VersionStage: str) -> dict[str, Any]:
        return self.sm(SecretId, VersionStage)

    def describe_secret(self, SecretId: str) -> dict[str, Any]:
        from datetime import datetime, timezone

        self.describes += 1
        if self.last_rotated is None:
            return {"Name": SecretId}
        return {"Name": SecretId,
                "LastRotatedDate": datetime.fromtimestamp(self.last_rotated, timezone.utc)}


def test_a_cold_container_sees_a_rotations_tail_by_its_last_rotated_date() -> None:
    """A container that started after finishSecret has seen one version only: a refusal (RDS
    Proxy not yet serving the new password) is still the tail of a rotation, by Secrets
    Manager's LastRotatedDate (asked once per pending_ttl)."""
    sm = FakeSM()
    sm.put("AWSCURRENT", "v2", "new")
    client, clock, wall = RotatedClient(sm, 1_000_000.0), Clock(), [1_000_030.0]
    provider = SecretProvider("s", client=client, clock=clock, wall=lambda: wall[0])
    provider.get()
    assert provider.changed_recently(60) and provider.changed_recently(60)
    assert client.describes == 1
    wall[0], clock.now = 1_000_100.0, clock.now + 5
    assert not provider.changed_recently(60) and client.describes == 2


def test_a_proxy_lagging_behind_a_fresh_rotation_is_waited_out() -> None:
    sm = FakeSM()
    sm.put("AWSCURRENT", "v2", "new")
    provider = SecretProvider("s", client=RotatedClient(sm, 1_000_000.0), clock=Clock(),
                              wall=lambda: 1_000_010.0)
    policy = LoginPolicy(provider, budget=5.0, backoff=(0.05, 0.5))
    refusals = [Refused("SASL authentication failed")] * 2  # the proxy has the old password

    def attempt(secret: Any) -> str:
        if refusals:
            raise refusals.pop()
        return "connection"

    waits: list[float] = []
    assert drive(policy.plan(), attempt, waits.append) == "connection"
    assert len(waits) >= 1


@pytest.mark.parametrize("last_rotated", [None, 990_000.0])
def test_a_secret_written_by_hand_is_not_a_rotation(last_rotated: float | None) -> None:
    """No rotation (or an old one): a refused login gives up at once, however new the version."""
    sm = FakeSM()
    sm.put("AWSCURRENT", "v1", "wrong")
    provider = SecretProvider("s", client=RotatedClient(sm, last_rotated), clock=Clock(),
                              wall=lambda: 1_000_010.0)
    policy = LoginPolicy(provider, budget=5.0)

    def attempt(secret: Any) -> str:
        raise Refused("password authentication failed for user")

    waits: list[float] = []
    with pytest.raises(AuthenticationFailed):
        drive(policy.plan(), attempt, waits.append)
    assert waits == []


def test_no_describe_through_another_transport() -> None:
    sm = FakeSM()
    sm.put("AWSCURRENT", "v1", "pw")
    provider = SecretProvider("s", fetcher=sm, clock=Clock())
    provider.get()
    assert not provider.rotated_recently(60)


def test_an_environment_with_a_key_mapping_configures_a_shared_source(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``login.configure()`` (every integration's way to its credentials) keys the process's
    shared sources by the settings: a key mapping among them must not break that."""
    from dbcreds.login import configure

    monkeypatch.setenv("DBCREDS_SECRET_ID", "prod/mapped")
    monkeypatch.setenv("DBCREDS_SECRET_KEYS", "username=user,password=pass")
    monkeypatch.delenv("DBCREDS_IAM_USER", raising=False)
    first = configure()
    assert configure().source is first.source  # one per process
    assert first.source.keys == {"username": "user", "password": "pass"}  # type: ignore[attr-defined]

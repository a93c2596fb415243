"""End-to-end: whoever can write the application secret cannot use the rotation's master login.

The alternating-users strategy changes passwords *as the master* (a CREATEROLE user, as an RDS
master is: on PostgreSQL 15 it may change the password of any role that is not a superuser).
Each case below writes an application secret that would have turned a rotation into a
takeover, and checks that the rotation refuses it with `UnsafeRolePair`, that the failure is
published to SNS, and that nothing changed: every role's password verifier and attributes,
every membership, no new role, the secret's versions, and the logins that worked still work.

Also: finishSecret invoked out of order (setSecret skipped) refuses to promote AWSPENDING.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import dataclass
from typing import Any

import pytest
from psycopg import sql

from dbcreds.rotation import (
    RotationError,
    RotationStateError,
    RotationStep,
    TestSecretFailed,
    UnsafeRolePair,
    run_step,
)
from test_rotation_alternating import doc, logs_in, rotate


@pytest.fixture
def topic(stack: Any, rotation_env: Any, monkeypatch: pytest.MonkeyPatch) -> str:
    """An SNS topic that the rotation publishes its failures to."""
    sns = stack.secrets.client("sns")
    arn = str(sns.create_topic(Name=f"escalation-{secrets.token_hex(4)}")["TopicArn"])
    monkeypatch.setenv("ROTATION_FAILURE_TOPIC_ARN", arn)
    return arn


@pytest.fixture
def sm(stack: Any, rotation_env: Any, topic: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("ROTATION_STRATEGY", "alternating-users")
    return stack.secrets.client()


# -- the database, as the stack's superuser sees it ------------------------------------------------

@dataclass(frozen=True)
class DbState:
    roles: dict[str, tuple[Any, ...]]  # name -> (sha256 of the verifier, attributes...)
    memberships: list[tuple[str, str, bool]]  # (role, member, admin option)


def db_state(stack: Any) -> DbState:
    """Every role (its verifier hashed: never shown, even in a failed assertion) and grant."""
    with stack.admin() as conn:
        rows = conn.execute(
            "SELECT rolname, rolpassword, rolsuper, rolcreaterole, rolreplication, "
            "rolbypassrls, rolcanlogin, rolinherit, rolcreatedb FROM pg_authid"
        ).fetchall()
        grants = conn.execute(
            "SELECT r.rolname, m.rolname, a.admin_option FROM pg_auth_members AS a "
            "JOIN pg_authid AS r ON r.oid = a.roleid JOIN pg_authid AS m ON m.oid = a.member "
            "ORDER BY 1, 2"
        ).fetchall()
    roles = {
        name: (hashlib.sha256((verifier or "").encode()).hexdigest(), *attributes)
        for name, verifier, *attributes in rows
    }
    return DbState(roles, [tuple(g) for g in grants])


def make_role(
    stack: Any, name: str, password: str | None = None, *, attributes: str = "",
    member_of: tuple[str, ...] = (),
) -> None:
    """A role (LOGIN when it has a password) with extra *attributes* and memberships."""
    if password is not None:
        stack.create_role(name, password)
    with stack.admin() as conn:
        if password is None:
            conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(name)))
        if attributes:
            conn.execute(sql.SQL("ALTER ROLE {} " + attributes).format(sql.Identifier(name)))
        for group in member_of:
            conn.execute(sql.SQL("GRANT {} TO {}").format(
                sql.Identifier(group), sql.Identifier(name)))  # fmt: skip


def works(stack: Any, d: dict[str, Any]) -> bool:
    """Whether *d* logs in; called outside ``assert`` so that a failure never shows *d*."""
    return logs_in(stack, d)


def fingerprint(d: dict[str, Any]) -> str:
    """A secret value, hashed: compared instead of the value, so no failure shows it."""
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()


@dataclass
class Scene:
    """A CREATEROLE master and its secret, and an application secret naming it (masterarn)."""

    stack: Any
    sm: Any
    master: str
    master_password: str
    master_arn: str
    secret_id: str = ""
    username: str = ""
    password: str = ""

    @classmethod
    def create(cls, stack: Any, sm: Any, master: str | None = None) -> Scene:
        master = master or f"master_{secrets.token_hex(4)}"
        password = "Master-" + secrets.token_urlsafe(18)
        stack.create_role(master, password, createrole=True)
        arn = stack.create_secret(f"dbcreds-test/esc-master-{secrets.token_hex(6)}",
                                  stack.secret_doc(master, password))  # fmt: skip
        return cls(stack, sm, master, password, arn)

    def grant_admin(self, role: str) -> None:
        """What PostgreSQL 16+ asks of a CREATEROLE master, as in make_pair."""
        with self.stack.admin() as conn:
            conn.execute(sql.SQL("GRANT {} TO {} WITH ADMIN OPTION").format(
                sql.Identifier(role), sql.Identifier(self.master)))  # fmt: skip

    def app_secret(self, username: str, password: str, *, admin: bool = True) -> Scene:
        """The application secret for *username* (what whoever can write it chose)."""
        if admin:
            self.grant_admin(username)
        self.username, self.password = username, password
        self.secret_id = f"dbcreds-test/esc-app-{secrets.token_hex(6)}"
        self.stack.create_secret(self.secret_id, self.stack.secret_doc(
            username, password, masterarn=self.master_arn))  # fmt: skip
        self.stack.enable_rotation(self.secret_id)
        return self

    def current_version(self) -> str:
        stages = self.sm.describe_secret(SecretId=self.secret_id)["VersionIdsToStages"]
        return next(v for v, s in stages.items() if "AWSCURRENT" in s)

    def event(self, step: RotationStep, token: str) -> dict[str, str]:
        return {"SecretId": self.secret_id, "ClientRequestToken": token, "Step": step.value}

    def master_logs_in(self) -> bool:
        return works(self.stack, {"username": self.master, "password": self.master_password})


class Watch:
    """What must not change: the database, AWSCURRENT (version, value, whether it logs in)."""

    def __init__(self, scene: Scene) -> None:
        self.scene = scene
        self.state = db_state(scene.stack)
        self.version = scene.current_version()
        current = doc(scene.sm, scene.secret_id, "AWSCURRENT")
        self.current = fingerprint(current)
        self.current_logged_in = works(scene.stack, current)
        self.published = scene.stack.secrets.count("Publish", service="sns")

    def assert_unchanged(self, *, published: int, absent: tuple[str, ...] = ()) -> None:
        scene = self.scene
        after = db_state(scene.stack)
        assert after.roles[scene.master] == self.state.roles[scene.master], (
            "the master's password or attributes changed")
        assert set(after.roles) == set(self.state.roles), "a role was created or dropped"
        assert after == self.state, "a role's password, attributes or memberships changed"
        for name in absent:
            assert name not in after.roles
        assert scene.current_version() == self.version
        current = doc(scene.sm, scene.secret_id, "AWSCURRENT")
        assert fingerprint(current) == self.current, "AWSCURRENT's value changed"
        current_works, master_works = works(scene.stack, current), scene.master_logs_in()
        assert current_works == self.current_logged_in
        assert master_works
        assert scene.stack.secrets.count("Publish", service="sns") == self.published + published


def refused_at_create(scene: Scene, *rules: str) -> UnsafeRolePair:
    """createSecret refuses: no AWSPENDING value is stored."""
    token = scene.stack.secrets.register_pending(scene.secret_id)
    with pytest.raises(UnsafeRolePair) as info:
        run_step(scene.event(RotationStep.CREATE, token), client=scene.sm)
    assert info.value.step == "createSecret"
    for rule in rules:
        assert f"{rule}: " in str(info.value)
    with pytest.raises(scene.sm.exceptions.ResourceNotFoundException):
        scene.sm.get_secret_value(SecretId=scene.secret_id, VersionId=token,
                                  VersionStage="AWSPENDING")  # fmt: skip
    return info.value


def refused_at_set(scene: Scene, pending_username: str, *rules: str) -> UnsafeRolePair:
    """setSecret refuses an AWSPENDING that someone else wrote (createSecret never ran)."""
    token = scene.stack.secrets.register_pending(scene.secret_id)
    scene.sm.put_secret_value(
        SecretId=scene.secret_id, ClientRequestToken=token, VersionStages=["AWSPENDING"],
        SecretString=json.dumps(scene.stack.secret_doc(
            pending_username, "Chosen-" + secrets.token_urlsafe(12), masterarn=scene.master_arn)),
    )  # fmt: skip
    with pytest.raises(UnsafeRolePair) as info:
        run_step(scene.event(RotationStep.SET, token), client=scene.sm)
    assert info.value.step == "setSecret"
    for rule in rules:
        assert f"{rule}: " in str(info.value)
    return info.value


def refused_by_database(scene: Scene, *rules: str) -> UnsafeRolePair:
    """Names are fine (createSecret stores AWSPENDING); setSecret's check refuses."""
    with pytest.raises(UnsafeRolePair) as info:
        rotate(scene.sm, scene.secret_id)
    assert info.value.step == "setSecret"
    for rule in rules:
        assert f"{rule}: " in str(info.value)
    return info.value


def _password() -> str:
    return "Init-" + secrets.token_urlsafe(18)


# -- the master's own name -------------------------------------------------------------------------

def test_app_secret_for_the_master_itself(stack: Any, sm: Any, topic: str) -> None:
    """username = the master's (a copy of the master secret): its clone would be created."""
    scene = Scene.create(stack, sm)
    scene.app_secret(scene.master, scene.master_password, admin=False)
    sqs = stack.secrets.client("sqs")
    queue = sqs.create_queue(QueueName=f"escalation-{secrets.token_hex(4)}")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])[
        "Attributes"]["QueueArn"]  # fmt: skip
    stack.secrets.client("sns").subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn,
                                          Attributes={"RawMessageDelivery": "true"})  # fmt: skip
    watch = Watch(scene)
    assert watch.current_logged_in

    error = refused_at_create(scene, "master-user")
    assert repr(scene.master) in str(error)
    refused_at_set(scene, scene.master + "_clone", "master-user")
    watch.assert_unchanged(published=2, absent=(scene.master + "_clone",))

    bodies = [m["Body"] for m in sqs.receive_message(
        QueueUrl=queue, MaxNumberOfMessages=10, WaitTimeSeconds=1)["Messages"]]  # fmt: skip
    notices = [json.loads(b) for b in bodies]
    assert sorted(n["step"] for n in notices) == ["createSecret", "setSecret"]
    assert {n["error_type"] for n in notices} == {"UnsafeRolePair"}
    assert all("master-user" in n["error"] for n in notices)
    assert not any(scene.master_password in b for b in bodies)


def test_clone_of_the_app_user_is_the_master(stack: Any, sm: Any) -> None:
    """The master is ``<user>_clone``: setSecret would run ALTER ROLE on the master."""
    base = f"esc_{secrets.token_hex(4)}"
    scene = Scene.create(stack, sm, master=base + "_clone")
    make_role(stack, base, password := _password())
    scene.app_secret(base, password)
    watch = Watch(scene)
    assert watch.current_logged_in

    refused_at_create(scene, "master-user")
    refused_at_set(scene, scene.master, "master-user")
    watch.assert_unchanged(published=2)


def test_app_user_is_the_masters_clone_name(stack: Any, sm: Any) -> None:
    """``<master>_clone`` (e.g. postgres_clone): its other user is the master."""
    scene = Scene.create(stack, sm)
    make_role(stack, scene.master + "_clone", password := _password())
    scene.app_secret(scene.master + "_clone", password)
    watch = Watch(scene)
    assert watch.current_logged_in

    refused_at_create(scene, "master-user")
    refused_at_set(scene, scene.master, "master-user")
    watch.assert_unchanged(published=2)


# -- PostgreSQL's predefined roles -----------------------------------------------------------------

@pytest.mark.parametrize("username", ["pg_read_all_data", "pg_monitor_clone"])
def test_predefined_role_names(stack: Any, sm: Any, username: str) -> None:
    scene = Scene.create(stack, sm).app_secret(username, _password(), admin=False)
    other = username.removesuffix("_clone") if username.endswith("_clone") else username + "_clone"
    watch = Watch(scene)
    absent = tuple(n for n in (username, other) if n not in watch.state.roles)
    assert absent  # pg_read_all_data_clone / pg_monitor_clone: must not be created

    error = refused_at_create(scene, "reserved-prefix")
    assert repr(username) in str(error) and repr(other) in str(error)
    refused_at_set(scene, other, "reserved-prefix")
    watch.assert_unchanged(published=2, absent=absent)


# -- roles that are, or can become, privileged (the database check) --------------------------------

@pytest.mark.parametrize("attribute", ["SUPERUSER", "CREATEROLE", "REPLICATION", "BYPASSRLS"])
def test_privileged_role(stack: Any, sm: Any, attribute: str) -> None:
    scene = Scene.create(stack, sm)
    name = f"esc_{attribute.lower()}_{secrets.token_hex(3)}"
    make_role(stack, name, password := _password(), attributes=attribute)
    scene.app_secret(name, password, admin=attribute != "SUPERUSER")
    watch = Watch(scene)
    assert watch.current_logged_in

    error = refused_by_database(scene, "privileged-attribute")
    assert f"role {name!r} has {attribute}" in str(error)
    watch.assert_unchanged(published=1, absent=(name + "_clone",))


def test_member_of_a_privileged_role_through_another(stack: Any, sm: Any) -> None:
    """app -> middle -> ops (CREATEROLE), and app is NOINHERIT: SET ROLE still reaches ops."""
    scene = Scene.create(stack, sm)
    ops, middle = f"esc_ops_{secrets.token_hex(3)}", f"esc_mid_{secrets.token_hex(3)}"
    make_role(stack, ops, attributes="CREATEROLE")
    make_role(stack, middle, member_of=(ops,))
    name = f"esc_app_{secrets.token_hex(3)}"
    make_role(stack, name, password := _password(), attributes="NOINHERIT", member_of=(middle,))
    scene.app_secret(name, password)
    watch = Watch(scene)
    assert watch.current_logged_in

    error = refused_by_database(scene, "privileged-membership")
    assert f"role {name!r} is a member of {ops!r}" in str(error)
    assert repr(middle) not in str(error)  # not privileged itself
    watch.assert_unchanged(published=1, absent=(name + "_clone",))


@pytest.mark.parametrize("group", ["pg_read_all_data", "the master"])
def test_member_of_a_predefined_role_or_the_master(stack: Any, sm: Any, group: str) -> None:
    scene = Scene.create(stack, sm)
    group_name = scene.master if group == "the master" else group
    name = f"esc_app_{secrets.token_hex(3)}"
    make_role(stack, name, password := _password(), member_of=(group_name,))
    scene.app_secret(name, password, admin=group != "the master")  # no membership loop
    watch = Watch(scene)

    error = refused_by_database(scene, "privileged-membership")
    assert f"role {name!r} is a member of {group_name!r}" in str(error)
    watch.assert_unchanged(published=1, absent=(name + "_clone",))


def test_existing_privileged_clone_is_refused(stack: Any, sm: Any) -> None:
    """The other user already exists and is privileged (BYPASSRLS): both roles are checked."""
    scene = Scene.create(stack, sm)
    name = f"esc_app_{secrets.token_hex(3)}"
    make_role(stack, name, password := _password())
    make_role(stack, name + "_clone", _password(), attributes="BYPASSRLS")
    scene.app_secret(name, password)
    watch = Watch(scene)

    error = refused_by_database(scene, "privileged-attribute")
    assert f"role {name + '_clone'!r} has BYPASSRLS" in str(error)
    watch.assert_unchanged(published=1)


# -- names PostgreSQL would truncate ---------------------------------------------------------------

def test_name_whose_clone_exceeds_63_bytes(stack: Any, sm: Any) -> None:
    scene = Scene.create(stack, sm)
    name = "t" * 52 + secrets.token_hex(4)  # 60 bytes: the role fits, its clone (66) does not
    make_role(stack, name, password := _password())
    scene.app_secret(name, password)
    watch = Watch(scene)
    assert watch.current_logged_in

    error = refused_at_create(scene, "too-long")
    assert "66 bytes" in str(error) and "63-byte" in str(error)
    refused_at_set(scene, name + "_clone", "too-long")
    watch.assert_unchanged(published=2)


def test_pair_that_collides_after_truncation(stack: Any, sm: Any) -> None:
    """AWSCURRENT's user is a 69-byte ``<victim>_clone``: its other user is the 63-byte victim,
    and PostgreSQL would take the 69-byte name for the victim too."""
    scene = Scene.create(stack, sm)
    victim = "v" * 55 + secrets.token_hex(4)  # 63 bytes, another application's role
    make_role(stack, victim, password := _password())
    scene.grant_admin(victim)
    scene.app_secret(victim + "_clone", password, admin=False)
    watch = Watch(scene)
    assert watch.current_logged_in  # the server truncates the login name: it IS the victim

    refused_at_create(scene, "too-long", "truncation-collision")
    refused_at_set(scene, victim, "too-long", "truncation-collision")
    watch.assert_unchanged(published=2)


def test_safe_pair_still_rotates(stack: Any, sm: Any) -> None:
    """The checks let an ordinary pair through (and the clone gets created)."""
    scene = Scene.create(stack, sm)
    name = f"esc_ok_{secrets.token_hex(3)}"
    make_role(stack, name, password := _password())
    scene.app_secret(name, password)
    published = stack.secrets.count("Publish", service="sns")
    before = db_state(stack)
    for expected in (name + "_clone", name):
        assert rotate(sm, scene.secret_id).completed
        current = doc(sm, scene.secret_id, "AWSCURRENT")
        user, ok = current["username"], works(stack, current)
        assert user == expected and ok
    assert stack.secrets.count("Publish", service="sns") == published
    # db_state sees what a rotation changes (so the refusals above prove something):
    after = db_state(stack)
    assert set(after.roles) - set(before.roles) == {name + "_clone"}
    assert after.roles[name] != before.roles[name]  # a new verifier
    assert (name, name + "_clone", False) in after.memberships


# -- finishSecret out of order ---------------------------------------------------------------------

@pytest.mark.parametrize("strategy", ["single-user", "alternating-users"])
def test_finish_after_skipped_set_secret_is_refused(
    stack: Any, sm: Any, monkeypatch: pytest.MonkeyPatch, strategy: str
) -> None:
    monkeypatch.setenv("ROTATION_STRATEGY", strategy)
    scene = Scene.create(stack, sm)
    make_role(stack, name := f"esc_fin_{secrets.token_hex(3)}", password := _password())
    scene.app_secret(name, password)
    watch = Watch(scene)
    assert watch.current_logged_in
    token = stack.secrets.register_pending(scene.secret_id)
    run_step(scene.event(RotationStep.CREATE, token), client=sm)

    with pytest.raises(RotationStateError) as info:  # setSecret and testSecret skipped
        run_step(scene.event(RotationStep.FINISH, token), client=sm)
    text = str(info.value)
    assert info.value.step == "finishSecret"
    assert "AWSPENDING does not log in" in text and "AWSCURRENT is unchanged" in text
    assert "run setSecret and testSecret" in text
    with pytest.raises(TestSecretFailed):  # a failed testSecret proves nothing either
        run_step(scene.event(RotationStep.TEST, token), client=sm)
    with pytest.raises(RotationStateError, match="AWSPENDING does not log in"):
        run_step(scene.event(RotationStep.FINISH, token), client=sm)

    stages = sm.describe_secret(SecretId=scene.secret_id)["VersionIdsToStages"]
    assert stages[token] == ["AWSPENDING"]
    watch.assert_unchanged(published=3)
    pending_works = works(stack, doc(sm, scene.secret_id, "AWSPENDING"))
    assert not pending_works


def test_finish_without_test_secret_checks_the_login_itself(stack: Any, sm: Any) -> None:
    """testSecret ran elsewhere (another Lambda container): finishSecret logs in itself."""
    scene = Scene.create(stack, sm)
    make_role(stack, name := f"esc_fin_{secrets.token_hex(3)}", password := _password())
    scene.app_secret(name, password)
    token = stack.secrets.register_pending(scene.secret_id)
    for step in (RotationStep.CREATE, RotationStep.SET, RotationStep.FINISH):
        run_step(scene.event(step, token), client=sm)
    assert "AWSCURRENT" in sm.describe_secret(SecretId=scene.secret_id)["VersionIdsToStages"][
        token]  # fmt: skip
    current_works = works(stack, doc(sm, scene.secret_id, "AWSCURRENT"))
    assert current_works


# -- which master: the function's configuration decides, not the secret ---------------------------

def test_masterarn_must_be_the_configured_master(
    stack: Any, sm: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With DBCREDS_ROTATION_MASTER_SECRET_ARN set (the template sets it), a secret naming any
    other master secret the function could read is refused before anything changes."""
    scene = Scene.create(stack, sm)
    other = Scene.create(stack, sm)
    make_role(stack, name := f"esc_{secrets.token_hex(4)}", password := _password())
    scene.app_secret(name, password)
    monkeypatch.setenv("DBCREDS_ROTATION_MASTER_SECRET_ARN", other.master_arn)
    watch = Watch(scene)
    error = refused_at_create(scene)
    assert "DBCREDS_ROTATION_MASTER_SECRET_ARN" in str(error)
    watch.assert_unchanged(published=1, absent=(name + "_clone",))

    monkeypatch.setenv("DBCREDS_ROTATION_MASTER_SECRET_ARN", scene.master_arn)
    rotate(scene.sm, scene.secret_id)  # the configured master: the rotation goes through
    assert works(stack, doc(sm, scene.secret_id, "AWSCURRENT"))


def test_awspending_cannot_switch_to_another_master(stack: Any, sm: Any) -> None:
    scene = Scene.create(stack, sm)
    other = Scene.create(stack, sm)
    make_role(stack, name := f"esc_{secrets.token_hex(4)}", password := _password())
    scene.app_secret(name, password)
    other.grant_admin(name)
    watch = Watch(scene)
    token = stack.secrets.register_pending(scene.secret_id)
    sm.put_secret_value(
        SecretId=scene.secret_id, ClientRequestToken=token, VersionStages=["AWSPENDING"],
        SecretString=json.dumps(stack.secret_doc(
            name + "_clone", "Chosen-" + secrets.token_urlsafe(12), masterarn=other.master_arn)),
    )  # fmt: skip
    with pytest.raises(UnsafeRolePair, match="another master secret"):
        run_step(scene.event(RotationStep.SET, token), client=sm)
    watch.assert_unchanged(published=1, absent=(name + "_clone",))


# -- the pair must be the secret's own ---------------------------------------------------------

@pytest.mark.parametrize("direction", ["the victim", "the victim's clone name"])
def test_a_secret_cannot_name_another_applications_role(
    stack: Any, sm: Any, direction: str
) -> None:
    """Another application's unprivileged role, named by a secret that holds no password for
    it: setSecret would reset its password (or clone it) as the master. Refused unchanged."""
    scene = Scene.create(stack, sm)
    victim = f"victim_{secrets.token_hex(4)}"
    make_role(stack, victim, _password())  # its password is not in the secret
    scene.grant_admin(victim)
    named = victim if direction == "the victim" else victim + "_clone"
    scene.app_secret(named, "Guessed-" + secrets.token_urlsafe(12), admin=False)
    watch = Watch(scene)
    assert not watch.current_logged_in
    error = refused_by_database(scene, "not-owned")
    assert "Nothing was changed" in str(error)
    watch.assert_unchanged(published=1, absent=(victim + "_clone",))


def test_an_unrelated_role_with_the_clone_name_is_not_taken(stack: Any, sm: Any) -> None:
    """``<user>_clone`` exists but is not a member of ``<user>``: someone else's role."""
    scene = Scene.create(stack, sm)
    make_role(stack, name := f"esc_{secrets.token_hex(4)}", password := _password())
    make_role(stack, name + "_clone", _password())  # not a member of name
    scene.grant_admin(name + "_clone")
    scene.app_secret(name, password)
    watch = Watch(scene)
    refused_by_database(scene, "not-a-pair")
    watch.assert_unchanged(published=1)


def test_test_and_finish_check_where_awspending_points(stack: Any, sm: Any) -> None:
    """An AWSPENDING for another server (here: the same one by another name, so that a wrong
    check would only reach this machine) is refused by testSecret and finishSecret too."""
    scene = Scene.create(stack, sm)
    make_role(stack, name := f"esc_{secrets.token_hex(4)}", password := _password())
    scene.app_secret(name, password)
    token = stack.secrets.register_pending(scene.secret_id)
    elsewhere = stack.secret_doc(name + "_clone", "Chosen-" + secrets.token_urlsafe(12),
                                 masterarn=scene.master_arn, host="localhost")
    sm.put_secret_value(SecretId=scene.secret_id, ClientRequestToken=token,
                        VersionStages=["AWSPENDING"], SecretString=json.dumps(elsewhere))
    watch = Watch(scene)
    for step in (RotationStep.TEST, RotationStep.FINISH):
        with pytest.raises(RotationError, match="server"):
            run_step(scene.event(step, token), client=sm)
    watch.assert_unchanged(published=2)

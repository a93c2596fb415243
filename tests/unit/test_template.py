"""rotation/template.yaml: cfn-lint clean, and the properties issue 5 asks of it, checked on the
parsed template (cfn-lint's own decoder, which understands !Ref, !Sub, !GetAtt, ...)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

cfnlint_api = pytest.importorskip("cfnlint.api")
from cfnlint.config import ManualArgs  # type: ignore[import-untyped,unused-ignore]  # noqa: E402
from cfnlint.decode import decode  # type: ignore[import-untyped,unused-ignore]  # noqa: E402

from support import REPO  # noqa: E402
from support import build_package as _build_package  # noqa: E402

build_package = _build_package()  # rotation/build_package.py, loaded once
ROTATION = REPO / "rotation"
TEMPLATE = ROTATION / "template.yaml"
HANDLER = "dbcreds.rotation.lambda_handler"
NO_VALUE = {"Ref": "AWS::NoValue"}
#: actions that act on no resource: IAM accepts only Resource "*" for them
UNSCOPED_ACTIONS = {"secretsmanager:GetRandomPassword"}
#: the only managed policy a dbcreds role may carry (ENIs and CloudWatch Logs)
VPC_ACCESS_POLICY = "service-role/AWSLambdaVPCAccessExecutionRole"


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    tpl, problems = decode(str(TEMPLATE))
    assert not problems, problems
    assert tpl is not None
    return dict(tpl)


@pytest.fixture(scope="module")
def resources(template: dict[str, Any]) -> dict[str, Any]:
    return dict(template["Resources"])


def branches(value: Any) -> Iterator[Any]:
    """Every value an expression can take across Fn::If branches; AWS::NoValue dropped."""
    if isinstance(value, dict) and list(value) == ["Fn::If"]:
        _, yes, no = value["Fn::If"]
        yield from branches(yes)
        yield from branches(no)
    elif value != NO_VALUE:
        yield value


def of_type(resources: dict[str, Any], kind: str) -> dict[str, Any]:
    return {name: r for name, r in resources.items() if r["Type"] == kind}


def referenced(value: Any) -> set[str]:
    """Logical ids that a Ref / GetAtt (possibly under Fn::If) points at."""
    names = set()
    for v in branches(value):
        if isinstance(v, dict) and "Ref" in v:
            names.add(v["Ref"])
        elif isinstance(v, dict) and "Fn::GetAtt" in v:
            names.add(v["Fn::GetAtt"][0])
    return names


def rotation_functions(resources: dict[str, Any]) -> dict[str, Any]:
    return {
        name: r
        for name, r in of_type(resources, "AWS::Serverless::Function").items()
        if r["Properties"]["Handler"] == HANDLER
    }


def policy_statements(resources: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(resource name, statement) for every statement of every policy in the template."""
    for name, res in resources.items():
        props = res.get("Properties", {})
        documents = []
        if res["Type"] == "AWS::IAM::Role":
            documents.append(props["AssumeRolePolicyDocument"])
            documents += [p["PolicyDocument"] for p in props.get("Policies", [])]
        elif res["Type"] in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"):
            documents.append(props["PolicyDocument"])
        elif res["Type"] in ("AWS::SNS::TopicPolicy", "AWS::SQS::QueuePolicy"):
            documents.append(props["PolicyDocument"])
        for doc in documents:
            for statement in doc["Statement"]:
                for concrete in branches(statement):
                    yield name, concrete


def as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else [value]


def conditional_items(items: list[Any]) -> Iterator[tuple[str | None, Any]]:
    """(condition name or None, item) for a list whose items may be Fn::If [c, item, NoValue]."""
    for item in items:
        if isinstance(item, dict) and list(item) == ["Fn::If"]:
            condition, yes, no = item["Fn::If"]
            assert no == NO_VALUE, item
            yield condition, yes
        else:
            yield None, item


def pattern_accepts(pattern: str, value: str) -> bool:
    """CloudFormation's AllowedPattern must match the whole value."""
    return re.fullmatch(pattern, value) is not None


# -- cfn-lint ---------------------------------------------------------------------------------


def test_cfn_lint_reports_nothing() -> None:
    matches = cfnlint_api.lint_file(
        TEMPLATE,
        config=ManualArgs(regions=["us-east-1", "eu-west-1", "ap-northeast-1"]),
    )
    assert [str(m) for m in matches] == []


# -- checkov -----------------------------------------------------------------------------------

#: what `make checkov` installs (the pinned version), else a checkov on PATH
CHECKOV = REPO / ".venv-checkov" / "bin" / "checkov"


def checkov_command() -> str:
    if CHECKOV.exists():
        return str(CHECKOV)
    found = shutil.which("checkov")
    if found is None:
        pytest.skip("checkov is not installed: `make checkov` installs the pinned version")
    return found


def every_option_on(template: dict[str, Any]) -> dict[str, Any]:
    """The template with parameter defaults that create every conditional resource (checkov
    scans only what the defaults create) and set every optional key, endpoint and secret."""
    tpl = json.loads(json.dumps(template))
    defaults = {
        "Architecture": "x86_64",
        "RotationStrategy": "alternating-users",
        "MasterSecretArn": "arn:aws:secretsmanager:eu-west-1:123456789012:secret:master-AbCdEf",
        "KmsKeyArns": "arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab",
        "TopicAndLogsKmsKeyArn": (
            "arn:aws:kms:eu-west-1:123456789012:key/5678abcd-12ab-34cd-56ef-1234567890ab"
        ),
        "CreateSecretsManagerEndpoint": "false",
        "CreateSnsEndpoint": "false",
        "HttpsEgressCidr": "10.0.0.0/16",
        "SecretsManagerEndpointUrl": "https://secretsmanager.eu-west-1.amazonaws.com",
        "AlertEmail": "ops@example.com",
        "DeployExampleApp": "true",
        "ProxyIAMAuth": "REQUIRED",
        "ExampleAppDbUser": "app",
        "DatabaseIdentifierType": "cluster",
    }
    for name, value in defaults.items():
        tpl["Parameters"][name]["Default"] = value
    return tpl


@pytest.mark.parametrize("variant", ["defaults", "every option on"])
def test_checkov_finds_nothing_unexplained(
    variant: str, template: dict[str, Any], tmp_path: Path
) -> None:
    command = checkov_command()
    target = TEMPLATE
    if variant != "defaults":
        target = tmp_path / "template.json"  # JSON keeps the Metadata skips; checkov reads it
        target.write_text(json.dumps(every_option_on(template)))
    run = subprocess.run(
        [
            command,
            *("-f", str(target), "--framework", "cloudformation"),
            *("--skip-download", "--output", "json"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    report = json.loads(run.stdout)
    summary = report["summary"]
    results = report["results"]
    failed = [(c["check_id"], c["resource"]) for c in results["failed_checks"]]
    assert failed == [], failed
    assert run.returncode == 0, run.stderr[-2000:]
    assert summary["parsing_errors"] == 0
    assert summary["passed"] >= 40, summary  # it really scanned the template
    for check in results["skipped_checks"]:
        comment = check["check_result"]["suppress_comment"]
        assert len(comment) > 40 and comment != "No comment provided", check["check_id"]
    scanned = {c["resource"].split(".")[-1] for c in results["passed_checks"]}
    scanned |= {c["resource"].split(".")[-1] for c in results["skipped_checks"]}
    if variant == "defaults":
        assert "RotationFunctionArm64" in scanned
    else:
        assert {"RotationFunctionX86", "ExampleAppFunction", "ExampleAppRole"} <= scanned


def test_checkov_skips_name_a_check_and_give_a_reason(resources: dict[str, Any]) -> None:
    skips: dict[str, list[str]] = {}
    for name, res in resources.items():
        for skip in res.get("Metadata", {}).get("checkov", {}).get("skip", []):
            assert re.fullmatch(r"CKV_AWS_\d+", skip["id"]), (name, skip)
            assert len(skip["comment"]) > 40, (name, skip)
            skips.setdefault(name, []).append(skip["id"])
    # the two rotation functions are the same function for two machines
    assert skips["RotationFunctionArm64"] == skips["RotationFunctionX86"]
    # nothing the hardening fixed is skipped: KMS on the topic and the log group, the
    # function's concurrency limit, the function in a VPC, the invoke permission's scope
    fixed = {"CKV_AWS_26", "CKV_AWS_158", "CKV_AWS_117", "CKV_AWS_364"}
    assert not fixed & {i for ids in skips.values() for i in ids}
    for name in rotation_functions(resources):
        assert "CKV_AWS_115" not in skips[name]


# -- the rotation function ---------------------------------------------------------------------


def test_one_rotation_function_per_architecture_default_arm64(
    template: dict[str, Any], resources: dict[str, Any]
) -> None:
    arch = template["Parameters"]["Architecture"]
    assert arch["Default"] == "arm64"
    functions = rotation_functions(resources)
    built = {}
    for name, fn in functions.items():
        props = fn["Properties"]
        [machine] = props["Architectures"]
        condition = template["Conditions"][fn["Condition"]]
        # created exactly when the Architecture parameter names its machine
        assert condition == {"Fn::Equals": [{"Ref": "Architecture"}, machine]}, name
        # ... from the zip `make package` builds for that machine
        assert props["CodeUri"] == f"../dist/dbcreds-rotation-{machine}.zip", name
        built[machine] = name
    assert sorted(built) == sorted(arch["AllowedValues"]) == sorted(build_package.ARCHES)


def test_rotation_function_runtime_matches_the_package(resources: dict[str, Any]) -> None:
    lambda_python = build_package.LAMBDA_PYTHON
    for name, fn in rotation_functions(resources).items():
        runtime = fn["Properties"]["Runtime"]
        assert re.fullmatch(r"python3\.(\d+)", runtime), runtime
        assert int(runtime.split(".")[1]) >= 12, name
        # psycopg-binary in the zip is compiled for exactly this Python
        assert runtime == f"python{lambda_python}", name


def test_rotation_function_in_private_subnets_with_own_security_group(
    template: dict[str, Any], resources: dict[str, Any]
) -> None:
    assert template["Parameters"]["PrivateSubnetIds"]["Type"] == "List<AWS::EC2::Subnet::Id>"
    groups = set()
    for name, fn in rotation_functions(resources).items():
        vpc = fn["Properties"]["VpcConfig"]
        assert vpc["SubnetIds"] == {"Ref": "PrivateSubnetIds"}, name
        [group] = vpc["SecurityGroupIds"]
        groups |= referenced(group)
    [group] = groups
    sg = resources[group]
    assert sg["Type"] == "AWS::EC2::SecurityGroup"
    assert "SecurityGroupIngress" not in sg["Properties"]
    assert not [
        r
        for r in of_type(resources, "AWS::EC2::SecurityGroupIngress").values()
        if referenced(r["Properties"]["GroupId"]) == {group}
    ], "nothing may connect to the rotation function"

    def port(value: Any) -> str:
        return str(value["Ref"]) if isinstance(value, dict) else str(int(value))

    ports = {
        (rule["IpProtocol"], port(rule["FromPort"]), port(rule["ToPort"]))
        for item in sg["Properties"]["SecurityGroupEgress"]
        for rule in branches(item)
    }
    assert ports == {("tcp", "DatabasePort", "DatabasePort"), ("tcp", "443", "443")}
    assert not [
        r
        for r in of_type(resources, "AWS::EC2::SecurityGroupEgress").values()
        if referenced(r["Properties"]["GroupId"]) == {group}
    ]


def test_rotation_function_runs_one_invocation_at_a_time(resources: dict[str, Any]) -> None:
    # two rotation steps of the secret must never race (Secrets Manager retries a throttled one)
    for name, fn in rotation_functions(resources).items():
        assert fn["Properties"]["ReservedConcurrentExecutions"] == 1, name


def test_rotation_function_logs_to_its_own_log_group_optionally_with_a_customer_key(
    template: dict[str, Any], resources: dict[str, Any]
) -> None:
    groups = set()
    for fn in rotation_functions(resources).values():
        groups |= referenced(fn["Properties"]["LoggingConfig"]["LogGroup"])
    [group] = groups
    log_group = resources[group]
    assert log_group["Type"] == "AWS::Logs::LogGroup"
    props = log_group["Properties"]
    assert props["RetentionInDays"] == {"Ref": "LogRetentionDays"}
    assert props["KmsKeyId"] == {
        "Fn::If": ["HasTopicAndLogsKey", {"Ref": "TopicAndLogsKmsKeyArn"}, NO_VALUE]
    }
    assert template["Conditions"]["HasTopicAndLogsKey"] == {
        "Fn::Not": [{"Fn::Equals": [{"Ref": "TopicAndLogsKmsKeyArn"}, ""]}]
    }
    # the same key, when given, encrypts the failure topic
    [topic] = of_type(resources, "AWS::SNS::Topic").values()
    assert topic["Properties"]["KmsMasterKeyId"] == props["KmsKeyId"]
    # empty by default; a key ARN, never an alias: not aws/sns, whose key policy cannot let
    # EventBridge and CloudWatch alarms publish, and Logs takes key ARNs only
    param = template["Parameters"]["TopicAndLogsKmsKeyArn"]
    assert param["Default"] == ""
    pattern = param["AllowedPattern"]
    assert pattern_accepts(pattern, "")
    assert pattern_accepts(
        pattern, "arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
    )
    assert pattern_accepts(pattern, "arn:aws:kms:eu-west-1:123456789012:key/mrk-1234abcd12ab34cd")
    for alias in ("alias/aws/sns", "arn:aws:kms:eu-west-1:123456789012:alias/aws/sns"):
        assert not pattern_accepts(pattern, alias), alias
    assert "alias/aws/sns" not in json.dumps(resources)


def https_egress(sg: dict[str, Any]) -> list[tuple[str | None, dict[str, Any]]]:
    return [
        (condition, rule)
        for condition, rule in conditional_items(sg["Properties"]["SecurityGroupEgress"])
        if rule["FromPort"] == 443
    ]


def test_https_egress_goes_to_the_endpoints_else_to_an_explicit_cidr(
    template: dict[str, Any], resources: dict[str, Any]
) -> None:
    conditions = template["Conditions"]
    sm = {"Condition": "CreateSmEndpoint"}
    sns = {"Condition": "CreateSnsEp"}
    assert conditions["CreateSmEndpoint"] == {
        "Fn::Equals": [{"Ref": "CreateSecretsManagerEndpoint"}, "true"]
    }
    assert conditions["CreateSnsEp"] == {"Fn::Equals": [{"Ref": "CreateSnsEndpoint"}, "true"]}
    [endpoint_group] = {
        g
        for r in of_type(resources, "AWS::EC2::VPCEndpoint").values()
        for g in referenced(r["Properties"]["SecurityGroupIds"][0])
    }
    [rotation_group] = {
        g
        for fn in rotation_functions(resources).values()
        for g in referenced(fn["Properties"]["VpcConfig"]["SecurityGroupIds"][0])
    }
    # the rotation function reaches Secrets Manager and SNS: the endpoints' group whenever this
    # stack creates an endpoint, the CIDR only when it does not create both
    expected = {
        rotation_group: (
            {"Fn::Or": [sm, sns]},
            {"Fn::Not": [{"Fn::And": [sm, sns]}]},
        ),
        # applications reach Secrets Manager only
        "ProxyClientSecurityGroup": (
            {"Fn::Equals": [{"Ref": "CreateSecretsManagerEndpoint"}, "true"]},
            {"Fn::Not": [sm]},
        ),
    }
    for group, (to_endpoints, to_cidr) in expected.items():
        rules = https_egress(resources[group])
        assert len(rules) == 2, group
        [(c1, endpoint_rule)] = [(c, r) for c, r in rules if "DestinationSecurityGroupId" in r]
        [(c2, cidr_rule)] = [(c, r) for c, r in rules if "CidrIp" in r]
        assert endpoint_rule["DestinationSecurityGroupId"] == {"Ref": endpoint_group}, group
        assert c1 is not None and conditions[c1] == to_endpoints, group
        assert cidr_rule["CidrIp"] == {"Ref": "HttpsEgressCidr"}, group
        assert c2 is not None and conditions[c2] == to_cidr, group
        # the endpoints let the group in
        assert [
            r
            for r in of_type(resources, "AWS::EC2::SecurityGroupIngress").values()
            if r["Properties"]["GroupId"] == {"Ref": endpoint_group}
            and r["Properties"]["SourceSecurityGroupId"] == {"Ref": group}
            and r["Properties"]["FromPort"] == 443
        ], group
    # nowhere a literal open destination
    assert "0.0.0.0/0" not in json.dumps(resources)
    assert "::/0" not in json.dumps(resources)
    # HttpsEgressCidr: no default destination, and required whenever a CIDR rule exists
    param = template["Parameters"]["HttpsEgressCidr"]
    assert param["Default"] == ""
    assert pattern_accepts(param["AllowedPattern"], "10.0.0.0/16")
    assert not pattern_accepts(param["AllowedPattern"], "sg-0123456789abcdef0")
    rule = template["Rules"]["HttpsEgressNeedsDestination"]
    assert rule["RuleCondition"] == {
        "Fn::Or": [
            {"Fn::Equals": [{"Ref": "CreateSecretsManagerEndpoint"}, "false"]},
            {"Fn::Equals": [{"Ref": "CreateSnsEndpoint"}, "false"]},
        ]
    }
    assert [a["Assert"] for a in rule["Assertions"]] == [
        {"Fn::Not": [{"Fn::Equals": [{"Ref": "HttpsEgressCidr"}, ""]}]}
    ]


def test_every_security_group_rule_has_a_description(resources: dict[str, Any]) -> None:
    # in every Fn::If branch too: checkov's CKV_AWS_23 cannot see those (skipped in the template)
    seen = 0
    for name, res in resources.items():
        props = res.get("Properties", {})
        if res["Type"] == "AWS::EC2::SecurityGroup":
            rules = [
                rule
                for key in ("SecurityGroupIngress", "SecurityGroupEgress")
                for item in props.get(key, [])
                for rule in branches(item)
            ]
        elif res["Type"] in ("AWS::EC2::SecurityGroupIngress", "AWS::EC2::SecurityGroupEgress"):
            rules = [props]
        else:
            continue
        for rule in rules:
            assert isinstance(rule.get("Description"), str) and rule["Description"], (name, rule)
            seen += 1
    assert seen >= 12


def test_rotation_function_environment(template: dict[str, Any], resources: dict[str, Any]) -> None:
    from dbcreds.rotation.settings import DEFAULT_EXCLUDE_CHARACTERS, DEFAULT_PASSWORD_LENGTH

    params = template["Parameters"]
    for name, fn in rotation_functions(resources).items():
        env = fn["Properties"]["Environment"]["Variables"]
        assert env["ROTATION_STRATEGY"] == {"Ref": "RotationStrategy"}, name
        assert env["PASSWORD_LENGTH"] == {"Ref": "PasswordLength"}, name
        assert env["EXCLUDE_CHARACTERS"] == {"Ref": "ExcludeCharacters"}, name
        # the endpoint variables exist only when an endpoint URL is given
        for var in ("SECRETS_MANAGER_ENDPOINT", "AWS_ENDPOINT_URL_SECRETS_MANAGER"):
            assert env[var] == {
                "Fn::If": ["HasSmEndpointUrl", {"Ref": "SecretsManagerEndpointUrl"}, NO_VALUE]
            }, (name, var)
        # the master secret is the operator's choice, never the rotated secret's
        assert env["DBCREDS_ROTATION_MASTER_SECRET_ARN"] == {
            "Fn::If": ["HasMasterSecret", {"Ref": "MasterSecretArn"}, NO_VALUE]
        }, name
    # TLS: no downgrade through the template
    assert "disable" not in params["RotationSslMode"]["AllowedValues"]
    # the template's defaults are the library's
    assert params["ExcludeCharacters"]["Default"] == DEFAULT_EXCLUDE_CHARACTERS
    assert int(params["PasswordLength"]["Default"]) == DEFAULT_PASSWORD_LENGTH
    assert params["RotationStrategy"]["Default"] == "single-user"
    assert sorted(params["RotationStrategy"]["AllowedValues"]) == [
        "alternating-users",
        "single-user",
    ]


def test_endpoint_url_parameters_accept_https_only(template: dict[str, Any]) -> None:
    urls = {n: p for n, p in template["Parameters"].items() if n.lower().endswith("url")}
    assert "SecretsManagerEndpointUrl" in urls
    for name, param in urls.items():
        pattern = param["AllowedPattern"]
        assert pattern_accepts(pattern, ""), name  # empty: the regional default
        for good in (
            "https://vpce-0123abcd-4567efgh.secretsmanager.eu-west-1.vpce.amazonaws.com",
            "https://secretsmanager.eu-west-1.amazonaws.com:443/",
        ):
            assert pattern_accepts(pattern, good), (name, good)
        for bad in (
            "http://secretsmanager.eu-west-1.amazonaws.com",
            "HTTP://secretsmanager.eu-west-1.amazonaws.com",
            "ftp://secretsmanager.eu-west-1.amazonaws.com",
            "secretsmanager.eu-west-1.amazonaws.com",
            "https://",
            "https://user@evil.example",
            " https://secretsmanager.eu-west-1.amazonaws.com",
        ):
            assert not pattern_accepts(pattern, bad), (name, bad)


def test_secrets_manager_vpc_endpoint_is_optional_with_private_dns(
    template: dict[str, Any], resources: dict[str, Any]
) -> None:
    [(name, endpoint)] = [
        (n, r)
        for n, r in of_type(resources, "AWS::EC2::VPCEndpoint").items()
        if "secretsmanager" in str(r["Properties"]["ServiceName"])
    ]
    props = endpoint["Properties"]
    assert props["VpcEndpointType"] == "Interface"
    assert props["PrivateDnsEnabled"] is True
    assert props["SubnetIds"] == {"Ref": "PrivateSubnetIds"}
    assert template["Conditions"][endpoint["Condition"]] == {
        "Fn::Equals": [{"Ref": "CreateSecretsManagerEndpoint"}, "true"]
    }, name


# -- IAM ---------------------------------------------------------------------------------------


def test_every_statement_names_its_actions(resources: dict[str, Any]) -> None:
    seen = 0
    for name, statement in policy_statements(resources):
        assert "NotAction" not in statement, (name, statement)
        assert "NotResource" not in statement, (name, statement)
        actions = as_list(statement["Action"])
        assert actions, (name, statement)
        for action in actions:
            assert isinstance(action, str), (name, action)
            assert re.fullmatch(r"[a-z0-9-]+:[A-Za-z]+", action), (name, action)
        seen += 1
    assert seen >= 10


def test_every_permission_is_scoped_except_what_aws_cannot_scope(
    resources: dict[str, Any],
) -> None:
    for name, statement in policy_statements(resources):
        if "Principal" in statement and "Resource" not in statement:
            continue  # a trust policy: its subject is the role itself
        if statement["Effect"] == "Deny":
            continue  # restricts; never grants
        targets = as_list(statement["Resource"])
        if any(t == "*" for t in targets):
            assert set(as_list(statement["Action"])) <= UNSCOPED_ACTIONS, (name, statement)
            assert targets == ["*"], (name, statement)


def test_rotation_role_rotates_that_secret_only(
    template: dict[str, Any], resources: dict[str, Any]
) -> None:
    roles = {
        next(iter(referenced(fn["Properties"]["Role"])))
        for fn in rotation_functions(resources).values()
    }
    [role_name] = roles
    role = resources[role_name]["Properties"]
    statements = [s for n, s in policy_statements({role_name: resources[role_name]})]
    grants = [s for s in statements if "Resource" in s]

    by_action: dict[str, list[Any]] = {}
    for s in grants:
        for action in as_list(s["Action"]):
            by_action.setdefault(action, []).append(s["Resource"])
    secret = {"Ref": "SecretArn"}
    for action in (
        "secretsmanager:DescribeSecret",
        "secretsmanager:PutSecretValue",
        "secretsmanager:UpdateSecretVersionStage",
    ):
        assert by_action[action] == [secret], action
    assert secret in by_action["secretsmanager:GetSecretValue"]
    assert by_action["secretsmanager:GetRandomPassword"] == ["*"]
    assert by_action["sns:Publish"] == [{"Ref": "FailureTopic"}]

    # the master secret only for alternating-users, read-only
    [master] = [s for s in grants if s["Resource"] == {"Ref": "MasterSecretArn"}]
    assert as_list(master["Action"]) == ["secretsmanager:GetSecretValue"]
    [if_master] = [
        s["Fn::If"]
        for doc in role["Policies"]
        for s in doc["PolicyDocument"]["Statement"]
        if isinstance(s, dict) and "Fn::If" in s and s["Fn::If"][1] == master
    ]
    condition = template["Conditions"][if_master[0]]
    assert {"Condition": "IsAlternating"} in condition["Fn::And"]
    assert template["Conditions"]["IsAlternating"] == {
        "Fn::Equals": [{"Ref": "RotationStrategy"}, "alternating-users"]
    }

    # KMS only when customer keys are given, only through Secrets Manager, and only for data
    # keys of that secret (Secrets Manager puts the secret's ARN in the encryption context)
    def guarded_by(statement: dict[str, Any]) -> str:
        [if_kms] = [
            s["Fn::If"]
            for doc in role["Policies"]
            for s in doc["PolicyDocument"]["Statement"]
            if isinstance(s, dict) and "Fn::If" in s and s["Fn::If"][1] == statement
        ]
        assert if_kms[2] == NO_VALUE
        return str(if_kms[0])

    via_secrets_manager = {"Fn::Sub": "secretsmanager.${AWS::Region}.${AWS::URLSuffix}"}
    secret_keys = [s for s in grants if s["Resource"] == {"Ref": "KmsKeyArns"}]
    [kms] = [s for s in secret_keys if "kms:GenerateDataKey" in as_list(s["Action"])]
    assert sorted(as_list(kms["Action"])) == ["kms:Decrypt", "kms:GenerateDataKey"]
    assert kms["Condition"] == {
        "StringEquals": {
            "kms:ViaService": via_secrets_manager,
            "kms:EncryptionContext:SecretARN": {"Ref": "SecretArn"},
        }
    }
    assert guarded_by(kms) == "HasKmsKeys"
    # the master secret's versions: decrypt only, with its own ARN, for alternating-users only
    [master_kms] = [s for s in secret_keys if s is not kms]
    assert as_list(master_kms["Action"]) == ["kms:Decrypt"]
    assert master_kms["Condition"] == {
        "StringEquals": {
            "kms:ViaService": via_secrets_manager,
            "kms:EncryptionContext:SecretARN": {"Ref": "MasterSecretArn"},
        }
    }
    master_condition = template["Conditions"][guarded_by(master_kms)]
    assert sorted(master_condition["Fn::And"], key=str) == [
        {"Condition": "HasKmsKeys"},
        {"Condition": "ReadsMasterSecret"},
    ]
    # the only other KMS grant: the failure topic's key, through SNS, for that topic
    [topic_kms] = [
        s
        for s in grants
        if s not in secret_keys and any(a.startswith("kms:") for a in as_list(s["Action"]))
    ]
    assert topic_kms["Resource"] == {"Ref": "TopicAndLogsKmsKeyArn"}
    assert topic_kms["Condition"] == {
        "StringEquals": {
            "kms:ViaService": {"Fn::Sub": "sns.${AWS::Region}.${AWS::URLSuffix}"},
            "kms:EncryptionContext:aws:sns:topicArn": {"Ref": "FailureTopic"},
        }
    }
    assert guarded_by(topic_kms) == "HasTopicAndLogsKey"

    # no other secretsmanager permission, and only the VPC-access managed policy
    assert {a for a in by_action if a.startswith("secretsmanager:")} == {
        "secretsmanager:DescribeSecret",
        "secretsmanager:GetSecretValue",
        "secretsmanager:PutSecretValue",
        "secretsmanager:UpdateSecretVersionStage",
        "secretsmanager:GetRandomPassword",
    }
    [managed] = role["ManagedPolicyArns"]
    assert VPC_ACCESS_POLICY in str(managed)


def test_functions_get_permissions_only_from_the_explicit_roles(resources: dict[str, Any]) -> None:
    for name, fn in of_type(resources, "AWS::Serverless::Function").items():
        props = fn["Properties"]
        assert "Policies" not in props, name  # SAM policy templates would escape the tests
        assert referenced(props["Role"]) <= set(of_type(resources, "AWS::IAM::Role")), name
    for name, role in of_type(resources, "AWS::IAM::Role").items():
        for arn in role["Properties"].get("ManagedPolicyArns", []):
            assert VPC_ACCESS_POLICY in str(arn), name


def test_secrets_manager_may_invoke_the_function_from_this_account(
    resources: dict[str, Any],
) -> None:
    [permission] = of_type(resources, "AWS::Lambda::Permission").values()
    props = permission["Properties"]
    assert props["Principal"] == "secretsmanager.amazonaws.com"
    assert props["Action"] == "lambda:InvokeFunction"
    assert props["SourceAccount"] == {"Ref": "AWS::AccountId"}
    # ... and on behalf of the rotated secret only (no confused deputy through another secret)
    assert props["SourceArn"] == {"Ref": "SecretArn"}
    assert referenced(props["FunctionName"]) == set(rotation_functions(resources))


# -- schedule ----------------------------------------------------------------------------------


def test_schedule_defaults_to_90_days(template: dict[str, Any], resources: dict[str, Any]) -> None:
    [schedule] = of_type(resources, "AWS::SecretsManager::RotationSchedule").values()
    props = schedule["Properties"]
    assert props["SecretId"] == {"Ref": "SecretArn"}
    assert props["RotationRules"]["AutomaticallyAfterDays"] == {"Ref": "RotationDays"}
    assert int(template["Parameters"]["RotationDays"]["Default"]) == 90
    assert referenced(props["RotationLambdaARN"]) == set(rotation_functions(resources))
    # Secrets Manager checks it may invoke the function when the schedule is created
    assert schedule["DependsOn"] in (
        "RotationFunctionInvokePermission",
        ["RotationFunctionInvokePermission"],
    )


# -- failure visibility ------------------------------------------------------------------------


def test_alarm_rule_topic_and_function_are_wired_together(
    resources: dict[str, Any],
) -> None:
    [topic] = of_type(resources, "AWS::SNS::Topic")
    topic_ref = {"Ref": topic}
    functions = rotation_functions(resources)

    # the function notifies the topic itself, and may
    for name, fn in functions.items():
        env = fn["Properties"]["Environment"]["Variables"]
        assert env["ROTATION_FAILURE_TOPIC_ARN"] == topic_ref, name

    # the alarm watches the rotation function's errors and tells the topic
    [alarm_name] = of_type(resources, "AWS::CloudWatch::Alarm")
    alarm = resources[alarm_name]["Properties"]
    assert (alarm["Namespace"], alarm["MetricName"]) == ("AWS/Lambda", "Errors")
    [dimension] = alarm["Dimensions"]
    assert dimension["Name"] == "FunctionName"
    assert referenced(dimension["Value"]) == set(functions)
    assert alarm["AlarmActions"] == [topic_ref]

    # the rule matches Secrets Manager's rotation failures for this secret and tells the topic
    [rule_name] = of_type(resources, "AWS::Events::Rule")
    rule = resources[rule_name]["Properties"]
    pattern = rule["EventPattern"]
    assert pattern["source"] == ["aws.secretsmanager"]
    assert pattern["detail-type"] == ["AWS Service Event via CloudTrail"]
    assert "RotationFailed" in pattern["detail"]["eventName"]
    assert pattern["detail"]["additionalEventData"]["SecretId"] == [{"Ref": "SecretArn"}]
    assert [t["Arn"] for t in rule["Targets"]] == [topic_ref]

    # the topic lets exactly that rule and that alarm publish
    [policy] = of_type(resources, "AWS::SNS::TopicPolicy").values()
    assert policy["Properties"]["Topics"] == [topic_ref]
    allowed = {
        s["Principal"]["Service"]: s["Condition"]["ArnEquals"]["aws:SourceArn"]
        for s in policy["Properties"]["PolicyDocument"]["Statement"]
        if s["Effect"] == "Allow"
    }
    assert allowed == {
        "events.amazonaws.com": {"Fn::GetAtt": [rule_name, "Arn"]},
        "cloudwatch.amazonaws.com": {"Fn::GetAtt": [alarm_name, "Arn"]},
    }


def test_email_subscription_is_optional(
    template: dict[str, Any], resources: dict[str, Any]
) -> None:
    [subscription] = of_type(resources, "AWS::SNS::Subscription").values()
    assert subscription["Properties"]["Protocol"] == "email"
    assert template["Parameters"]["AlertEmail"]["Default"] == ""
    assert template["Conditions"][subscription["Condition"]] == {
        "Fn::Not": [{"Fn::Equals": [{"Ref": "AlertEmail"}, ""]}]
    }


# -- proxy -------------------------------------------------------------------------------------


def test_proxy_requires_tls_uses_the_secret_and_optional_iam_auth(
    template: dict[str, Any], resources: dict[str, Any]
) -> None:
    [(proxy_name, proxy)] = of_type(resources, "AWS::RDS::DBProxy").items()
    props = proxy["Properties"]
    assert props["RequireTLS"] is True
    assert props["EngineFamily"] == "POSTGRESQL"
    [auth] = props["Auth"]
    assert auth["AuthScheme"] == "SECRETS"
    assert auth["SecretArn"] == {"Ref": "SecretArn"}
    assert auth["IAMAuth"] == {"Ref": "ProxyIAMAuth"}
    iam = template["Parameters"]["ProxyIAMAuth"]
    assert iam["Default"] == "DISABLED"
    assert sorted(iam["AllowedValues"]) == ["DISABLED", "REQUIRED"]
    [group] = of_type(resources, "AWS::RDS::DBProxyTargetGroup").values()
    assert group["Properties"]["DBProxyName"] == {"Ref": proxy_name}
    # the proxy's role reads that secret, nothing more
    [role] = referenced(props["RoleArn"])
    granted = [s for _, s in policy_statements({role: resources[role]}) if "Resource" in s]
    secretsmanager = [s for s in granted if "secretsmanager" in str(s["Action"])]
    assert [(s["Action"], s["Resource"]) for s in secretsmanager] == [
        ("secretsmanager:GetSecretValue", {"Ref": "SecretArn"})
    ]


# -- example application -----------------------------------------------------------------------


def test_example_app_reads_through_the_proxy_with_get_and_describe_secret_only(
    template: dict[str, Any], resources: dict[str, Any]
) -> None:
    apps = {
        n: r
        for n, r in of_type(resources, "AWS::Serverless::Function").items()
        if n not in rotation_functions(resources)
    }
    [app] = apps.values()
    assert template["Conditions"][app["Condition"]] == {
        "Fn::Equals": [{"Ref": "DeployExampleApp"}, "true"]
    }
    props = app["Properties"]
    module, func = props["Handler"].rsplit(".", 1)
    source = ROTATION / "example_app" / f"{module}.py"
    assert f"def {func}(" in source.read_text()
    assert source == build_package.EXAMPLE_APP  # the build puts it in the zip
    env = props["Environment"]["Variables"]
    # Password logins read the secret; with the proxy's IAM auth, tokens for ExampleAppDbUser.
    assert env["DBCREDS_SECRET_ID"] == {
        "Fn::If": ["IsProxyIAMAuth", {"Ref": "AWS::NoValue"}, {"Ref": "SecretArn"}]
    }
    assert env["DBCREDS_IAM_USER"] == {
        "Fn::If": ["IsProxyIAMAuth", {"Ref": "ExampleAppDbUser"}, {"Ref": "AWS::NoValue"}]
    }
    assert template["Conditions"]["IsProxyIAMAuth"] == {
        "Fn::Equals": [{"Ref": "ProxyIAMAuth"}, "REQUIRED"]
    }
    [proxy] = of_type(resources, "AWS::RDS::DBProxy")
    assert env["DBCREDS_HOST"] == {"Fn::GetAtt": [proxy, "Endpoint"]}
    assert "DBCREDS_SSLMODE" not in env  # verify-full, the default: nothing may lower it
    assert props["VpcConfig"]["SubnetIds"] == {"Ref": "PrivateSubnetIds"}

    [role] = referenced(props["Role"])
    granted = [s for _, s in policy_statements({role: resources[role]}) if "Resource" in s]
    secretsmanager = [s for s in granted if "secretsmanager" in str(s["Action"])]
    # GetSecretValue, and DescribeSecret (LastRotatedDate: a refusal at a rotation's tail)
    assert [(s["Action"], s["Resource"]) for s in secretsmanager] == [
        (["secretsmanager:GetSecretValue", "secretsmanager:DescribeSecret"], {"Ref": "SecretArn"})
    ]
    others = {a for s in granted for a in as_list(s["Action"])} - {
        "secretsmanager:GetSecretValue", "secretsmanager:DescribeSecret"}
    assert others <= {"kms:Decrypt", "rds-db:connect"}

    # IAM logins to this proxy as its own database user only, never as any user (dbuser:.../*)
    [connect] = [s for s in granted if as_list(s["Action"]) == ["rds-db:connect"]]
    arn, variables = connect["Resource"]["Fn::Sub"]
    assert arn.endswith(":dbuser:${ProxyId}/${ExampleAppDbUser}"), arn
    assert arn.startswith("arn:${AWS::Partition}:rds-db:${AWS::Region}:${AWS::AccountId}:"), arn
    assert "*" not in arn
    assert variables == {
        "ProxyId": {"Fn::Select": [6, {"Fn::Split": [":", {"Fn::GetAtt": [proxy, "DBProxyArn"]}]}]}
    }


# -- outputs and documentation -----------------------------------------------------------------


def test_outputs(template: dict[str, Any], resources: dict[str, Any]) -> None:
    outputs = template["Outputs"]
    [proxy] = of_type(resources, "AWS::RDS::DBProxy")
    [topic] = of_type(resources, "AWS::SNS::Topic")
    assert outputs["ProxyEndpoint"]["Value"] == {"Fn::GetAtt": [proxy, "Endpoint"]}
    assert referenced(outputs["RotationFunctionArn"]["Value"]) == set(rotation_functions(resources))
    assert outputs["FailureTopicArn"]["Value"] == {"Ref": topic}


def test_readme_documents_every_parameter(template: dict[str, Any]) -> None:
    readme = (ROTATION / "README.md").read_text()
    rows = set(re.findall(r"^\|\s*`(\w+)`\s*\|", readme, flags=re.MULTILINE))
    assert set(template["Parameters"]) <= rows

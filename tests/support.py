"""What several test modules share: the repository's paths, the build script loaded once,
and the fakes of the pure-logic tests (a clock, a Secrets Manager fetcher, a refusal)."""

from __future__ import annotations

import functools
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from dbcreds import SecretsManagerUnavailable

REPO = Path(__file__).resolve().parent.parent
ROTATION = REPO / "rotation"


@functools.cache
def build_package() -> ModuleType:
    """``rotation/build_package.py`` as a module, loaded once for every test module."""
    spec = importlib.util.spec_from_file_location("build_package", ROTATION / "build_package.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("build_package", module)
    spec.loader.exec_module(module)
    return module


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeSM:
    """Versions by stage; counts calls; can fail."""

    def __init__(self) -> None:
        self.stages: dict[str, tuple[str, str]] = {}
        self.calls: list[str] = []
        self.down = False

    def put(self, stage: str, version: str, password: str) -> None:
        doc = {"engine": "postgres", "host": "h", "port": 5432, "username": "u",
               "password": password}
        self.stages[stage] = (version, json.dumps(doc))

    def __call__(self, secret_id: str, stage: str) -> dict[str, Any]:
        self.calls.append(stage)
        if self.down:
            raise SecretsManagerUnavailable(secret_id, "ServiceUnavailable")
        if stage not in self.stages:
            from dbcreds import SecretNotFound
            raise SecretNotFound(secret_id)
        version, text = self.stages[stage]
        return {"VersionId": version, "SecretString": text}


class Refused(Exception):
    pass


class StaticSource:
    """A CredentialSource holding one secret (no AWS): the unit tests of the integrations."""

    def __init__(self, password: str = "S3cret-Value", secret_id: str = "prod/app") -> None:
        from dbcreds import DbSecret

        self.secret_id = secret_id
        self.secret = DbSecret(username="app", password=password, host="db.example",
                               port=5432, dbname="appdb", version_id="v1", secret_id=secret_id)
        self.fetches = 0

    def get(self) -> Any:
        return self.secret

    def refresh(self, stale: Any = None) -> Any:
        self.fetches += 1
        return self.secret

    def get_pending(self, stale: Any = None) -> Any:
        return None

    def changed_recently(self, within: float) -> bool:
        return False

    def invalidate(self) -> None:
        pass

    def get_stats(self) -> dict[str, Any]:
        return {}


# -- telemetry: what the sinks received ------------------------------------------------------


def otel_sums(reader: Any) -> dict[str, dict[tuple[tuple[str, Any], ...], Any]]:
    """name -> {sorted attributes: sum (counters) or count (histograms)}."""
    data = reader.get_metrics_data()
    out: dict[str, dict[tuple[tuple[str, Any], ...], Any]] = {}
    for rm in data.resource_metrics if data else []:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                for point in metric.data.data_points:
                    key = tuple(sorted(point.attributes.items()))
                    value = getattr(point, "value", None)
                    out.setdefault(metric.name, {})[key] = (
                        value if value is not None else point.count)
    return out


def emf_counts(text: str) -> dict[str, float]:
    """metric name -> total over every EMF line (counters), or number of values (histograms)."""
    totals: dict[str, float] = {}
    for line in text.splitlines():
        doc = json.loads(line)
        for directive in doc["_aws"]["CloudWatchMetrics"]:
            for metric in directive["Metrics"]:
                value = doc[metric["Name"]]
                totals[metric["Name"]] = totals.get(metric["Name"], 0) + (
                    len(value) if isinstance(value, list) else value)
    return totals

"""The rotation function's environment variables are listed once, in
``dbcreds.rotation.settings.ENVIRONMENT``: the tests' ``rotation_env`` fixture clears them."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from typing import Any

from dbcreds.rotation.settings import ENVIRONMENT, RotationSettings


class Recording(Mapping[str, str]):
    """An empty environment that records every variable asked for."""

    def __init__(self) -> None:
        self.asked: set[str] = set()

    def __getitem__(self, key: str) -> str:
        self.asked.add(key)
        raise KeyError(key)

    def get(self, key: str, default: Any = None) -> Any:
        self.asked.add(key)
        return default

    def __contains__(self, key: object) -> bool:
        if isinstance(key, str):
            self.asked.add(key)
        return False

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


def test_environment_lists_exactly_what_from_env_reads() -> None:
    env = Recording()
    RotationSettings.from_env(env)
    assert env.asked == set(ENVIRONMENT)
    assert len(ENVIRONMENT) == len(set(ENVIRONMENT))


def test_rotation_env_clears_every_variable_but_the_stack_ca(
    rotation_env: dict[str, str],
) -> None:
    left = {name for name in ENVIRONMENT if name in os.environ}
    assert left == {"DBCREDS_ROTATION_SSLROOTCERT"}
    ca = "DBCREDS_ROTATION_SSLROOTCERT"
    assert os.environ[ca] == rotation_env[ca]
    assert RotationSettings.from_env().strategy.value == "single-user"

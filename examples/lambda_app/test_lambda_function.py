"""The test a dbcreds user writes to prove, in their own CI, that their Lambda survives a
rotation of its secret: the ``dbcreds_app`` fixture of the dbcreds-testing pytest plugin gives
it a real PostgreSQL behind an RDS Proxy stand-in, a Secrets Manager endpoint, a secret, and the
environment a deployed function would have.

At every step of a rotation (the rotation window is open for half a second after each), a
container that is already warm serves a request, and a container that starts cold at that very
moment (its first login happens inside the window) serves one too.
"""

from __future__ import annotations

from typing import Any

import dbcreds
import lambda_function


def test_the_handler_survives_a_rotation(dbcreds_app: Any) -> None:
    event = {"customer": "c-42"}
    assert lambda_function.handler(event, None)["user"] == dbcreds_app.username
    served: list[str] = []

    def at_each_step(step: Any) -> None:
        assert lambda_function.handler(event, None)["customer"] == "c-42"  # warm container
        dbcreds.close_default_pool()  # a container starting cold, inside the rotation window
        assert lambda_function.handler(event, None)["customer"] == "c-42"
        served.append(step.step.value)

    dbcreds_app.rotate(pause=0.5, between_steps=at_each_step)
    assert served == ["createSecret", "setSecret", "testSecret", "finishSecret"]
    assert lambda_function.handler(event, None)["user"] == dbcreds_app.username


def test_twice_in_a_row(dbcreds_app: Any) -> None:
    """Rotations back to back (each waits until the proxy serves the new password)."""
    for _ in range(2):
        dbcreds_app.rotate()
        dbcreds.close_default_pool()  # a cold container after each rotation
        assert lambda_function.handler({}, None)["user"] == dbcreds_app.username
    assert dbcreds_app.rotations == 2

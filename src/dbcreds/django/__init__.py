"""Django integration: ``DATABASES = {"default": {"ENGINE": "dbcreds.django", ...}}``.

Django loads ``dbcreds.django.base`` (its ``DatabaseWrapper``) when the engine is first used;
this package itself imports nothing, so naming it costs nothing until Django connects. See
``dbcreds.django.base`` and the README ("Django integration").

Install with ``pip install 'dbcreds[django]'`` (Django 4.2 to 5.2 with psycopg 3; Django 6.x
needs Python 3.12 or newer).
"""

from __future__ import annotations

__all__: list[str] = []

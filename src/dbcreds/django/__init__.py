"""Django integration: ``DATABASES = {"default": {"ENGINE": "dbcreds.django", ...}}``.

Django loads ``dbcreds.django.base`` (its ``DatabaseWrapper``) when the engine is first used;
this package itself imports nothing, so naming it costs nothing until Django connects. See
``dbcreds.django.base`` and the README ("Django integration").

Install with ``pip install 'dbcreds[django]'``: Django 5.1 or newer (5.1 brought its connection
pool), psycopg 3; tested with Django 5.2 (LTS). Django 6.x needs Python 3.12 or newer.
"""

from __future__ import annotations

__all__: list[str] = []

"""Run by ``manage.py test`` (Django's test runner: it creates the test database)."""

from django.db import connection
from django.test import TestCase

from dbapp.models import Item


class ItemTests(TestCase):
    def test_orm_round_trip_in_the_test_database(self) -> None:
        Item.objects.create(name="one")
        self.assertEqual(Item.objects.count(), 1)
        self.assertTrue(connection.settings_dict["NAME"].startswith("test_"))
        with connection.cursor() as cursor:
            cursor.execute("select current_database()")
            self.assertEqual(cursor.fetchone()[0], connection.settings_dict["NAME"])

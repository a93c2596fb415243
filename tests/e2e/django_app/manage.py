"""The Django project of tests/e2e/test_django.py (run in a subprocess: Django is configured
once per process). Settings come from DJAPP_* environment variables (dbapp/settings.py)."""

import os
import sys

if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dbapp.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)

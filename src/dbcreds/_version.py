"""The version of dbcreds (one place: ``dbcreds.__version__``, the user agent, telemetry)."""

__version__ = "0.1.0"

"""Helpers shared by the test suite (see ``tests/support/server.py`` for the reference server)."""

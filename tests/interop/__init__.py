"""Interop with real third-party clients that cannot share our virtualenv (see ``venv``)."""

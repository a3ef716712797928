"""Shared test fixtures (the ``ws_client`` fixture comes from the wsevents pytest plugin)."""

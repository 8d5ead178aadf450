"""Prefect flows (wiring only) and the ``mlcore`` command line."""

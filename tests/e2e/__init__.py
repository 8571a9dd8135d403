"""End-to-end: the project deployed on a real Prefect server, run by a worker (see conftest.py)."""

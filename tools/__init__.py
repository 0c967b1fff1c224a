"""Developer tooling: the embedded Postgres and the demo runner (not imported by DAGs)."""

-- The sync's own schema (its name comes from the DAG's user_defined_macros).
CREATE SCHEMA IF NOT EXISTS {{ schema }}

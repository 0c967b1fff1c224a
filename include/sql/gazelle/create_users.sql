-- Technicians (Gazelle users).
CREATE TABLE IF NOT EXISTS users (
    id          text PRIMARY KEY,
    first_name  text,
    last_name   text,
    email       text,
    status      text,
    created_at  timestamptz,
    updated_at  timestamptz,
    ingested_at timestamptz NOT NULL DEFAULT now()
)

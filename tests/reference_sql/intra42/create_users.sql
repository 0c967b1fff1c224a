-- The application's users: cursus-21 students from the 42 intra API.
CREATE TABLE IF NOT EXISTS users (
    id               bigint PRIMARY KEY,
    login            text        NOT NULL,
    email            text        NOT NULL,
    first_name       text,
    last_name        text,
    pool_month       text,
    pool_year        text,
    location         text,
    wallet           integer,
    correction_point integer,
    updated_at       timestamptz NOT NULL,
    ingested_at      timestamptz NOT NULL DEFAULT now(),
    deleted_at       timestamptz
)

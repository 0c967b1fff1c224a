-- Pianos, each belonging to a client.
CREATE TABLE IF NOT EXISTS pianos (
    id            text PRIMARY KEY,
    client_id     text NOT NULL REFERENCES clients (id),
    make          text,
    model         text,
    serial_number text,
    type          text,
    year          integer,
    status        text,
    location      text,
    notes         text,
    created_at    timestamptz,
    updated_at    timestamptz NOT NULL,
    ingested_at   timestamptz NOT NULL DEFAULT now()
)

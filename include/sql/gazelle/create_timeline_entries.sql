-- A client's history (services, notes, invoices...).
CREATE TABLE IF NOT EXISTS timeline_entries (
    id          text PRIMARY KEY,
    client_id   text NOT NULL REFERENCES clients (id),
    piano_id    text REFERENCES pianos (id),
    user_id     text,
    occurred_at timestamptz NOT NULL,
    type        text,
    summary     text,
    comment     text,
    ingested_at timestamptz NOT NULL DEFAULT now()
)

-- A client's history (services, notes, invoices...). No foreign keys: entries load even when the clients or
-- pianos sync failed (a reference resolves once its client or piano is loaded).
CREATE TABLE IF NOT EXISTS timeline_entries (
    id          text PRIMARY KEY,
    client_id   text NOT NULL,
    piano_id    text,
    user_id     text,
    invoice_id  text,
    estimate_id text,
    occurred_at timestamptz NOT NULL,
    type        text,
    summary     text,
    comment     text,
    ingested_at timestamptz NOT NULL DEFAULT now()
)

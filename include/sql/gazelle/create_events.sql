-- Calendar events (appointments and the rest). No foreign keys: appointments load even when the clients or
-- users sync failed or was skipped (a reference resolves once its client is loaded). local_date/local_time:
-- the start in the account's time zone (the DAG's GAZELLE_TIMEZONE). An event gone from its window upstream
-- keeps its row with status 'CANCELLED'.
CREATE TABLE IF NOT EXISTS events (
    id                  text PRIMARY KEY,
    client_id           text,
    user_id             text,
    title               text,
    start               timestamptz NOT NULL,
    local_date          date NOT NULL,
    local_time          time NOT NULL,
    duration            integer,
    is_all_day          boolean,
    type                text,
    status              text,
    notes               text,
    confirmed_by_client boolean,
    piano_ids           text[] NOT NULL,
    created_at          timestamptz,
    updated_at          timestamptz,
    ingested_at         timestamptz NOT NULL DEFAULT now()
)

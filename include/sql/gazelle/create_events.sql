-- Calendar events (appointments and the rest); user_id is the technician (no foreign key: the users sync
-- may be skipped while a new technician already has events).
CREATE TABLE IF NOT EXISTS events (
    id                  text PRIMARY KEY,
    client_id           text REFERENCES clients (id),
    user_id             text,
    title               text,
    start               timestamptz NOT NULL,
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

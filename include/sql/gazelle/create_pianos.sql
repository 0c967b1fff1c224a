-- Pianos, each belonging to a client; dampp_chaser_*: the humidity-control system installed in it.
CREATE TABLE IF NOT EXISTS pianos (
    id                            text PRIMARY KEY,
    client_id                     text NOT NULL REFERENCES clients (id),
    make                          text,
    model                         text,
    serial_number                 text,
    type                          text,
    year                          integer,
    status                        text,
    location                      text,
    notes                         text,
    dampp_chaser_installed        boolean,
    dampp_chaser_humidistat_model text,
    dampp_chaser_mfg_date         date,
    created_at                    timestamptz,
    updated_at                    timestamptz,
    ingested_at                   timestamptz NOT NULL DEFAULT now()
)

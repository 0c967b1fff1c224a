-- A client's contacts (fetched with the client).
CREATE TABLE IF NOT EXISTS contacts (
    id           text PRIMARY KEY,
    client_id    text NOT NULL REFERENCES clients (id) ON DELETE CASCADE,
    is_default   boolean NOT NULL,
    first_name   text,
    last_name    text,
    title        text,
    wants_email  boolean,
    wants_text   boolean,
    email        text,
    phone        text,
    street1      text,
    street2      text,
    municipality text,
    postal_code  text,
    region       text,
    created_at   timestamptz,
    updated_at   timestamptz,
    ingested_at  timestamptz NOT NULL DEFAULT now()
)

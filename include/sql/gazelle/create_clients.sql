-- Clients; their contacts are in contacts.
CREATE TABLE IF NOT EXISTS clients (
    id                      text PRIMARY KEY,
    company_name            text,
    status                  text,
    client_type             text,
    tags                    text[],
    preferred_technician_id text,
    default_contact_id      text,
    created_at              timestamptz,
    updated_at              timestamptz NOT NULL,
    ingested_at             timestamptz NOT NULL DEFAULT now()
)

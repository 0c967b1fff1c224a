-- Clients; their contacts are in contacts. locale: the client's own localization (null = the account default).
CREATE TABLE IF NOT EXISTS clients (
    id                      text PRIMARY KEY,
    company_name            text,
    status                  text,
    client_type             text,
    tags                    text[],
    preferred_technician_id text,
    default_contact_id      text,
    personal_notes          text,
    preference_notes        text,
    locale                  text,
    created_at              timestamptz,
    updated_at              timestamptz,
    ingested_at             timestamptz NOT NULL DEFAULT now()
)

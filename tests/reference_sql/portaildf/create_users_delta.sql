-- This run's lookups, one per application user: what the directory said and the kind it maps to.
-- Unlogged: rebuilt every run.
CREATE UNLOGGED TABLE IF NOT EXISTS users_delta (
    user_id      text PRIMARY KEY,  -- users.id as text: the application chooses its id type
    email        text NOT NULL,
    outcome      text NOT NULL CHECK (outcome IN ('found', 'not_found', 'failed')),
    id_user      bigint,            -- the directory's id, when found
    exterieur    boolean,
    gestionnaire boolean,
    kind         text,
    reason       text               -- why the lookup failed
)

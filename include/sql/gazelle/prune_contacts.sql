-- A synced client's record lists all its contacts: the contacts it no longer lists are removed.
WITH removed AS (
    DELETE FROM contacts c
    WHERE c.client_id IN (SELECT id FROM clients_delta)
      AND NOT EXISTS (SELECT 1 FROM contacts_delta d WHERE d.id = c.id)
    RETURNING 1
)
SELECT count(*) AS removed FROM removed

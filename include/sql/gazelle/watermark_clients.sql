-- The newest change the table holds: the next delta run pages back (newest first) until it.
SELECT max(updated_at) AS watermark FROM clients

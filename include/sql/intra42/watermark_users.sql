-- The newest change the table holds, by the API's own clock: the next incremental run starts here.
SELECT max(updated_at) AS watermark FROM users

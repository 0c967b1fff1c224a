-- Where the next incremental run starts: the newest change the table holds, by the API's own clock, but never
-- past this run's upper bound %(upto)s (a record dated in the future must not make later runs skip the present);
-- the rows dated after it are counted for the report.
SELECT max(updated_at) FILTER (WHERE updated_at <= coalesce(%(upto)s::timestamptz, 'infinity')) AS watermark,
       count(*) FILTER (WHERE updated_at > coalesce(%(upto)s::timestamptz, 'infinity')
                          AND deleted_at IS NULL) AS future_dated
FROM users

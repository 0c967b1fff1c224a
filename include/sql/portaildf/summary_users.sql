-- The kind distribution of the application's users once this run's changes are applied.
SELECT coalesce(json_object_agg(kind, n ORDER BY n DESC, kind), '{}') AS kinds
FROM (SELECT coalesce(kind, '(none)') AS kind, count(*) AS n FROM users GROUP BY 1) AS k

-- What keeps an API timestamp from being a timestamptz (NULL when nothing does): checked with a regular
-- expression and plain comparisons, so a value this accepts cannot make the cast fail afterwards (2026-02-30,
-- hour 25, year 0000, a +99 offset do not pass), and no row needs an exception handler. Inlined by the planner
-- (one SQL expression): a valid value costs one match and a few byte comparisons.
CREATE OR REPLACE FUNCTION timestamp_problem(value text) RETURNS text LANGUAGE sql IMMUTABLE AS $$
SELECT CASE
    WHEN value IS NULL
        OR value !~ '^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-](0\d|1[0-4])(:?[0-5]\d)?)$'
        THEN CASE WHEN value ~ '^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?[+-]\d{2}(:?\d{2})?$'
                  THEN 'UTC offset out of range' ELSE 'missing or not an ISO 8601 timestamp' END
    WHEN substr(value, 1, 4) = '0000'
        OR substr(value, 6, 2) COLLATE "C" NOT BETWEEN '01' AND '12'
        OR substr(value, 9, 2) COLLATE "C" < '01'
        OR substr(value, 9, 2) COLLATE "C" > '28' AND substr(value, 9, 2)::int > CASE substr(value, 6, 2)
            WHEN '02' THEN CASE WHEN substr(value, 1, 4)::int % 4 = 0
                                     AND (substr(value, 1, 4)::int % 100 <> 0 OR substr(value, 1, 4)::int % 400 = 0)
                                THEN 29 ELSE 28 END
            WHEN '04' THEN 30 WHEN '06' THEN 30 WHEN '09' THEN 30 WHEN '11' THEN 30
            ELSE 31 END
        THEN 'no such date'
    WHEN substr(value, 12, 2) COLLATE "C" > '23' OR substr(value, 15, 2) COLLATE "C" > '59'
        OR substr(value, 18, 2) COLLATE "C" > '59'
        THEN 'no such time of day'
END
$$

-- Why Postgres cannot store a line as jsonb (NULL when it can): \u0000, a lone UTF-16 surrogate, NaN...
-- Exception-guarded, so it is called only for the few lines a cheap pre-filter finds suspicious.
CREATE OR REPLACE FUNCTION json_refusal(line text) RETURNS text LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    message text;
    detail  text;
BEGIN
    PERFORM line::jsonb;
    RETURN NULL;
EXCEPTION WHEN others THEN
    GET STACKED DIAGNOSTICS message = MESSAGE_TEXT, detail = PG_EXCEPTION_DETAIL;
    RETURN 'not storable as JSON: ' || message || coalesce(': ' || nullif(detail, ''), '');
END
$$

-- The day views and the appointment window read events by their local day.
CREATE INDEX IF NOT EXISTS events_local_date_idx ON events (local_date)

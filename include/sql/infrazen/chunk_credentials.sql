-- The credentials of one chunk's providers, as the app stores them (plain JSON text).
SELECT id, provider_type, credentials FROM cloud_providers WHERE id = ANY (%(provider_ids)s::int[])

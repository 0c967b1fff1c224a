"""The existing syncs' entities, declared as data (see usersync.entity).

INTRA42_USERS is intra42_users' table, staging and write (tests/reference_sql/intra42 holds the hand-written
SQL it replaced, which tests compare it with: same columns, types, checks and reasons; a stored student is
never replaced by an older updated_at; a full refresh marks the students the API no longer returns).

PORTAILDF_LOOKUPS is Portail DF's lookups, staged into users_delta; `users` is the application's (not ours:
only users_delta and users_raw are made, and portaildf/upsert_users.sql writes users.kind). Answers carry no
email: the stage reads it from the application's users. It stages as the hand-written SQL it replaced
(tests/reference_sql/portaildf) but in two corners lookup_user never produces: a found answer whose `record`
is not an object is refused for "exterieur: missing or not a boolean" (not "record: ..."), and id_user is
checked whatever the outcome (the hand-written SQL failed on a bad one outside a found answer).
"""

from __future__ import annotations

from usersync.entity import Column, Entity

INTRA42_USERS = Entity(
    "users",
    key="id",
    columns=(
        Column("id", "bigint", required=True, condition="record->>'id' NOT LIKE '-%'"),  # (cheaper than a regex)
        Column("login", required=True, check="."),  # an empty login is refused
        Column("email", required=True),
        Column("first_name"),
        Column("last_name"),
        Column("pool_month"),
        Column("pool_year"),
        Column("location"),
        Column("wallet", "integer"),
        Column("correction_point", "integer"),
        Column("updated_at", "timestamptz", required=True, explain=True),  # the cursor; reasons say why
    ),
    cursor="updated_at",
    deletion="mark",  # a full refresh marks the students the API no longer returns
    indexes=("login", "email"),
)

_FOUND = "record->>'outcome' <> 'found' OR jsonb_typeof(record->'record'->{}) = 'boolean'"
PORTAILDF_LOOKUPS = Entity(
    "users",
    key="user_id",
    columns=(
        Column("user_id", required=True),  # users.id as text: the application chooses its id type
        Column("email", required=True, expression="coalesce(btrim(app_user.email), '')"),
        Column(
            "outcome",
            required=True,
            check=("found", "not_found", "failed"),
            refusal="outcome: not one of found, not_found, failed",
        ),
        Column(
            "id_user",
            "bigint",
            path="record.id_user",
            condition="coalesce(record->'record'->>'id_user', '') NOT LIKE '-%'",
        ),
        Column(
            "exterieur",
            "boolean",
            path="record.exterieur",
            condition=_FOUND.format("'exterieur'"),
            refusal="exterieur: missing or not a boolean",
        ),
        Column(
            "gestionnaire",
            "boolean",
            path="record.gestionnaire",
            condition=_FOUND.format("'gestionnaire'"),
            refusal="gestionnaire: missing or not a boolean",
        ),
        Column(
            "kind",
            expression="""CASE WHEN record->>'outcome' <> 'found' THEN NULL
            WHEN record->'record'->'exterieur' = 'true' AND record->'record'->'gestionnaire' = 'true'
                THEN 'prestataire, gestionnaire'
            WHEN record->'record'->'exterieur' = 'true' THEN 'prestataire'
            WHEN record->'record'->'gestionnaire' = 'true' THEN 'gestionnaire'
            ELSE 'aucun' END""",
        ),
        Column("reason"),  # why the lookup failed
    ),
    owned=False,
    join="LEFT JOIN users AS app_user ON app_user.id::text = record->>'user_id'",  # a hash join, not a lookup per row
)

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

INFRAZEN_RESOURCES is the InfraZen bulk sync's resources (usersync.infrazen_bulk), staged into the chunk's
resources_delta; `resources` is the application's, written by infrazen/write_resources.sql. A record the
table cannot hold (a value longer than its varchar, a cost not a number) is quarantined, not written.
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


def _or_default(name: str, default: str, max_length: int, *, if_empty: bool = False) -> Column:
    """A text value that is `default` (trusted SQL) when missing (or empty, `if_empty`); refused when longer
    than the application's varchar."""
    value = f"record->>'{name}'"
    given = f"nullif({value}, '')" if if_empty else value
    return Column(
        name,
        expression=f"coalesce({given}, {default})",
        condition=f"coalesce(length({value}), 0) <= {max_length}",
        refusal=f"{name}: longer than {max_length}",
    )


INFRAZEN_RESOURCES = Entity(
    "resources",
    key=("provider_id", "resource_id", "resource_type"),
    columns=(
        Column("user_id", "integer", required=True),
        Column("provider_id", "integer", required=True),
        Column("resource_id", required=True, check=".", max_length=100),  # an empty id is refused
        Column("resource_type", required=True, check=".", max_length=50),
        _or_default("resource_name", "record->>'resource_id'", 255, if_empty=True),
        _or_default("service_name", "''", 100),
        _or_default("region", "'global'", 100, if_empty=True),
        Column("status", max_length=50),
        Column("external_ip", max_length=45),
        Column("effective_cost", "double precision"),
        Column("daily_cost", "double precision"),
        Column("original_cost", "double precision"),
        _or_default("currency", "'RUB'", 10),
        Column("billing_period", max_length=20),
        Column("cost_period", max_length=20),
        Column("cost_frequency", max_length=20),
        Column("provider_config", "jsonb", expression="coalesce(nullif(record->'provider_config', 'null'), '{}')"),
        Column(
            "tags",
            "jsonb",
            expression="coalesce(nullif(record->'tags', 'null'), '{}')",
            condition="coalesce(jsonb_typeof(record->'tags'), 'null') IN ('object', 'null')",
            refusal="tags: not an object",
        ),
    ),
    owned=False,
)

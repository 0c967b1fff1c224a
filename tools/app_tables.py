"""The applications' own tables that some syncs update but do not own, created and filled for the demo and tests.

portaildf_user_kind only sets users.kind: in production the housing-vacancy platform's users table already
exists. Here it is created in the sync's schema and filled with the sandbox's application users.
"""

from __future__ import annotations

import psycopg
from psycopg import sql

PORTAILDF_USERS = """
CREATE TABLE IF NOT EXISTS {}.users (
    id         uuid PRIMARY KEY,
    email      text,
    kind       text,
    created_at timestamptz NOT NULL DEFAULT now()
)
"""


def seed_portaildf_users(url: str, schema: str, users: list[dict]) -> int:
    """Create <schema>.users if missing and add the users it does not have yet; returns how many were added."""
    with psycopg.connect(url) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
        conn.execute(sql.SQL(PORTAILDF_USERS).format(sql.Identifier(schema)))
        conn.execute("CREATE TEMP TABLE new_users (id uuid, email text, kind text) ON COMMIT DROP")
        with conn.cursor().copy("COPY new_users (id, email, kind) FROM STDIN") as copy:
            for user in users:
                copy.write_row((user["id"], user["email"], user["kind"]))
        added = conn.execute(sql.SQL(
            "INSERT INTO {}.users (id, email, kind) SELECT id, email, kind FROM new_users ON CONFLICT (id) DO NOTHING"
        ).format(sql.Identifier(schema))).rowcount
    return added


def main() -> None:
    """python -m tools.app_tables DB_URL: the portaildf.users table the Portail DF sandbox's users match."""
    import argparse

    from sandbox.portaildf import PortailDFData

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("db_url")
    parser.add_argument("--users", type=int, default=1234, help="as the sandbox's --users")
    parser.add_argument("--seed", type=int, default=0, help="as the sandbox's --seed")
    args = parser.parse_args()
    url = args.db_url.replace("postgres://", "postgresql://", 1)
    added = seed_portaildf_users(url, "portaildf", PortailDFData(args.users, args.seed).app_users())
    print(f"portaildf.users: {added} users added")


if __name__ == "__main__":
    main()

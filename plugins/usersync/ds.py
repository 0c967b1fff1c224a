"""Démarches Simplifiées GraphQL API v2: auth, the pages a sync reads, and dossiers flattened into Grist rows.

Connection (type http): host `https://www.demarches-simplifiees.fr`, password = the administrator API token
(sent as `Authorization: Bearer <token>`), extra `{"rate_limit": "400/m"}` (DS throttles 400 requests a minute
per token and answers 429 with `RateLimit-Reset`, which the client waits for). Queries: include/graphql/ds/.

Flattening: a dossier node becomes one row of each of `dossiers`, `champs` (one column per field) and
`annotations` (one column per private annotation), plus one `repetable_rows` row per row of a repeatable
block. Columns come from the démarche's descriptors: the column id is derived from the descriptor's stable id
(`champ_<n>`, so renaming a field in DS keeps its column), the label is the field's label, the Grist type
follows the champ type (choices for drop-down lists). Cells are in Grist's JSON encoding (Date = epoch seconds
at UTC midnight, DateTime = epoch seconds, ChoiceList = ["L", ...]).
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from usersync.api import ApiClient, ApiError, AuthError
from usersync.graphql_api import GraphQLError, execute, load_query
from usersync.staging import Page, Paginator

GRAPHQL_PATH = "/api/v2/graphql"
PAGE_SIZE = 100  # DS's maximum
STATES = ("en_construction", "en_instruction", "accepte", "refuse", "sans_suite")
TABLES = ("dossiers", "champs", "annotations", "repetable_rows")


class DSToken:
    """The connection's password is the API token; DS tokens are not renewable, so a 401 is final."""

    def headers(self, client: ApiClient) -> dict[str, str]:
        if not client.password:
            raise AuthError(f"connection {client.conn_id}: the password must hold the Démarches Simplifiées token")
        return {"Authorization": f"Bearer {client.password}"}

    def renew(self, client: ApiClient) -> None:
        raise AuthError(f"Démarches Simplifiées refused the token of connection {client.conn_id} (expired?)")


def client(conn_id: str) -> ApiClient:
    return ApiClient(conn_id, auth=DSToken())


def query(api: ApiClient, name: str, variables: dict[str, Any]) -> dict[str, Any]:
    """Run include/graphql/ds/<name>.graphql; a refused token (401/403, or a démarche the token may not read)
    becomes AuthError with the API's own message."""
    try:
        return execute(api, GRAPHQL_PATH, load_query("ds", name), variables)
    except AuthError:
        raise
    except GraphQLError as exc:
        if "[unauthorized]" in str(exc):
            raise AuthError(f"connection {api.conn_id}: the token may not read this démarche: {exc}") from exc
        raise
    except ApiError as exc:
        if re.search(r"answered 40[13]\b", str(exc)):
            raise AuthError(f"Démarches Simplifiées refused the token of connection {api.conn_id}: {exc}") from exc
        raise


# ---------------------------------------------------------------------------------------------- reading


def _connection(data: dict[str, Any], name: str) -> tuple[list[dict], str | None]:
    try:
        page = data["demarche"][name]
        nodes, info = page["nodes"], page["pageInfo"]
        more, cursor = bool(info["hasNextPage"]), info["endCursor"]
    except (KeyError, TypeError) as exc:
        raise GraphQLError(f"demarche.{name} is not a connection with nodes and pageInfo ({exc!r})") from exc
    if more and not cursor:
        raise GraphQLError(f"demarche.{name} says there is a next page but gives no endCursor")
    return nodes, cursor if more else None


def dossiers_paginator(
    api: ApiClient,
    demarche: int,
    *,
    states: tuple[str, ...] | None = None,
    created_since: str | None = None,
    updated_since: str | None = None,
    groupes: set[int] | None = None,
    order: str | None = None,
    page_size: int = PAGE_SIZE,
) -> Paginator:
    """Pages of the démarche's dossiers for `fetch_to_staging` (first state: `first_page()`).

    DS filters on one state per query, so several `states` are walked one after the other; None = every state.
    `updated_since` (a watermark) wins over `created_since` on DS's side and orders the pages by update time,
    so a dossier changed during the walk comes again at the end instead of being skipped. `groupes` (instructor
    group numbers) is applied here: DS lists a démarche's dossiers by group only one group at a time.
    `order` "DESC" walks newest first (deprecated by DS, still served).
    """
    walk = list(states) if states else [None]
    base = {"demarcheNumber": demarche, "createdSince": created_since, "updatedSince": updated_since, "order": order}

    def fetch(state: dict[str, Any]) -> Page:
        index = state["state"]
        data = query(
            api, "dossiers", {**base, "state": walk[index], "first": min(page_size, PAGE_SIZE), "after": state["after"]}
        )
        nodes, cursor = _connection(data, "dossiers")
        if groupes is not None:
            nodes = [n for n in nodes if (n.get("groupeInstructeur") or {}).get("number") in groupes]
        if cursor is not None:
            return Page(nodes, {"state": index, "after": cursor})
        return Page(nodes, {"state": index + 1, "after": None} if index + 1 < len(walk) else None)

    return fetch


def first_page() -> dict[str, Any]:
    return {"state": 0, "after": None}


def deleted_paginator(api: ApiClient, demarche: int, deleted_since: str | None = None) -> Paginator:
    """Pages of the dossiers deleted since `deleted_since` (everything when None), for `fetch_to_staging`."""

    def fetch(state: dict[str, Any]) -> Page:
        data = query(
            api,
            "deleted_dossiers",
            {"demarcheNumber": demarche, "deletedSince": deleted_since, "first": PAGE_SIZE, "after": state["after"]},
        )
        nodes, cursor = _connection(data, "deletedDossiers")
        return Page(nodes, {"after": cursor} if cursor else None)

    return fetch


def fetch_all(paginate: Paginator, first: dict[str, Any]) -> list[Any]:
    """Every record of a paginator, in memory: for the small lists (deleted dossiers)."""
    records, state = [], first
    while state is not None:
        page = paginate(state)
        records.extend(page.records)
        state = page.next
    return records


def fetch_deleted(api: ApiClient, demarche: int, deleted_since: str | None = None) -> list[dict]:
    return fetch_all(deleted_paginator(api, demarche, deleted_since), {"after": None})


def fetch_descriptors(api: ApiClient, demarche: int) -> dict[str, Any]:
    """{id, number, title, state, labels, activeRevision: {id, champDescriptors, annotationDescriptors}}."""
    return query(api, "descriptors", {"demarcheNumber": demarche})["demarche"]


def fetch_groupes(api: ApiClient, demarche: int) -> list[dict]:
    return query(api, "groupe_instructeurs", {"demarcheNumber": demarche})["demarche"]["groupeInstructeurs"]


# ---------------------------------------------------------------------------------------------- columns


@dataclass(frozen=True)
class Column:
    id: str  # Grist column id
    label: str
    type: str  # Grist column type
    choices: tuple[str, ...] = ()
    descriptor_id: str | None = None  # the DS champ descriptor it holds

    def grist(self) -> dict[str, Any]:
        """The column as Grist's POST/PUT /columns take it."""
        fields: dict[str, Any] = {"label": self.label, "type": self.type}
        if self.choices:
            fields["widgetOptions"] = json.dumps({"choices": list(self.choices)}, ensure_ascii=False)
        return {"id": self.id, "fields": fields}


# Descriptor __typename (minus "ChampDescriptor") -> Grist type; everything else is Text.
GRIST_TYPES = {
    "Checkbox": "Bool", "YesNo": "Bool", "TitreIdentite": "Bool", "Civilite": "Choice", "DropDownList": "Choice",
    "MultipleDropDownList": "ChoiceList", "IntegerNumber": "Int", "Number": "Int", "DecimalNumber": "Numeric",
    "Date": "Date", "Datetime": "DateTime:Europe/Paris",
}  # fmt: skip
LAYOUT = ("HeaderSection", "Explication")  # no value: no column
DATETIME = "DateTime:Europe/Paris"

DOSSIER_COLUMNS = (
    Column("number", "Numéro", "Int"),
    Column("dossier_id", "ID", "Text"),
    Column("state", "État", "Choice", STATES),
    Column("archived", "Archivé", "Bool"),
    Column("date_depot", "Date de dépôt", DATETIME),
    Column("date_passage_en_instruction", "Date de passage en instruction", DATETIME),
    Column("date_traitement", "Date de traitement", DATETIME),
    Column("date_derniere_modification", "Dernière modification", DATETIME),
    Column("groupe_instructeur_number", "Groupe instructeur (numéro)", "Int"),
    Column("groupe_instructeur", "Groupe instructeur", "Text"),
    Column("usager_email", "Email de l'usager", "Text"),
    Column("demandeur", "Demandeur", "Text"),
    Column("motivation", "Motivation", "Text"),
    Column("labels", "Étiquettes", "ChoiceList"),  # choices: the démarche's labels
)
KEY = Column("number", "Numéro du dossier", "Int")
ROW_COLUMNS = (
    KEY,
    Column("row_id", "Ligne", "Text"),
    Column("row_index", "Position", "Int"),
    Column("block", "Bloc", "Text"),
    Column("block_label", "Libellé du bloc", "Text"),
)


def kind(descriptor: dict[str, Any]) -> str:
    return descriptor["__typename"].removesuffix("ChampDescriptor")


def column_id(descriptor_id: str) -> str:
    """`champ_<stable id>` from DS's global id (base64 of `Champ-<n>`); any other id is made a valid Grist id."""
    try:
        decoded = base64.b64decode(descriptor_id, validate=True).decode()
    except (ValueError, UnicodeDecodeError):
        decoded = ""
    match = re.fullmatch(r"Champ-(\d+)", decoded)
    return f"champ_{match.group(1)}" if match else "champ_" + re.sub(r"[^A-Za-z0-9]+", "_", descriptor_id).strip("_")


def descriptor_column(descriptor: dict[str, Any]) -> Column:
    options = tuple(descriptor.get("options") or ())
    if kind(descriptor) == "Civilite":
        options = ("M", "Mme")
    typ = GRIST_TYPES.get(kind(descriptor), "Text")
    return Column(
        column_id(descriptor["id"]),
        descriptor["label"],
        typ,
        options if typ in ("Choice", "ChoiceList") else (),
        descriptor["id"],
    )


@dataclass
class Schema:
    """The four tables' columns for one démarche, from its descriptors."""

    tables: dict[str, list[Column]]
    blocks: dict[str, dict[str, Any]] = field(default_factory=dict)  # repetition descriptor id -> descriptor

    def by_descriptor(self, table: str) -> dict[str, Column]:
        return {c.descriptor_id: c for c in self.tables[table] if c.descriptor_id}


def schema(descriptors: dict[str, Any]) -> Schema:
    """Columns of `dossiers`, `champs`, `annotations` and `repetable_rows` from `fetch_descriptors`' answer.
    A repeatable block's inner fields become columns of `repetable_rows` (shared by every block)."""
    revision = descriptors["activeRevision"]
    labels = tuple(label["name"] for label in descriptors.get("labels") or ())
    dossier_columns = [Column(c.id, c.label, c.type, labels) if c.id == "labels" else c for c in DOSSIER_COLUMNS]
    tables: dict[str, list[Column]] = {
        "dossiers": dossier_columns,
        "champs": [KEY],
        "annotations": [KEY],
        "repetable_rows": list(ROW_COLUMNS),
    }
    blocks = {}
    for table, key in (("champs", "champDescriptors"), ("annotations", "annotationDescriptors")):
        for descriptor in revision[key]:
            if kind(descriptor) == "Repetition":
                blocks[descriptor["id"]] = descriptor
                tables["repetable_rows"].extend(descriptor_column(inner) for inner in descriptor["champDescriptors"])
            elif kind(descriptor) not in LAYOUT:
                tables[table].append(descriptor_column(descriptor))
    return Schema(tables, blocks)


# ---------------------------------------------------------------------------------------------- values


def _epoch(value: str | None) -> int | None:
    return None if not value else int(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp())


def _day(value: str | None) -> int | None:
    if not value:
        return None
    day = date.fromisoformat(value[:10])
    return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp())


def cell(champ: dict[str, Any], column: Column) -> Any:
    """A champ's value encoded for its Grist column."""
    typename = champ.get("__typename")
    text = champ.get("stringValue")
    if column.type == "Bool":
        if typename == "TitreIdentiteChamp":
            return bool(champ.get("filled"))
        value = champ.get("checked", champ.get("selected"))
        return None if value is None else bool(value)
    if column.type == "Int":
        value = champ.get("integerNumber", text)
        return None if value in (None, "") else int(value)
    if column.type == "Numeric":
        value = champ.get("decimalNumber", text)
        return None if value in (None, "") else float(value)
    if column.type == "Date":
        return _day(champ.get("date"))
    if column.type.startswith("DateTime"):
        return _epoch(champ.get("datetime"))
    if column.type == "ChoiceList":
        values = champ.get("values") or []
        return ["L", *values] if values else None
    if column.type == "Choice":
        return champ.get("civilite") or champ.get("value") or text or None
    if typename == "PieceJustificativeChamp":  # file URLs are signed and expire: names only, so reruns match
        return "\n".join(f["filename"] for f in champ.get("files") or []) or None
    if typename == "CarteChamp":
        areas = champ.get("geoAreas") or []
        return json.dumps(areas, ensure_ascii=False, sort_keys=True) if areas else None
    if typename == "LinkedDropDownListChamp":
        parts = [p for p in (champ.get("primaryValue"), champ.get("secondaryValue")) if p]
        return " / ".join(parts) or None
    if typename == "DossierLinkChamp":
        return str((champ.get("dossier") or {}).get("number") or text or "") or None
    return text if text != "" else None


def _values(champs: list[dict[str, Any]], columns: dict[str, Column]) -> dict[str, Any]:
    """Every column of the table (None when the dossier has no such champ): rows all carry the same keys."""
    row = dict.fromkeys((c.id for c in columns.values()), None)
    for champ in champs:
        column = columns.get(champ.get("champDescriptorId"))
        if column is not None:
            row[column.id] = cell(champ, column)
    return row


def _demandeur(demandeur: dict[str, Any] | None) -> str | None:
    if not demandeur:
        return None
    if demandeur.get("siret"):
        return demandeur["siret"]
    return " ".join(p for p in (demandeur.get("civilite"), demandeur.get("prenom"), demandeur.get("nom")) if p) or None


def flatten(dossier: dict[str, Any], schema: Schema) -> dict[str, list[dict[str, Any]]]:
    """One dossier node (as include/graphql/ds/dossiers.graphql selects it) -> {table: rows} for the four tables."""
    number = dossier["number"]
    group = dossier.get("groupeInstructeur") or {}
    labels = [label["name"] for label in dossier.get("labels") or []]
    main = {
        "number": number,
        "dossier_id": dossier["id"],
        "state": dossier["state"],
        "archived": bool(dossier.get("archived")),
        "date_depot": _epoch(dossier.get("dateDepot")),
        "date_passage_en_instruction": _epoch(dossier.get("datePassageEnInstruction")),
        "date_traitement": _epoch(dossier.get("dateTraitement")),
        "date_derniere_modification": _epoch(dossier.get("dateDerniereModification")),
        "groupe_instructeur_number": group.get("number"),
        "groupe_instructeur": group.get("label"),
        "usager_email": (dossier.get("usager") or {}).get("email"),
        "demandeur": _demandeur(dossier.get("demandeur")),
        "motivation": dossier.get("motivation"),
        "labels": ["L", *labels] if labels else None,
    }
    rows: dict[str, list[dict[str, Any]]] = {"dossiers": [main]}
    inner = schema.by_descriptor("repetable_rows")
    repeated = []
    for table, key in (("champs", "champs"), ("annotations", "annotations")):
        champs = dossier.get(key) or []
        rows[table] = [{"number": number, **_values(champs, schema.by_descriptor(table))}]
        for champ in champs:
            block = schema.blocks.get(champ.get("champDescriptorId"))
            if block is None:
                continue
            for index, row in enumerate(champ.get("rows") or []):
                repeated.append(
                    {
                        "number": number,
                        "row_id": row["id"],
                        "row_index": index,
                        "block": column_id(block["id"]),
                        "block_label": block["label"],
                        **_values(row.get("champs") or [], inner),
                    }
                )
    rows["repetable_rows"] = repeated
    return rows


INSTRUCTEUR_COLUMNS = (  # key: (groupe_number, instructeur_id)
    Column("groupe_number", "Groupe instructeur (numéro)", "Int"),
    Column("groupe", "Groupe instructeur", "Text"),
    Column("groupe_closed", "Groupe fermé", "Bool"),
    Column("instructeur_id", "ID de l'instructeur", "Text"),
    Column("email", "Email de l'instructeur", "Text"),
)


def instructeur_rows(groupes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The `instructeurs` table (INSTRUCTEUR_COLUMNS): one row per (instructor, group)."""
    return [
        {
            "groupe_number": g["number"],
            "groupe": g["label"],
            "groupe_closed": bool(g.get("closed")),
            "instructeur_id": i["id"],
            "email": i["email"],
        }
        for g in groupes
        for i in g.get("instructeurs") or []
    ]

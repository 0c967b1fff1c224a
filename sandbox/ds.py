"""Sandbox of the Démarches Simplifiées GraphQL API v2 (spec: /work/shared/specs/ds.md).

The schema is DS's own SDL (``sandbox/ds_spec/schema.graphql``, copied verbatim); every query is validated by
graphql-core with the rules DS applies (every specified rule except OverlappingFieldsCanBeMerged, which graphql-ruby
does not enforce and the official persisted query ``ds-query-v2`` breaks), then executed with the schema's resolvers
by a plain executor (graphql-core itself for errors and anything unusual). ``DSData`` holds deterministic démarches
(descriptors of every champ type, instructor groups, dossiers whose champs are built on demand); ``create_app``
serves them as ``POST /api/v2/graphql`` does: Bearer/Token auth parsed like Rails, Relay pages of at most 100,
``createdSince``/``updatedSince`` (the latter wins and orders by update time), one ``state``, ``deletedDossiers``,
the ``__typename`` backward-compatibility rule, and rack-attack's fixed-window throttle (400 requests/minute per
``Authorization`` value) answering 429 with ``RateLimit-Reset`` and no ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import base64
import bisect
import json
import random
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from zoneinfo import ZoneInfo

from fastapi import FastAPI, Request
from graphql import (
    ExecutionResult,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    GraphQLIncludeDirective,
    GraphQLList,
    GraphQLNonNull,
    GraphQLSkipDirective,
    InlineFragmentNode,
    OperationDefinitionNode,
    OperationType,
    Visitor,
    build_schema,
    execute_sync,
    is_abstract_type,
    is_leaf_type,
    parse,
    validate,
    visit,
)
from graphql.execution.values import get_argument_values, get_variable_values
from graphql.validation import OverlappingFieldsCanBeMergedRule, specified_rules
from starlette.responses import Response

from sandbox.common import Controls, Faults, Sandbox, injected_error, install, json_response

SPEC_DIR = Path(__file__).with_name("ds_spec")
SDL = (SPEC_DIR / "schema.graphql").read_text()
PERSISTED_QUERIES = {"ds-query-v2": (SPEC_DIR / "ds-query-v2.graphql").read_text()}
# graphql-ruby (DS's server) does not check that same-named fields merge; the persisted query relies on it.
RULES = tuple(rule for rule in specified_rules if rule is not OverlappingFieldsCanBeMergedRule)

GRAPHQL_PATH = "/api/v2/graphql"
DEFAULT_TOKEN = "usersync-ds-sandbox-token"
PAGE_SIZE = 100  # default and maximum (bigger `first`/`last` are clamped)
RATE_LIMIT, RATE_PERIOD = 400, 60  # rack-attack: requests per Authorization value per fixed window
PARIS = ZoneInfo("Europe/Paris")
EPOCH_START = int(datetime(2025, 1, 6, 8, tzinfo=UTC).timestamp() * 1_000_000)  # first deposit, microseconds
SPAN = 365 * 86_400 * 1_000_000  # deposits spread over a year
COWBOY = (
    "Calme toi, cowboy ! Tu fais trop de requêtes. Réessaie plus tard.\n"
    "Calm down, cowboy! You're making too many requests. Try again later.\n"
)

# TypeDeChamp -> (descriptor __typename, champ __typename). Several descriptor kinds have no value type of
# their own: their values come back as TextChamp (and legacy `number` as IntegerNumberChamp).
KINDS = {
    "text": ("TextChampDescriptor", "TextChamp"),
    "repetition": ("RepetitionChampDescriptor", "RepetitionChamp"),
    "piece_justificative": ("PieceJustificativeChampDescriptor", "PieceJustificativeChamp"),
    "address": ("AddressChampDescriptor", "AddressChamp"),
    "carte": ("CarteChampDescriptor", "CarteChamp"),
    "drop_down_list": ("DropDownListChampDescriptor", "DropDownListChamp"),
    "multiple_drop_down_list": ("MultipleDropDownListChampDescriptor", "MultipleDropDownListChamp"),
    "linked_drop_down_list": ("LinkedDropDownListChampDescriptor", "LinkedDropDownListChamp"),
    "checkbox": ("CheckboxChampDescriptor", "CheckboxChamp"),
    "yes_no": ("YesNoChampDescriptor", "YesNoChamp"),
    "civilite": ("CiviliteChampDescriptor", "CiviliteChamp"),
    "integer_number": ("IntegerNumberChampDescriptor", "IntegerNumberChamp"),
    "decimal_number": ("DecimalNumberChampDescriptor", "DecimalNumberChamp"),
    "date": ("DateChampDescriptor", "DateChamp"),
    "datetime": ("DatetimeChampDescriptor", "DatetimeChamp"),
    "textarea": ("TextareaChampDescriptor", "TextChamp"),
    "email": ("EmailChampDescriptor", "TextChamp"),
    "phone": ("PhoneChampDescriptor", "TextChamp"),
    "iban": ("IbanChampDescriptor", "TextChamp"),
    "number": ("NumberChampDescriptor", "IntegerNumberChamp"),
    "communes": ("CommuneChampDescriptor", "CommuneChamp"),
    "departements": ("DepartementChampDescriptor", "DepartementChamp"),
    "regions": ("RegionChampDescriptor", "RegionChamp"),
    "pays": ("PaysChampDescriptor", "PaysChamp"),
    "epci": ("EpciChampDescriptor", "EpciChamp"),
    "siret": ("SiretChampDescriptor", "SiretChamp"),
    "rna": ("RNAChampDescriptor", "RNAChamp"),
    "rnf": ("RNFChampDescriptor", "RNFChamp"),
    "engagement_juridique": ("EngagementJuridiqueChampDescriptor", "EngagementJuridiqueChamp"),
    "dossier_link": ("DossierLinkChampDescriptor", "DossierLinkChamp"),
    "titre_identite": ("TitreIdentiteChampDescriptor", "TitreIdentiteChamp"),
    "header_section": ("HeaderSectionChampDescriptor", "HeaderSectionChamp"),
    "explication": ("ExplicationChampDescriptor", "ExplicationChamp"),
}
# The __typename rule [champ_type.rb resolve_type]: these kinds come back as the fallback type unless the query
# document names their own type in a fragment.
FALLBACK_TYPES = {
    **dict.fromkeys(
        (
            "AddressChamp",
            "CommuneChamp",
            "DepartementChamp",
            "RegionChamp",
            "PaysChamp",
            "HeaderSectionChamp",
            "ExplicationChamp",
            "DropDownListChamp",
        ),
        "TextChamp",
    ),
    "YesNoChamp": "CheckboxChamp",
    "DatetimeChamp": "DateChamp",
}
NO_VALUE = ("header_section", "explication")  # layout champs: no value
REPETITION_KINDS = ("text", "integer_number", "date", "drop_down_list")  # a repeatable block's inner champs
ANNOTATION_KINDS = ("text", "drop_down_list", "yes_no", "date", "decimal_number", "repetition")
STATES = ("en_construction", "en_instruction", "accepte", "refuse", "sans_suite")
STATE_WEIGHTS = (0.25, 0.25, 0.3, 0.12, 0.08)

LABELS = {
    "text": "Nom du projet", "repetition": "Membres du bureau", "piece_justificative": "Budget prévisionnel",
    "address": "Adresse du siège", "carte": "Emprise du projet", "drop_down_list": "Type de structure",
    "multiple_drop_down_list": "Domaines d'action", "linked_drop_down_list": "Département et commune",
    "checkbox": "J'accepte les conditions", "yes_no": "Avez-vous déjà été subventionné ?",
    "civilite": "Civilité du représentant", "integer_number": "Nombre de bénéficiaires",
    "decimal_number": "Montant demandé (€)", "date": "Date de début", "datetime": "Rendez-vous souhaité",
    "textarea": "Description du projet", "email": "Courriel de contact", "phone": "Téléphone",
    "iban": "IBAN", "number": "Nombre de salariés", "communes": "Commune principale",
    "departements": "Département", "regions": "Région", "pays": "Pays de naissance", "epci": "EPCI",
    "siret": "SIRET de l'établissement", "rna": "Numéro RNA", "rnf": "Numéro RNF",
    "engagement_juridique": "Engagement juridique", "dossier_link": "Dossier lié",
    "titre_identite": "Pièce d'identité", "header_section": "Informations générales",
    "explication": "Notice explicative",
}  # fmt: skip
ANNOTATION_LABELS = {
    "text": "Commentaire de l'instructeur", "drop_down_list": "Avis", "yes_no": "Pièces complètes",
    "date": "Date de passage en commission", "decimal_number": "Montant accordé (€)",
    "repetition": "Versements",
}  # fmt: skip
REPETITION_LABELS = {"text": "Nom", "integer_number": "Âge", "date": "Date d'entrée", "drop_down_list": "Rôle"}
OPTIONS = {
    "drop_down_list": ["Association", "Collectivité territoriale", "Entreprise", "Particulier", "Autre"],
    "multiple_drop_down_list": ["Culture", "Sport", "Éducation", "Environnement", "Santé", "Solidarité"],
    "linked_drop_down_list": ["--Rhône--", "Lyon", "Villeurbanne", "--Gironde--", "Bordeaux", "Mérignac",
                              "--Nord--", "Lille", "Roubaix"],
    "annotation": ["Favorable", "Défavorable", "Réservé"],
    "repetition": ["Président·e", "Trésorier·e", "Secrétaire", "Membre"],
}  # fmt: skip

FIRST = (
    "Camille",
    "Léa",
    "Chloé",
    "Zoé",
    "Inès",
    "Hélène",
    "Noémie",
    "Maëlle",
    "Jérôme",
    "François",
    "Noël",
    "Théo",
    "Loïc",
    "Benoît",
    "Amélie",
    "Anaïs",
    "Gaëtan",
    "Éloïse",
    "Côme",
    "Yasmine",
    "Mamadou",
    "Thi Mai",
)
LAST = (
    "Martin",
    "Bernard",
    "Dubois",
    "Lefèvre",
    "Roux",
    "Fournier",
    "Girard",
    "Lambert",
    "Bonnet",
    "François",
    "Mercier",
    "Dupont",
    "Faure",
    "Gaumont-Lévêque",
    "Nguyễn",
    "Benali",
    "O'Connor",
    "de La Tour d'Auvergne",
    "Müller",
    "Diallo",
)
WORDS = (
    "jardin",
    "partagé",
    "quartier",
    "atelier",
    "vélo",
    "réparation",
    "musique",
    "école",
    "forêt",
    "été",
    "solidaire",
    "numérique",
    "théâtre",
    "île",
    "fête",
    "cœur",
    "œuvre",
    "rivière",
    "mémoire",
    "café",
)
# (number, street, postal code, city, INSEE code, département code, département, région code, région, lon, lat)
ADDRESSES = (
    ("12", "Rue de la République", "69001", "Lyon", "69381", "69", "Rhône", "84", "Auvergne-Rhône-Alpes",
     4.8357, 45.7640),
    ("3", "Place de la Bourse", "33000", "Bordeaux", "33063", "33", "Gironde", "75", "Nouvelle-Aquitaine",
     -0.5700, 44.8412),
    ("45 bis", "Boulevard de la Liberté", "59000", "Lille", "59350", "59", "Nord", "32", "Hauts-de-France",
     3.0573, 50.6292),
    ("1", "Allée de l'Église", "97400", "Saint-Denis", "97411", "974", "La Réunion", "04", "La Réunion",
     55.4504, -20.8789),
    ("8", "Chemin des Écoliers", "2A000", "Ajaccio", "2A004", "2A", "Corse-du-Sud", "94", "Corse",
     8.7369, 41.9192),
    ("102", "Avenue Jean-Jaurès", "75019", "Paris", "75119", "75", "Paris", "11", "Île-de-France",
     2.3839, 48.8857),
)  # fmt: skip
EPCIS = (("200046977", "Métropole de Lyon"), ("243300316", "Bordeaux Métropole"), ("200093201", "Métropole "
         "Européenne de Lille"), ("249740101", "CINOR"), ("200066793", "CA du Pays Ajaccien"),
         ("200054781", "Métropole du Grand Paris"))  # fmt: skip
PAYS = (
    ("FR", "France"),
    ("DZ", "Algérie"),
    ("MA", "Maroc"),
    ("SN", "Sénégal"),
    ("VN", "Viêt Nam"),
    ("DE", "Allemagne"),
)
FILES = (
    ("budget-prévisionnel-2025.pdf", "application/pdf"),
    ("statuts signés.pdf", "application/pdf"),
    ("photo_site.jpg", "image/jpeg"),
    ("RIB.png", "image/png"),
    ("tableau_financement.xlsx", "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"),
)


def gid(kind: str, n: object) -> str:
    """DS global ids: base64 of '<Type>-<db id>'."""
    return base64.b64encode(f"{kind}-{n}".encode()).decode()


def iso(micros: int) -> str:
    """Microseconds since the epoch -> '2025-03-04T14:05:33+01:00' (DS answers in Paris time, whole seconds)."""
    return datetime.fromtimestamp(micros // 1_000_000, PARIS).isoformat()


def parse_datetime(value: object) -> int:
    """ISO8601DateTime input -> microseconds since the epoch (no offset = UTC)."""
    if not isinstance(value, str):
        raise ValueError(f"ISO8601DateTime must be a string, got {value!r}")
    text = value.strip().replace("Z", "+00:00").replace("z", "+00:00")
    text = re.sub(r"(\.\d{6})\d+", r"\1", text)
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError as exc:
        raise ValueError(f"{value!r} is not an ISO 8601 date-time") from exc
    parsed = parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed
    return int(parsed.timestamp()) * 1_000_000 + parsed.microsecond


def _error(message: str, code: str) -> GraphQLError:
    return GraphQLError(message, extensions={"code": code})


# ---------------------------------------------------------------------------------------------- data


@dataclass(slots=True)
class DossierMeta:
    """What a dossier keeps between requests; its champs are rebuilt on demand from (seed, number, edits)."""

    number: int
    demarche: int
    state: str
    group: int
    depose: int  # microseconds since the epoch
    updated: int
    archived: bool = False
    deleted: int | None = None  # when it was deleted (then it is listed by deletedDossiers only)
    edits: dict[str, int] = field(default_factory=dict)  # descriptor stable id -> times its value changed
    overrides: dict[str, dict] = field(default_factory=dict)  # descriptor id -> champ fields set by update_dossier


@dataclass
class Demarche:
    number: int
    title: str
    descriptors: list[dict]
    annotations: list[dict]
    groups: list[dict]
    labels: list[dict] = field(default_factory=list)
    revision: int = 1
    dossiers: list[DossierMeta] = field(default_factory=list)


class DSData:
    """Deterministic démarches: ``demarches`` is ((number, dossiers, champs), ...), ``champs`` top-level fields.

    With ``champs`` >= len(KINDS) (33) every champ type is present; fewer keeps the first kinds of ``KINDS``
    (text, repeatable block, files, address, map, drop-down lists...), more repeats them. 10,000 dossiers x 40
    champs generate in well under a second: only the dossiers' metadata are kept, champs are built per request.
    """

    def __init__(self, demarches: tuple[tuple[int, int, int], ...] = ((101, 120, 40), (102, 60, 12)), seed: int = 0):
        if not demarches or len({n for n, _, _ in demarches}) != len(demarches):
            raise ValueError("demarches must be distinct (number, dossiers, champs) triples")
        for number, dossiers, champs in demarches:
            if number < 1 or not 0 <= dossiers <= 100_000 or not 1 <= champs <= 200:
                raise ValueError(f"bad démarche spec {(number, dossiers, champs)}")
        self.spec, self.seed = tuple(demarches), seed
        self._lock = threading.RLock()
        self.generation = 0  # bumped by every change: invalidates the sorted listings
        self._listings: dict[tuple, tuple[list[tuple[int, int]], list[DossierMeta]]] = {}
        self.reset()

    # -------------------------------------------------------------- generation

    def reset(self) -> None:
        with self._lock:
            self.demarches: dict[int, Demarche] = {}
            self.by_number: dict[int, DossierMeta] = {}
            self.mutations = 0
            for index, (number, dossiers, champs) in enumerate(self.spec):
                self.demarches[number] = self._demarche(index, number, dossiers, champs)
            self._changed()

    def _changed(self) -> None:
        self.generation += 1
        self._listings.clear()

    def _descriptor(
        self,
        kind: str,
        stable: int,
        label: str,
        required: bool,
        options: list[str] | None = None,
        inner: list[dict] | None = None,
    ) -> dict:
        descriptor = {
            "__typename": KINDS[kind][0],
            "type": kind,
            "id": gid("Champ", stable),
            "stable": stable,
            "label": label,
            "description": None,
            "required": required,
            "added_later": False,
            "champDescriptors": None,
        }
        if kind in ("drop_down_list", "multiple_drop_down_list", "linked_drop_down_list"):
            descriptor["options"] = list(options or OPTIONS[kind])
            descriptor["otherOption"] = False if kind == "drop_down_list" else None
        if kind == "repetition":
            descriptor["champDescriptors"] = inner or []
        if kind == "header_section":
            descriptor["level"] = 1
        if kind == "explication":
            descriptor["description"] = "Remplissez ce formulaire avec soin : les champs marqués d'un * sont requis."
            descriptor["collapsibleExplanationEnabled"] = False
            descriptor["collapsibleExplanationText"] = None
        if kind == "piece_justificative":
            descriptor["fileTemplate"] = None
        return descriptor

    def _demarche(self, index: int, number: int, dossiers: int, champs: int) -> Demarche:
        rnd = random.Random(f"{self.seed}:demarche:{number}")
        kinds = list(KINDS)
        descriptors, seen = [], Counter()
        for k in range(champs):
            kind = kinds[k % len(kinds)]
            seen[kind] += 1
            stable = number * 10_000 + k + 1
            label = LABELS[kind] + (f" ({seen[kind]})" if seen[kind] > 1 else "")
            inner = None
            if kind == "repetition":
                inner = [
                    self._descriptor(
                        sub,
                        number * 10_000 + 1000 + 10 * k + j,
                        REPETITION_LABELS[sub],
                        j == 0,
                        OPTIONS["repetition"] if sub == "drop_down_list" else None,
                    )
                    for j, sub in enumerate(REPETITION_KINDS)
                ]
            required = kind not in NO_VALUE and rnd.random() < 0.4
            descriptors.append(self._descriptor(kind, stable, label, required, inner=inner))
        annotations = []
        for j, kind in enumerate(ANNOTATION_KINDS):
            stable = number * 10_000 + 5000 + j
            inner = None
            if kind == "repetition":
                inner = [
                    self._descriptor("date", number * 10_000 + 6001, "Date du versement", True),
                    self._descriptor("decimal_number", number * 10_000 + 6002, "Montant versé (€)", True),
                ]
            annotations.append(
                self._descriptor(
                    kind,
                    stable,
                    ANNOTATION_LABELS[kind],
                    False,
                    OPTIONS["annotation"] if kind == "drop_down_list" else None,
                    inner,
                )
            )
        groups = []
        for g, label in enumerate(("défaut", "Instruction Nord", "Instruction Sud — Outre-mer")):
            group_number = number * 10 + g + 1
            instructors = [
                {
                    "id": gid("Instructeur", group_number * 10 + i),
                    "email": f"{_ascii(FIRST[(group_number + i) % len(FIRST)])}."
                    f"{_ascii(LAST[(group_number * 3 + i) % len(LAST)])}@example.gouv.fr",
                }
                for i in range(1 + (group_number + g) % 3)
            ]
            groups.append(
                {
                    "id": gid("GroupeInstructeur", group_number),
                    "number": group_number,
                    "label": label,
                    "closed": False,
                    "instructeurs": instructors,
                }
            )
        demarche = Demarche(
            number,
            f"Subvention {WORDS[index % len(WORDS)]} {number} — appel à projets « {WORDS[(index + 7) % len(WORDS)]} »",
            descriptors,
            annotations,
            groups,
        )
        demarche.labels = [
            {"id": gid("Label", number * 10 + j), "name": name, "color": color}
            for j, (name, color) in enumerate(
                (
                    ("Urgent", "pink_macaron"),
                    ("À relancer", "yellow_tournesol"),
                    ("Pièce manquante", "beige_gris_galet"),
                )
            )
        ]
        base = 20_000_000 + index * 1_000_000
        for i in range(dossiers):
            r = random.Random(f"{self.seed}:{number}:{i}")
            depose = EPOCH_START + (SPAN * i) // max(dossiers, 1) + r.randrange(0, 3_600_000_000)
            updated = depose + r.randrange(0, 120 * 86_400_000_000)
            state = r.choices(STATES, STATE_WEIGHTS)[0]
            meta = DossierMeta(
                base + i * 3 + r.randrange(3),
                number,
                state,
                groups[r.choices((0, 1, 2), (0.5, 0.3, 0.2))[0]]["number"],
                depose,
                updated,
                archived=state in ("accepte", "refuse") and r.random() < 0.1,
            )
            demarche.dossiers.append(meta)
            self.by_number[meta.number] = meta
        return demarche

    # -------------------------------------------------------------- listings

    def listing(
        self, demarche: int, state: str | None, archived: bool | None, group: int | None, by_update: bool
    ) -> tuple[list[tuple[int, int]], list[DossierMeta]]:
        """(sort keys, dossiers) in ascending (depose_at or updated_at, number) order; cached until a change."""
        key = (demarche, state, archived, group, by_update)
        with self._lock:
            cached = self._listings.get(key)
            if cached is None:
                rows = [
                    m
                    for m in self.demarches[demarche].dossiers
                    if m.deleted is None
                    and (state is None or m.state == state)
                    and (archived is None or m.archived == archived)
                    and (group is None or m.group == group)
                ]
                rows.sort(key=lambda m: ((m.updated if by_update else m.depose), m.number))
                cached = [((m.updated if by_update else m.depose), m.number) for m in rows], rows
                self._listings[key] = cached
            return cached

    def deleted(self, demarche: int) -> list[DossierMeta]:
        with self._lock:
            rows = [m for m in self.demarches[demarche].dossiers if m.deleted is not None]
        return sorted(rows, key=lambda m: (m.deleted, m.number))

    # -------------------------------------------------------------- building answers

    def demarche_node(self, number: int) -> dict:
        d = self.demarches[number]
        created = EPOCH_START - 30 * 86_400_000_000
        revision = {
            "id": gid("ProcedureRevision", number * 100 + d.revision),
            "dateCreation": iso(created),
            "datePublication": iso(created + 86_400_000_000),
            "champDescriptors": d.descriptors,
            "annotationDescriptors": d.annotations,
        }
        service = {
            "id": gid("Service", number),
            "nom": "Direction des solidarités",
            "organisme": "Préfecture du Rhône",
            "siret": "17690001900015",
            "typeOrganisme": "service_deconcentre_de_l_etat",
        }
        return {
            "id": gid("Procedure", number),
            "number": number,
            "title": d.title,
            "description": "Aide aux porteurs de projets associatifs.",
            "state": "publiee",
            "declarative": None,
            "dateCreation": iso(created),
            "datePublication": iso(created + 86_400_000_000),
            "dateDerniereModification": iso(created + d.revision * 86_400_000_000),
            "dateFermeture": None,
            "dateDepublication": None,
            "chorusConfiguration": None,
            "activeRevision": revision,
            "publishedRevision": revision,
            "draftRevision": revision,
            "revisions": [revision],
            "revision": revision,
            "champDescriptors": d.descriptors,
            "annotationDescriptors": d.annotations,
            "service": service,
            "labels": d.labels,
            "administrateurs": [],
            "dureeConservationDossiers": 12,
            "opendata": True,
            "tags": [],
            "zones": [],
            "notice": None,
            "deliberation": None,
            "logo": None,
            "demarcheURL": f"https://www.demarches-simplifiees.fr/commencer/subvention-{number}",
            "cadreJuridiqueURL": None,
            "dpoURL": None,
            "siteWebURL": None,
            "noticeURL": None,
            "_number": number,
        }

    def group(self, number: int) -> dict | None:
        for d in self.demarches.values():
            for g in d.groups:
                if g["number"] == number:
                    return g
        return None

    def dossier_node(self, meta: DossierMeta) -> dict:
        """The dossier's fields; `champs`/`annotations` are built by their resolvers (see `champs`)."""
        r = random.Random(f"{self.seed}:dossier:{meta.number}")
        first, last = r.choice(FIRST), r.choice(LAST)
        email = f"{_ascii(first)}.{_ascii(last)}{meta.number % 97}@example.org"
        day = 86_400_000_000
        instruction = meta.depose + day * (1 + meta.number % 9) if meta.state != "en_construction" else None
        traitement = instruction + day * (2 + meta.number % 17) if meta.state in STATES[2:] else None
        group = self.group(meta.group)
        events = [
            {
                "id": gid("Traitement", meta.number * 10 + 1),
                "event": "depose",
                "state": "en_construction",
                "dateTraitement": iso(meta.depose),
                "emailAgentTraitant": None,
                "motivation": None,
                "revision": None,
            }
        ]
        if instruction:
            events.append(
                {
                    "id": gid("Traitement", meta.number * 10 + 2),
                    "event": "passe_en_instruction",
                    "state": "en_instruction",
                    "dateTraitement": iso(instruction),
                    "emailAgentTraitant": group["instructeurs"][0]["email"],
                    "motivation": None,
                    "revision": None,
                }
            )
        if traitement:
            event = {"accepte": "accepte", "refuse": "refuse", "sans_suite": "classe_sans_suite"}[meta.state]
            events.append(
                {
                    "id": gid("Traitement", meta.number * 10 + 3),
                    "event": event,
                    "state": meta.state,
                    "dateTraitement": iso(traitement),
                    "emailAgentTraitant": group["instructeurs"][0]["email"],
                    "motivation": "Dossier incomplet" if meta.state != "accepte" else None,
                    "revision": None,
                }
            )
        return {
            "_meta": meta,
            "id": gid("Dossier", meta.number),
            "number": meta.number,
            "state": meta.state,
            "archived": meta.archived,
            "prefilled": False,
            "dateDepot": iso(meta.depose),
            "datePassageEnConstruction": iso(meta.depose),
            "datePassageEnInstruction": iso(instruction) if instruction else None,
            "dateTraitement": iso(traitement) if traitement else None,
            "dateExpiration": None,
            "dateSuppressionParUsager": None,
            "dateSuppressionParAdministration": None,
            "dateDerniereCorrectionEnAttente": None,
            "dateDerniereModification": iso(meta.updated),
            "dateDerniereModificationChamps": iso(meta.updated),
            "dateDerniereModificationAnnotations": iso(meta.updated),
            "datePrevisionnelleDecisionSVASVR": None,
            "dateTraitementSVASVR": None,
            "motivation": events[-1]["motivation"],
            "motivationAttachment": None,
            "attestation": None,
            "pdf": _file(r, meta.number, f"dossier-{meta.number}.pdf", "application/pdf"),
            "geojson": None,
            "usager": {"id": gid("User", meta.number), "email": email},
            "prenomMandataire": None,
            "nomMandataire": None,
            "deposeParUnTiers": False,
            "connectionUsager": "password",
            "groupeInstructeur": group,
            "instructeurs": group["instructeurs"][:1] if instruction else [],
            "demandeur": {
                "__typename": "PersonnePhysique",
                "id": gid("Individual", meta.number),
                "civilite": r.choice(("M", "Mme")),
                "nom": last,
                "prenom": first,
                "email": email,
                "dateDeNaissance": None,
            },
            "demarche": self.demarche_node(meta.demarche),
            "traitements": events,
            "avis": [],
            "labels": [
                label for j, label in enumerate(self.demarches[meta.demarche].labels) if (meta.number >> j) % 5 == 0
            ],
            "messages": [],
        }

    def champs(self, meta: DossierMeta, annotations: bool = False) -> list[dict]:
        """The dossier's champs (or private annotations) with their real kind in `_kind`."""
        d = self.demarches[meta.demarche]
        return [self._champ(meta, desc, None) for desc in (d.annotations if annotations else d.descriptors)]

    def _champ(self, meta: DossierMeta, desc: dict, row: str | None) -> dict:
        kind, stable = desc["type"], desc["stable"]
        edits = meta.edits.get(str(stable), 0)
        r = random.Random(f"{self.seed}:{meta.number}:{stable}:{row}:{edits}")
        champ = {
            "_kind": KINDS[kind][1],
            "id": gid("Champ", f"{stable}|{row}" if row else stable),
            "champDescriptorId": desc["id"],
            "label": desc["label"],
            "prefilled": False,
            "updatedAt": iso(meta.updated if edits else meta.depose),
            "stringValue": None,
        }
        empty = (desc["added_later"] and not edits) or (not desc["required"] and r.random() < 0.12)
        if kind == "repetition":
            rows = [] if empty else [f"{meta.number}-{stable % 10_000}-{i}" for i in range(r.randrange(1, 4))]
            champ["rows"] = [
                {
                    "id": gid("Row", row_id),
                    "champs": [self._champ(meta, inner, row_id) for inner in desc["champDescriptors"]],
                }
                for row_id in rows
            ]
            champ["stringValue"] = ""
            return champ
        if kind == "header_section":
            champ["level"] = desc["level"]
            return champ
        if kind == "explication" or empty:
            champ = _empty(champ, kind)
        else:
            champ.update(_value(kind, desc, r, meta, self))
        if row is None and desc["id"] in meta.overrides:
            champ.update(meta.overrides[desc["id"]])
        return champ

    # -------------------------------------------------------------- changes (control endpoints)

    def _now(self, meta: DossierMeta) -> int:
        return max(time.time_ns() // 1000, meta.updated + 1)

    def mutate(self, k: int, demarche: int | None = None) -> list[int]:
        """Change one or two champs (sometimes an annotation, sometimes the state) of k dossiers; their
        update time becomes now. Returns their numbers."""
        with self._lock:
            d = self.demarches[demarche or self.spec[0][0]]
            alive = [m for m in d.dossiers if m.deleted is None]
            r = random.Random(f"{self.seed}:mutate:{d.number}:{self.mutations}")
            self.mutations += 1
            chosen = r.sample(alive, min(k, len(alive)))
            editable = [x for x in d.descriptors if x["type"] not in NO_VALUE]
            for meta in chosen:
                for desc in r.sample(editable, min(len(editable), r.choice((1, 2)))):
                    meta.edits[str(desc["stable"])] = meta.edits.get(str(desc["stable"]), 0) + 1
                if r.random() < 0.3:
                    desc = r.choice(d.annotations)
                    meta.edits[str(desc["stable"])] = meta.edits.get(str(desc["stable"]), 0) + 1
                if meta.state == "en_construction" and r.random() < 0.3:
                    meta.state = "en_instruction"
                meta.updated = self._now(meta)
            self._changed()
            return sorted(m.number for m in chosen)

    def add_field(self, demarche: int, kind: str = "text", label: str | None = None, annotation: bool = False) -> dict:
        """A new field in a new revision; existing dossiers have it empty (their update time does not move)."""
        if kind not in KINDS or kind == "repetition":
            raise ValueError(f"unknown or unsupported champ type {kind!r}")
        with self._lock:
            d = self.demarches[demarche]
            target = d.annotations if annotation else d.descriptors
            stable = demarche * 10_000 + 8000 + d.revision
            desc = self._descriptor(kind, stable, label or f"Nouveau champ {d.revision}", False)
            desc["added_later"] = True
            target.append(desc)
            d.revision += 1
            self._changed()
            return _public(desc)

    def update_dossier(
        self, number: int, state: str | None = None, group: int | None = None, champs: dict | None = None
    ) -> dict:
        """Set a dossier's state, instructor group or raw champ fields ({descriptor id: {field: value}}, served
        as they are); its update time becomes now. Returns its public fields."""
        with self._lock:
            meta = self.by_number.get(number)
            if meta is None or meta.deleted is not None:
                raise ValueError(f"no dossier {number}")
            d = self.demarches[meta.demarche]
            if state is not None and state not in STATES:
                raise ValueError(f"state must be one of {STATES}")
            if group is not None and group not in {g["number"] for g in d.groups}:
                raise ValueError(f"démarche {d.number} has no group {group}")
            known = {x["id"] for x in d.descriptors + d.annotations}
            for descriptor_id, fields in (champs or {}).items():
                if descriptor_id not in known or not isinstance(fields, dict):
                    raise ValueError(f"champs: {descriptor_id!r} is no field of démarche {d.number}, or not {{...}}")
            meta.state = state or meta.state
            meta.group = group or meta.group
            meta.overrides.update(champs or {})
            meta.updated = self._now(meta)
            self._changed()
            return {"number": number, "state": meta.state, "group": meta.group, "updated": iso(meta.updated)}

    def set_groupe(self, number: int, label: str | None = None, instructeurs: list[dict] | None = None) -> dict:
        """Rename an instructor group and/or replace its instructors ([{"id"?, "email"}]; without an id, a new
        instructor). Returns the group."""
        with self._lock:
            group = self.group(number)
            if group is None:
                raise ValueError(f"no group {number}")
            if label is not None:
                group["label"] = str(label)
            if instructeurs is not None:
                known = {i["id"] for d in self.demarches.values() for g in d.groups for i in g["instructeurs"]}
                listed = []
                for i in instructeurs:
                    if not isinstance(i, dict) or not isinstance(i.get("email"), str):
                        raise ValueError("instructeurs: [{id?, email}]")
                    new_id = i.get("id") or gid("Instructeur", 1_000_000 + len(known))
                    known.add(new_id)
                    listed.append({"id": new_id, "email": i["email"]})
                group["instructeurs"] = listed
            self._changed()
            return group

    def delete_dossier(self, number: int) -> dict:
        with self._lock:
            meta = self.by_number.get(number)
            if meta is None or meta.deleted is not None:
                raise ValueError(f"no dossier {number} to delete")
            meta.deleted = self._now(meta)
            self._changed()
            return deleted_node(meta)

    def describe(self) -> dict[str, object]:
        with self._lock:
            return {
                "seed": self.seed,
                "generation": self.generation,
                "mutations": self.mutations,
                "demarches": {
                    n: {
                        "dossiers": sum(m.deleted is None for m in d.dossiers),
                        "deleted": sum(m.deleted is not None for m in d.dossiers),
                        "champs": len(d.descriptors),
                        "annotations": len(d.annotations),
                        "revision": d.revision,
                        "groupes": [g["number"] for g in d.groups],
                    }
                    for n, d in self.demarches.items()
                },
            }

    # -------------------------------------------------------------- ground truth for tests

    def truth(self, demarche: int) -> list[dict]:
        """Every listed dossier of a démarche: {number, state, group, dateDepot, dateDerniereModification,
        champs, annotations} with champs as built (real kinds in `_kind`), in deposit order."""
        _, rows = self.listing(demarche, None, None, None, False)
        return [
            {
                "number": m.number,
                "state": m.state,
                "group": m.group,
                "dateDepot": iso(m.depose),
                "dateDerniereModification": iso(m.updated),
                "champs": self.champs(m),
                "annotations": self.champs(m, annotations=True),
            }
            for m in rows
        ]


def _public(descriptor: dict) -> dict:
    return {k: v for k, v in descriptor.items() if k not in ("stable", "added_later")}


def deleted_node(meta: DossierMeta) -> dict:
    return {
        "id": gid("Dossier", meta.number),
        "number": meta.number,
        "state": meta.state,
        "dateSupression": iso(meta.deleted),
        "reason": "user_request",
    }


def _ascii(text: str) -> str:
    import unicodedata

    folded = unicodedata.normalize("NFKD", text.lower()).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9]+", "-", folded).strip("-")


def _file(r: random.Random, number: int, name: str, content_type: str) -> dict:
    size = r.randrange(10_000, 5_000_000)
    checksum = base64.b64encode(r.randbytes(16)).decode()
    return {
        "__typename": "File",
        "filename": name,
        "contentType": content_type,
        "checksum": checksum,
        "byteSize": size,
        "byteSizeBigInt": str(size),
        "createdAt": iso(EPOCH_START),
        "url": f"https://static.demarches-simplifiees.fr/{number}/{checksum[:8]}/{name}",
        "virusScanResult": "safe",
    }


def _address(r: random.Random) -> tuple[dict, dict, dict]:
    num, street, postal, city, insee, dep, dep_name, reg, reg_name, lon, lat = r.choice(ADDRESSES)
    label = f"{num} {street} {postal} {city}"
    address = {
        "label": label,
        "type": "housenumber",
        "streetAddress": f"{num} {street}",
        "streetNumber": num,
        "streetName": street,
        "postalCode": postal,
        "cityName": city,
        "cityCode": insee,
        "departmentName": dep_name,
        "departmentCode": dep,
        "regionName": reg_name,
        "regionCode": reg,
        "countryCode": "FR",
        "countryName": "France",
        "geometry": {"type": "Point", "coordinates": [lon, lat]},
    }
    return address, {"name": city, "code": insee, "postalCode": postal}, {"name": dep_name, "code": dep}


_EMPTY = {
    "checkbox": {"value": False, "stringValue": "Non"},
    "multiple_drop_down_list": {"values": []},
    "piece_justificative": {"files": []},
    "carte": {"geoAreas": [], "stringValue": ""},
    "titre_identite": {"filled": False, "grantType": "piece_justificative"},
}


def _empty(champ: dict, kind: str) -> dict:
    champ.update(_EMPTY.get(kind, {}))
    return champ


def _value(kind: str, desc: dict, r: random.Random, meta: DossierMeta, data: DSData) -> dict:
    """The type-specific fields of a filled champ (and its stringValue)."""
    words = " ".join(r.choice(WORDS) for _ in range(r.randrange(2, 5)))
    if kind == "text":
        value = words.capitalize() + r.choice(("", " 🌱", " & co", " — « bis »"))
        return {"value": value, "stringValue": value}
    if kind == "textarea":
        value = f"{words.capitalize()}.\nDeuxième ligne : {r.choice(WORDS)} ; 100 % {r.choice(WORDS)}."
        return {"value": value, "stringValue": value}
    if kind == "email":
        value = f"{_ascii(r.choice(FIRST))}.{_ascii(r.choice(LAST))}@asso-{r.choice(WORDS)}.fr"
        return {"value": value, "stringValue": value}
    if kind == "phone":
        value = "0" + str(r.choice((1, 4, 6, 7))) + " " + " ".join(f"{r.randrange(100):02d}" for _ in range(4))
        return {"value": value, "stringValue": value}
    if kind == "iban":
        value = "FR76 " + " ".join(f"{r.randrange(10_000):04d}" for _ in range(5)) + f" {r.randrange(1000):03d}"
        return {"value": value, "stringValue": value}
    if kind == "checkbox":
        value = r.random() < 0.6
        return {"value": value, "stringValue": "Oui" if value else "Non"}
    if kind == "yes_no":
        value = r.random() < 0.5
        return {"value": value, "stringValue": "Oui" if value else "Non"}
    if kind == "civilite":
        value = r.choice(("M", "Mme"))
        return {"value": value, "stringValue": value}
    if kind == "drop_down_list":
        value = r.choice(desc["options"])
        return {"value": value, "stringValue": value}
    if kind == "multiple_drop_down_list":
        values = sorted(r.sample(desc["options"], r.randrange(1, 4)), key=desc["options"].index)
        return {"values": values, "stringValue": ", ".join(values)}
    if kind == "linked_drop_down_list":
        groups, current = {}, None
        for option in desc["options"]:
            if option.startswith("--"):
                current = option.strip("-")
                groups[current] = []
            else:
                groups[current].append(option)
        primary = r.choice(list(groups))
        secondary = r.choice(groups[primary])
        return {"primaryValue": primary, "secondaryValue": secondary, "stringValue": f"{primary} / {secondary}"}
    if kind in ("integer_number", "number"):
        value = str(r.choice((r.randrange(0, 500), r.randrange(0, 10**12), -r.randrange(1, 50))))
        return {"value": value, "stringValue": value}
    if kind == "decimal_number":
        value = round(r.uniform(0, 250_000), 2)
        return {"value": value, "stringValue": str(value)}
    if kind == "date":
        day = datetime.fromtimestamp((meta.depose + r.randrange(0, 200) * 86_400_000_000) // 1_000_000, PARIS)
        return {
            "date": day.date().isoformat(),
            "value": day.replace(hour=0, minute=0, second=0).isoformat(),
            "stringValue": day.strftime("%d/%m/%Y"),
        }
    if kind == "datetime":
        moment = iso(meta.depose + r.randrange(0, 200 * 86_400) * 1_000_000)
        return {"datetime": moment, "stringValue": moment[:16].replace("T", " ")}
    if kind == "address":
        address, commune, departement = _address(r)
        return {"address": address, "commune": commune, "departement": departement, "stringValue": address["label"]}
    if kind == "communes":
        _, commune, departement = _address(r)
        return {
            "commune": commune,
            "departement": departement,
            "stringValue": f"{commune['name']} ({commune['postalCode']})",
        }
    if kind == "departements":
        _, _, departement = _address(r)
        return {"departement": departement, "stringValue": f"{departement['code']} – {departement['name']}"}
    if kind == "regions":
        row = r.choice(ADDRESSES)
        return {"region": {"name": row[8], "code": row[7]}, "stringValue": row[8]}
    if kind == "pays":
        code, name = r.choice(PAYS)
        return {"pays": {"name": name, "code": code}, "stringValue": name}
    if kind == "epci":
        index = r.randrange(len(EPCIS))
        departement = {"name": ADDRESSES[index][6], "code": ADDRESSES[index][5]}
        return {
            "epci": {"code": EPCIS[index][0], "name": EPCIS[index][1]},
            "departement": departement,
            "stringValue": EPCIS[index][1],
        }
    if kind == "siret":
        address, _, _ = _address(r)
        siren = f"{r.randrange(10**8, 10**9)}"
        siret = siren + f"{r.randrange(10**4, 10**5)}"
        name = f"Association {r.choice(WORDS)} {r.choice(WORDS)}".upper()
        etablissement = {
            "__typename": "PersonneMorale",
            "id": gid("Etablissement", siret),
            "siret": siret,
            "siegeSocial": r.random() < 0.7,
            "naf": "9499Z",
            "libelleNaf": "Autres organisations fonctionnant par adhésion volontaire",
            "address": address,
            "adresse": address["label"],
            "codeInseeLocalite": address["cityCode"],
            "codePostal": address["postalCode"],
            "localite": address["cityName"],
            "entreprise": {
                "siren": siren,
                "raisonSociale": name,
                "nomCommercial": "",
                "siretSiegeSocial": siret,
                "inlineAdresse": address["label"],
                "formeJuridique": "Association déclarée",
                "formeJuridiqueCode": "9220",
                "capitalSocial": None,
                "numeroTvaIntracommunautaire": None,
                "codeEffectifEntreprise": "11",
                "dateCreation": "2012-09-01",
                "nom": None,
                "prenom": None,
                "attestationFiscaleAttachment": None,
                "attestationSocialeAttachment": None,
            },
            "association": None,
        }
        return {"etablissement": etablissement, "stringValue": siret}
    if kind in ("rna", "rnf"):
        address, commune, departement = _address(r)
        ident = (
            f"W{r.randrange(10**8, 10**9)}" if kind == "rna" else f"{departement['code']}-FDD-{r.randrange(10**5):05d}"
        )
        return {
            kind: {"id": ident, "title": f"Association {r.choice(WORDS)}", "address": address},
            "commune": commune,
            "departement": departement,
            "stringValue": ident,
        }
    if kind == "engagement_juridique":
        montant = f"{r.randrange(1000, 90_000)}.00"
        return {"engagementJuridique": {"montantEngage": montant, "montantPaye": None}, "stringValue": montant}
    if kind == "dossier_link":
        others = data.demarches[meta.demarche].dossiers
        linked = others[r.randrange(len(others))].number
        return {"dossier_number": linked, "stringValue": str(linked)}
    if kind == "piece_justificative":
        files = [_file(r, meta.number, *r.choice(FILES)) for _ in range(r.randrange(1, 3))]
        return {"files": files, "stringValue": ", ".join(f["filename"] for f in files)}
    if kind == "titre_identite":
        return {"filled": True, "grantType": "piece_justificative", "stringValue": None}
    if kind == "carte":
        _, _, _, _, insee, *_, lon, lat = r.choice(ADDRESSES)
        d = r.uniform(0.001, 0.01)
        ring = [[lon, lat], [lon + d, lat], [lon + d, lat + d], [lon, lat + d], [lon, lat]]
        areas = [
            {
                "__typename": "SelectionUtilisateur",
                "id": gid("GeoArea", f"{meta.number}1"),
                "source": "selection_utilisateur",
                "description": "Zone du projet",
                "geometry": {"type": "Polygon", "coordinates": [ring]},
            }
        ]
        if r.random() < 0.5:
            areas.append(
                {
                    "__typename": "ParcelleCadastrale",
                    "id": gid("GeoArea", f"{meta.number}2"),
                    "source": "cadastre",
                    "description": None,
                    "geometry": {"type": "Polygon", "coordinates": [ring]},
                    "commune": insee,
                    "numero": f"{r.randrange(1, 999):04d}",
                    "section": r.choice(("AB", "ZC", "0A")),
                    "prefixe": "000",
                    "surface": str(r.randrange(100, 20_000)),
                    "codeArr": "000",
                    "codeCom": insee[2:],
                    "codeDep": insee[:2],
                    "nomCom": "",
                    "feuille": 1,
                    "surfaceIntersection": 0.0,
                    "surfaceParcelle": 0.0,
                }
            )
        return {"geoAreas": areas, "stringValue": f"{len(areas)} zone(s)"}
    raise AssertionError(kind)


# ---------------------------------------------------------------------------------------------- schema


@dataclass
class Context:
    data: DSData
    fragments: frozenset[str]  # the type names the query's fragments are on (the __typename rule)
    demarches: frozenset[int] | None  # what the token may read (None: every démarche)
    served: Counter = field(default_factory=Counter)


def fragment_types(document) -> frozenset[str]:
    names: set[str] = set()

    class Collect(Visitor):
        def enter_inline_fragment(self, node: InlineFragmentNode, *_):
            if node.type_condition:
                names.add(node.type_condition.name.value)

        def enter_fragment_definition(self, node: FragmentDefinitionNode, *_):
            names.add(node.type_condition.name.value)

    visit(document, Collect())
    return frozenset(names)


def champ_type(champ: dict, info, _abstract=None) -> str:
    kind = champ["_kind"]
    fallback = FALLBACK_TYPES.get(kind)
    return kind if fallback is None or kind in info.context.fragments else fallback


def _check_params(first, last, after, before) -> int:
    if first is not None and last is not None:
        raise _error("Arguments first and last are mutually exclusive", "bad_request")
    if after is not None and before is not None:
        raise _error("Arguments before and after are mutually exclusive", "bad_request")
    if (first is not None and first < 0) or (last is not None and last < 0):
        raise _error("Argument first or last must be positive", "bad_request")
    size = first if first is not None else last
    return PAGE_SIZE if size is None else min(size, PAGE_SIZE)


def encode_cursor(micros: int, number: int) -> str:
    moment = datetime.fromtimestamp(micros // 1_000_000, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return base64.b64encode(f"{moment}.{micros % 1_000_000:06d}000Z;{number}".encode()).decode()


def decode_cursor(cursor: str) -> tuple[int, int]:
    try:
        moment, _, number = base64.b64decode(cursor, validate=True).decode().partition(";")
        return parse_datetime(moment), int(number)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _error(f"Invalid cursor {cursor!r}", "bad_request") from exc


def paginate(keys: list[tuple[int, int]], rows: list, first, last, after, before, order) -> tuple[list, dict]:
    """A keyset page over rows sorted by `keys` (ascending): cursors bound a window (after/before, in the
    walking order, which order DESC reverses), `first` takes its start, `last` its end."""
    limit = _check_params(first, last, after, before)
    desc = order == "DESC"
    lo, hi = 0, len(rows)
    if after is not None:
        if desc:
            hi = bisect.bisect_left(keys, decode_cursor(after))
        else:
            lo = bisect.bisect_right(keys, decode_cursor(after))
    if before is not None:
        if desc:
            lo = bisect.bisect_right(keys, decode_cursor(before))
        else:
            hi = bisect.bisect_left(keys, decode_cursor(before))
    window = rows[lo:hi][::-1] if desc else rows[lo:hi]
    if last is not None:
        page = window[len(window) - limit :]
        return page, {"hasNextPage": before is not None, "hasPreviousPage": len(page) < len(window)}
    page = window[:limit]
    return page, {"hasNextPage": len(page) < len(window), "hasPreviousPage": after is not None}


def build_ds_schema():
    schema = build_schema(SDL)
    types = schema.type_map

    def datetime_value(value):
        parse_datetime(value)
        return value

    types["ISO8601DateTime"].parse_value = datetime_value

    def demarche_of(ctx: Context, number: int) -> Demarche:
        d = ctx.data.demarches.get(number)
        if d is None:
            raise _error("Demarche not found", "not_found")
        if ctx.demarches is not None and number not in ctx.demarches:
            raise _error("An object of type Demarche was hidden due to permissions", "unauthorized")
        return d

    def connection(
        info,
        demarche: int,
        group: int | None,
        first=None,
        last=None,
        after=None,
        before=None,
        createdSince=None,
        updatedSince=None,
        state=None,
        archived=None,
        order="ASC",
        **_revisions,
    ):
        ctx: Context = info.context
        by_update = updatedSince is not None  # updatedSince wins over createdSince
        keys, rows = ctx.data.listing(demarche, state, archived, group, by_update)
        since = updatedSince if by_update else createdSince
        if since is not None:
            start = bisect.bisect_left(keys, (parse_datetime(since), -1))
            keys, rows = keys[start:], rows[start:]
        page, info_ = paginate(keys, rows, first, last, after, before, order)
        key = (lambda m: m.updated) if by_update else (lambda m: m.depose)
        cursors = [encode_cursor(key(m), m.number) for m in page]
        nodes = [ctx.data.dossier_node(m) for m in page]
        ctx.served["dossiers"] += len(nodes)
        return {
            "nodes": nodes,
            "edges": [{"cursor": c, "node": n} for c, n in zip(cursors, nodes, strict=True)],
            "pageInfo": {
                **info_,
                "startCursor": cursors[0] if cursors else None,
                "endCursor": cursors[-1] if cursors else None,
            },
        }

    def deleted_connection(
        info,
        demarche: int,
        group: int | None,
        first=None,
        last=None,
        after=None,
        before=None,
        deletedSince=None,
        order="ASC",
    ):
        rows = [m for m in info.context.data.deleted(demarche) if group is None or m.group == group]
        if deletedSince is not None:
            rows = [m for m in rows if m.deleted >= parse_datetime(deletedSince)]
        keys = [(m.deleted, m.number) for m in rows]
        page, info_ = paginate(keys, rows, first, last, after, before, order)
        cursors = [encode_cursor(m.deleted, m.number) for m in page]
        nodes = [deleted_node(m) for m in page]
        return {
            "nodes": nodes,
            "edges": [{"cursor": c, "node": n} for c, n in zip(cursors, nodes, strict=True)],
            "pageInfo": {
                **info_,
                "startCursor": cursors[0] if cursors else None,
                "endCursor": cursors[-1] if cursors else None,
            },
        }

    empty_connection = {
        "nodes": [],
        "edges": [],
        "pageInfo": {"hasNextPage": False, "hasPreviousPage": False, "startCursor": None, "endCursor": None},
    }

    query = types["Query"].fields

    def resolve_demarche(_root, info, number):
        demarche_of(info.context, number)
        return info.context.data.demarche_node(number)

    def resolve_descriptor(_root, info, demarche):
        number = demarche.get("number")
        if number is None:
            found = [n for n in info.context.data.demarches if gid("Procedure", n) == demarche.get("id")]
            if not found:
                raise _error("Demarche not found", "not_found")
            number = found[0]
        demarche_of(info.context, number)
        return info.context.data.demarche_node(number)

    def resolve_dossier(_root, info, number):
        meta = info.context.data.by_number.get(number)
        if meta is None or meta.deleted is not None:
            raise _error("Dossier not found", "not_found")
        demarche_of(info.context, meta.demarche)
        return info.context.data.dossier_node(meta)

    def resolve_group(_root, info, number):
        group = info.context.data.group(number)
        if group is None:
            raise _error("GroupeInstructeur not found", "not_found")
        demarche = number // 10
        demarche_of(info.context, demarche)
        return {**group, "_demarche": demarche}

    query["demarche"].resolve = resolve_demarche
    query["demarcheDescriptor"].resolve = resolve_descriptor
    query["dossier"].resolve = resolve_dossier
    query["groupeInstructeur"].resolve = resolve_group

    demarche = types["Demarche"].fields
    demarche["dossiers"].resolve = lambda parent, info, **a: connection(info, parent["_number"], None, **a)
    demarche["deletedDossiers"].resolve = lambda parent, info, **a: deleted_connection(
        info, parent["_number"], None, **a
    )
    demarche["pendingDeletedDossiers"].resolve = lambda *_a, **_k: empty_connection
    demarche["groupeInstructeurs"].resolve = lambda parent, info, closed=None: [
        g for g in info.context.data.demarches[parent["_number"]].groups if closed is None or g["closed"] == closed
    ]
    group = types["GroupeInstructeurWithDossiers"].fields
    group["dossiers"].resolve = lambda parent, info, **a: connection(info, parent["_demarche"], parent["number"], **a)
    group["deletedDossiers"].resolve = lambda parent, info, **a: deleted_connection(
        info, parent["_demarche"], parent["number"], **a
    )
    group["pendingDeletedDossiers"].resolve = lambda *_a, **_k: empty_connection

    dossier = types["Dossier"].fields

    def champs_of(annotations: bool):
        def resolve(parent, info, id=None):
            champs = info.context.data.champs(parent["_meta"], annotations)
            return [c for c in champs if id is None or c["champDescriptorId"] == id or c["id"] == id]

        return resolve

    dossier["champs"].resolve = champs_of(False)
    dossier["annotations"].resolve = champs_of(True)
    dossier["revision"].resolve = lambda parent, _info: parent["demarche"]["revision"]

    types["Champ"].resolve_type = champ_type

    def columns(parent, _info):
        if parent["_kind"] == "RepetitionChamp":
            return []
        return [
            {
                "__typename": "TextColumn",
                "id": parent["champDescriptorId"],
                "label": parent["label"],
                "stringValue": parent.get("stringValue"),
                "value": parent.get("stringValue"),
            }
        ]

    for type_name in {kind for _, kind in KINDS.values()}:
        fields = types[type_name].fields
        fields["columns"].resolve = columns
    # Kinds served as a fallback type read their own stored fields through that type's resolvers.
    types["TextChamp"].fields["value"].resolve = lambda parent, _info: parent.get("stringValue")
    types["CheckboxChamp"].fields["value"].resolve = lambda parent, _info: bool(parent.get("value"))
    types["DateChamp"].fields["date"].resolve = lambda parent, _info: (
        parent.get("date") or (parent["datetime"][:10] if parent.get("datetime") else None)
    )
    types["DateChamp"].fields["value"].resolve = lambda parent, _info: parent.get("value") or parent.get("datetime")
    types["PieceJustificativeChamp"].fields["file"].resolve = lambda parent, _info: (parent["files"] or [None])[0]
    types["RepetitionChamp"].fields["champs"].resolve = lambda parent, _info: [
        c for row in parent["rows"] for c in row["champs"]
    ]

    def linked(parent, info):
        meta = info.context.data.by_number.get(parent.get("dossier_number"))
        return None if meta is None or meta.deleted is not None else info.context.data.dossier_node(meta)

    types["DossierLinkChamp"].fields["dossier"].resolve = linked
    return schema


SCHEMA = build_ds_schema()


# ---------------------------------------------------------------------------------------------- fast execution


class Unusual(Exception):
    """Something the plain executor leaves to graphql-core: an error to report, a null where the schema forbids
    one, introspection, fragment arguments."""


class PlainExecutor:
    """A validated query executed over the sandbox's plain dicts with SCHEMA's own resolvers, type resolution and
    scalar serialisation, without graphql-core's per-field machinery (about 4x faster on a page of 100 dossiers x
    40 champs). Its answer equals graphql-core's (tests/test_sandbox_ds.py compares them); whatever it does not
    handle raises Unusual, and the query goes to graphql-core."""

    def __init__(self, schema, document, variables: dict | None, operation_name: str | None, context):
        self.schema, self.context = schema, context
        operations = [d for d in document.definitions if isinstance(d, OperationDefinitionNode)]
        operation = (
            operations[0] if operation_name is None and len(operations) == 1
            else next((o for o in operations if o.name and o.name.value == operation_name), None)
        )  # fmt: skip
        if operation is None or operation.operation != OperationType.QUERY:
            raise Unusual("no query to run")
        values = get_variable_values(schema, operation.variable_definitions or (), variables or {})
        if isinstance(values, list):
            raise Unusual("variables")
        self.variables = values
        self.operation = operation
        self.fragments = {d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)}
        self.info = SimpleNamespace(context=context, schema=schema, variable_values=values, fragments=self.fragments)
        self._subfields: dict[tuple, dict[str, list[FieldNode]]] = {}

    def run(self) -> dict:
        return self._object(self.schema.query_type, {}, self._collect(self.schema.query_type, [self.operation]))

    def _included(self, node) -> bool:
        for directive, keep in ((GraphQLSkipDirective, False), (GraphQLIncludeDirective, True)):
            found = next((d for d in node.directives or () if d.name.value == directive.name), None)
            if found is not None and get_argument_values(directive, found, self.variables)["if"] != keep:
                return False
        return True

    def _collect(self, runtime, parents) -> dict[str, list[FieldNode]]:
        key = (runtime.name, *map(id, parents))
        fields = self._subfields.get(key)
        if fields is None:
            fields = {}
            for parent in parents:
                self._collect_into(runtime, parent.selection_set, fields, set())
            self._subfields[key] = fields
        return fields

    def _collect_into(self, runtime, selection_set, fields: dict, seen: set) -> None:
        for node in selection_set.selections if selection_set else ():
            if not self._included(node):
                continue
            if isinstance(node, FieldNode):
                fields.setdefault((node.alias or node.name).value, []).append(node)
                continue
            if isinstance(node, FragmentSpreadNode):
                if node.arguments:
                    raise Unusual("fragment arguments")
                if node.name.value in seen:
                    continue
                seen.add(node.name.value)
                node = self.fragments[node.name.value]
            condition = node.type_condition and self.schema.get_type(node.type_condition.name.value)
            if (
                condition is None
                or condition is runtime
                or (is_abstract_type(condition) and self.schema.is_sub_type(condition, runtime))
            ):
                self._collect_into(runtime, node.selection_set, fields, seen)

    def _object(self, runtime, source, fields: dict[str, list[FieldNode]]) -> dict:
        result = {}
        for key, nodes in fields.items():
            name = nodes[0].name.value
            if name == "__typename":
                result[key] = runtime.name
                continue
            definition = runtime.fields.get(name)
            if definition is None:
                raise Unusual(f"introspection or unknown field {name}")
            args = get_argument_values(definition, nodes[0], self.variables) if definition.args else {}
            try:
                if definition.resolve is not None:
                    value = definition.resolve(source, self.info, **args)
                else:
                    value = source.get(name) if isinstance(source, dict) else getattr(source, name, None)
                    if callable(value):
                        raise Unusual("a callable value")
            except GraphQLError as exc:
                raise Unusual("an error to report") from exc
            result[key] = self._complete(definition.type, nodes, value)
        return result

    def _complete(self, type_, nodes, value):
        if isinstance(type_, GraphQLNonNull):
            value = self._complete(type_.of_type, nodes, value)
            if value is None:
                raise Unusual("null for a non-null field")
            return value
        if value is None:
            return None
        if isinstance(type_, GraphQLList):
            return [self._complete(type_.of_type, nodes, item) for item in value]
        if is_leaf_type(type_):
            return type_.serialize(value)
        runtime = type_
        if is_abstract_type(type_):
            resolve = type_.resolve_type
            name = resolve(value, self.info, type_) if resolve else value.get("__typename")
            runtime = self.schema.get_type(name) if isinstance(name, str) else None
            if runtime is None or not self.schema.is_sub_type(type_, runtime):
                raise Unusual(f"cannot resolve {type_.name}")
        return self._object(runtime, value, self._collect(runtime, nodes))


def execute(document, variables: dict | None, operation_name: str | None, context: Context) -> ExecutionResult:
    """SCHEMA's answer to a validated query: the plain executor's, graphql-core's where it steps back."""
    try:
        return ExecutionResult(PlainExecutor(SCHEMA, document, variables, operation_name, context).run(), None)
    except Unusual:
        context.served.clear()
        return execute_sync(
            SCHEMA, document, variable_values=variables, operation_name=operation_name, context_value=context
        )


# ---------------------------------------------------------------------------------------------- app


def http_token(authorization: str | None) -> str | None:
    """The token in an Authorization header as Rails' authenticate_with_http_token reads it: 'Bearer <t>',
    'Bearer token=<t>', 'Token token="<t>"' (scheme case-sensitive, options after , ; or tab ignored)."""
    if not authorization or not re.match(r"^(Token|Bearer)\s+", authorization):
        return None
    params = [p.strip() for p in re.split(r"(?:,|;|\t)", re.sub(r"^(Token|Bearer)\s+", "", authorization))]
    params = [p for p in params if p]
    if not params:
        return None
    first = params[0] if params[0].startswith("token=") else f"token={params[0]}"
    value = first.split("=", 1)[1] if "=" in first else ""
    return re.sub(r'^"|"$', "", value) or None


@dataclass
class TokenRights:
    demarches: frozenset[int] | None = None  # None: every démarche of the sandbox
    expired: bool = False
    forbidden_network: bool = False


class FixedWindowThrottle:
    """rack-attack's throttle: a counter per (key, period number); the window ends at the next multiple of
    `period` seconds of the epoch. `enforce=False` lets everything through and counts what would have been
    refused (``over_limit_accepted``)."""

    def __init__(self, limit: int, period: int, enforce: bool = True):
        self.limit, self.period, self.enforce = limit, period, enforce
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self._counts: dict[tuple[str, int], int] = {}
            self._announced: dict[str, float] = {}  # key -> the RateLimit-Reset its last 429 announced
            self.accepted = self.throttled = self.over_limit_accepted = self.max_in_window = 0
            self.before_reset = 0  # requests that came back before the announced reset (a client ignoring it)

    def announce(self, key: str, reset_epoch: int) -> None:
        with self._lock:
            self._announced[key] = max(self._announced.get(key, 0), reset_epoch)

    def hit(self, key: str) -> tuple[bool, int]:
        """(allowed, epoch second the window ends)."""
        now = time.time()
        window = int(now // self.period)
        with self._lock:
            if now < self._announced.get(key, 0) - 0.05:  # 50 ms for clock granularity
                self.before_reset += 1
            self._counts = {k: v for k, v in self._counts.items() if k[1] >= window}
            count = self._counts.get((key, window), 0) + 1
            self._counts[(key, window)] = count
            self.max_in_window = max(self.max_in_window, count)
            over = count > self.limit
            if over and self.enforce:
                self.throttled += 1
                self._announced[key] = (window + 1) * self.period
                return False, (window + 1) * self.period
            self.accepted += 1
            self.over_limit_accepted += over
            return True, (window + 1) * self.period

    def state(self) -> dict[str, object]:
        with self._lock:
            return {
                "limit": self.limit,
                "period": self.period,
                "enforce": self.enforce,
                "accepted": self.accepted,
                "throttled": self.throttled,
                "over_limit_accepted": self.over_limit_accepted,
                "max_in_window": self.max_in_window,
                "before_reset": self.before_reset,
            }


def throttled(reset_epoch: int) -> Response:
    return Response(
        COWBOY,
        status_code=429,
        media_type="text/plain",
        headers={"RateLimit-Remaining": "0", "RateLimit-Reset": str(reset_epoch)},
    )


def _base_error(message: str, code: str, status: int) -> Response:
    return json_response({"errors": [{"message": message, "extensions": {"code": code}}], "data": None}, status)


def create_app(
    data: DSData | None = None,
    *,
    tokens: dict[str, TokenRights] | None = None,
    rate_limit: int = RATE_LIMIT,
    rate_period: int = RATE_PERIOD,
    enforce_limit: bool = True,
    faults: Faults | None = None,
) -> FastAPI:
    """The DS sandbox. ``app.state.data`` is the DSData, ``app.state.sandbox`` the Sandbox (faults, stats),
    ``app.state.throttle`` the fixed-window throttle. ``tokens`` maps token values to their rights (default:
    ``DEFAULT_TOKEN`` reading every démarche)."""
    data = data if data is not None else DSData()
    tokens = tokens if tokens is not None else {DEFAULT_TOKEN: TokenRights()}
    sandbox = Sandbox("ds", [(rate_limit, float(rate_period))], faults)
    throttle = FixedWindowThrottle(rate_limit, rate_period, enforce_limit)
    counters: Counter[str] = Counter()
    counters_lock = threading.Lock()

    def count(**values: int) -> None:
        with counters_lock:
            counters.update(values)

    def reset_data() -> None:
        data.reset()
        throttle.reset()
        with counters_lock:
            counters.clear()

    def extra_state() -> dict[str, object]:
        with counters_lock:
            graphql = dict(counters)
        return {"rate": throttle.state(), "graphql": graphql, "tokens": len(tokens)}

    app = FastAPI(title="Démarches Simplifiées API v2 sandbox", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.data = data
    app.state.throttle = throttle

    # -------------------------------------------------------------- DS-specific controls (before the common ones,
    # so this /_sandbox/mutate, which takes a démarche, wins)

    async def body_of(request: Request) -> dict:
        body = json.loads(await request.body() or b"{}")
        if not isinstance(body, dict):
            raise ValueError("body must be a JSON object")
        return body

    def _int(body: dict, name: str, default: int | None = None) -> int:
        value = body.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer")
        return value

    def _demarche(body: dict) -> int:
        number = _int(body, "demarche", data.spec[0][0])
        if number not in data.demarches:
            raise ValueError(f"no démarche {number}")
        return number

    @app.post("/_sandbox/mutate")
    async def mutate(request: Request) -> Response:
        try:
            body = await body_of(request)
            numbers = data.mutate(_int(body, "k", 1), _demarche(body))
        except (ValueError, KeyError) as exc:
            return json_response({"error": str(exc)}, 400)
        return json_response({"ids": numbers})

    @app.post("/_sandbox/add_field")
    async def add_field(request: Request) -> Response:
        try:
            body = await body_of(request)
            descriptor = data.add_field(
                _demarche(body), body.get("type", "text"), body.get("label"), bool(body.get("annotation", False))
            )
        except ValueError as exc:
            return json_response({"error": str(exc)}, 400)
        return json_response({"descriptor": descriptor})

    @app.post("/_sandbox/delete_dossier")
    async def delete_dossier(request: Request) -> Response:
        try:
            deleted = data.delete_dossier(_int(await body_of(request), "number"))
        except ValueError as exc:
            return json_response({"error": str(exc)}, 400)
        return json_response({"deleted": deleted})

    @app.post("/_sandbox/update_dossier")
    async def update_dossier(request: Request) -> Response:
        try:
            body = await body_of(request)
            group = body.get("group")
            updated = data.update_dossier(
                _int(body, "number"),
                body.get("state"),
                None if group is None else _int(body, "group"),
                body.get("champs"),
            )
        except ValueError as exc:
            return json_response({"error": str(exc)}, 400)
        return json_response({"dossier": updated})

    @app.post("/_sandbox/groupe")
    async def set_groupe(request: Request) -> Response:
        try:
            body = await body_of(request)
            group = data.set_groupe(_int(body, "number"), body.get("label"), body.get("instructeurs"))
        except ValueError as exc:
            return json_response({"error": str(exc)}, 400)
        return json_response({"groupe": group})

    install(
        app,
        sandbox,
        Controls(describe=data.describe, mutate=data.mutate, reset_data=reset_data, extra_state=extra_state),
    )

    # -------------------------------------------------------------- GraphQL

    def run(payload: object, rights: TokenRights | None) -> Response:
        if not isinstance(payload, dict):
            return _base_error("Invalid request body", "bad_request", 400)
        query = payload.get("query")
        if query is None and payload.get("queryId") is not None:
            query = PERSISTED_QUERIES.get(str(payload["queryId"]))
            if query is None:
                return _base_error(f'No query with id "{payload["queryId"]}"', "bad_request", 400)
        elif rights is None:
            return _base_error("Without a token, only persisted queries are allowed", "forbidden", 403)
        if not isinstance(query, str) or not query.strip():
            return _base_error("No query string was present", "bad_request", 400)
        variables, operation_name = payload.get("variables"), payload.get("operationName")
        if isinstance(variables, str):  # form posts send them JSON-encoded
            try:
                variables = json.loads(variables) if variables.strip() else {}
            except ValueError:
                return _base_error("variables must be a JSON object", "bad_request", 400)
        if variables is not None and not isinstance(variables, dict):
            return _base_error("variables must be a JSON object", "bad_request", 400)
        try:
            document = parse(query)
        except GraphQLError as exc:
            count(parse_errors=1)
            return json_response(
                {"errors": [{**exc.formatted, "extensions": {"code": "graphql_parse_failed"}}], "data": None}, 400
            )
        errors = validate(SCHEMA, document, RULES)
        if errors:
            count(invalid=1)
            return json_response({"errors": [e.formatted for e in errors]})
        ctx = Context(data, fragment_types(document), rights.demarches if rights else frozenset())
        with data._lock:  # one consistent snapshot per request
            result = execute(document, variables, operation_name, ctx)
        count(queries=1, dossiers_served=ctx.served["dossiers"], errors=bool(result.errors))
        body: dict[str, object] = {}
        if result.errors:
            body["errors"] = [e.formatted for e in result.errors]
        body["data"] = result.data
        return json_response(body)

    async def graphql_endpoint(request: Request) -> Response:
        started = time.perf_counter()
        roll = sandbox.roll()
        if roll.latency:
            await asyncio.sleep(roll.latency)
        authorization = request.headers.get("authorization")
        response = None
        with sandbox._lock:
            burst = sandbox.faults.burst_429 > 0
            if burst:
                sandbox.faults.burst_429 -= 1
        if burst:
            reset = int(time.time() + max(1.0, sandbox.faults.burst_retry_after))
            if authorization:
                throttle.announce(authorization, reset)
            sandbox.stats.add("throttled")
            sandbox.stats.add("throttled_burst")
            response = throttled(reset)
        elif authorization:  # rack-attack keys by the header; requests without one are not throttled
            # (a burst 429 is answered first, so a client retrying before its reset is only counted here)
            allowed, reset = throttle.hit(authorization)
            if not allowed:
                sandbox.stats.add("throttled")
                sandbox.stats.add("throttled_limit")
                response = throttled(reset)
        if response is None and roll.error_status is not None:
            sandbox.stats.add("errors_injected")
            response = injected_error(roll.error_status)
        if response is None:
            token = http_token(authorization)
            rights = tokens.get(token) if token else None
            if rights is not None and rights.expired:
                sandbox.stats.add("unauthorized")
                response = _base_error("Token expired", "unauthorized", 401)
            elif rights is not None and rights.forbidden_network:
                sandbox.stats.add("unauthorized")
                host = request.client.host if request.client else "127.0.0.1"
                response = _base_error(
                    f"Request issued from a forbidden network. Add {host}/32 to your allowed adresses in your /profil",
                    "forbidden",
                    403,
                )
            else:
                try:
                    payload = json.loads(await request.body() or b"null")
                except ValueError:
                    payload = None
                if rights is None:
                    sandbox.stats.add("unauthorized")  # unknown or missing token: only persisted queries run
                # in a worker thread: a big page takes a second or two, control endpoints stay responsive
                response = sandbox.finish(await asyncio.to_thread(run, payload, rights), roll)
        response.headers["X-Request-Id"] = base64.b16encode(random.randbytes(8)).decode().lower()
        response.headers["X-Runtime"] = f"{time.perf_counter() - started:.6f}"
        return response

    app.add_api_route(GRAPHQL_PATH, graphql_endpoint, methods=["POST"])
    return app

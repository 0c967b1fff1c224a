"""Sandbox of Gazelle's GraphQL "private API" (spec: /work/shared/specs/gazelle.md).

The schema is Gazelle's real one: ``gazelle_schema.graphql`` is a verbatim copy of the SDL rebuilt from an
introspection dump of the private API (/work/shared/specs/gazelle/schema.graphql). Every request is validated
against all of it, so a query the real API would reject fails here too; resolvers are attached only to the fields
the sandbox simulates, and valid arguments it does not simulate (most filters, some sort values) are refused with
an error rather than ignored. What is still guessed (cursor semantics, the 100 page-size maximum, the zone of
event date filters...) is listed in sandbox/README.md.

``GazelleData`` is the deterministic account (technicians, clients with contacts, pianos, calendar events planned
in the account's time zone, timeline entries) centred on an anchor date; ``create_app`` serves it the way
gazelleapp.io does: ``POST /graphql/private/`` (graphql-core), Doorkeeper-style OAuth2 (authorization code +
rotating refresh tokens) under ``/developer/oauth/...``, or an account API key in ``x-gazelle-api-key``.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import hashlib
import json
import math
import random
import re
import secrets
import threading
import time
import unicodedata
import uuid
from collections import Counter
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

from fastapi import FastAPI, Request
from graphql import (
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    InlineFragmentNode,
    StringValueNode,
    build_schema,
    execute_sync,
    get_operation_ast,
    parse,
    validate,
)
from starlette.responses import RedirectResponse, Response

from sandbox.common import Controls, Faults, Sandbox, TokenStore, install, json_response, oauth_params

DEFAULT_CLIENT_ID = "usersync-gazelle-client-id"
DEFAULT_CLIENT_SECRET = "usersync-gazelle-client-secret"
DEFAULT_REFRESH_TOKEN = "usersync-gazelle-refresh-token-0000000000000"  # as if a user had authorised the app
DEFAULT_API_KEY = "usersync-gazelle-api-key"  # short, like Gazelle's account keys
GRAPHQL_PATH = "/graphql/private/"
AUTHORIZE_PATH = "/developer/oauth/authorize"
TOKEN_PATH = "/developer/oauth/token"
DEFAULT_PAGE_SIZE = MAX_PAGE_SIZE = 100
CODE_TTL = 600  # seconds an authorization code stays usable (Doorkeeper's default)

# ---------------------------------------------------------------------------------------------- schema

# Gazelle's real schema: a verbatim copy of /work/shared/specs/gazelle/schema.graphql (SDL rebuilt from an
# introspection dump of the private API). Every request is validated against all of it; resolvers are attached
# only to the fields the sandbox simulates (the rest answer null, or an error when non-null).
SDL_PATH = Path(__file__).with_name("gazelle_schema.graphql")
SDL = SDL_PATH.read_text(encoding="utf-8")

# Root field -> entity collection it lists (the per-root-field request counters use these names).
ROOT_FIELDS = ("allUsers", "allClients", "allPianos", "allEventsBatched", "allTimelineEntries", "client", "piano")

# sortBy enum value -> (record field, descending). Ties are always broken by id ascending. The API takes the
# schema's CREATED_AT_* (clients, pianos) and START_* (events); the other keys serve the ground-truth accessors.
SORTS = {
    "ID_ASC": ("id", False),
    "ID_DESC": ("id", True),
    "CREATED_AT_ASC": ("createdAt", False),
    "CREATED_AT_DESC": ("createdAt", True),
    "UPDATED_AT_ASC": ("updatedAt", False),
    "UPDATED_AT_DESC": ("updatedAt", True),
    "START_ASC": ("start", False),
    "START_DESC": ("start", True),
    "OCCURRED_AT_ASC": ("occurredAt", False),
    "OCCURRED_AT_DESC": ("occurredAt", True),
}

# ---------------------------------------------------------------------------------------------- time

_DAY = 86_400
_DATE_RE = re.compile(r"\d{4}-\d{2}-\d{2}")
_DATETIME_RE = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?(Z|z|[+-]\d{2}(:?\d{2})?)?")


def iso(seconds: int) -> str:
    """Epoch seconds -> '2026-11-20T14:30:00Z', the sandbox's CoreDateTime format."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def _epoch(day: date) -> int:
    return (day - date(1970, 1, 1)).days * _DAY


def parse_date(value: object) -> date:
    """CoreDate input: 'YYYY-MM-DD' (ValueError otherwise)."""
    if not isinstance(value, str) or not _DATE_RE.fullmatch(value):
        raise ValueError(f"CoreDate must be a 'YYYY-MM-DD' string, got {value!r}")
    return date.fromisoformat(value)


def parse_datetime(value: object) -> datetime:
    """CoreDateTime input: ISO 8601 date-time, 'Z' or an offset (none = UTC); returned in UTC."""
    if not isinstance(value, str) or not _DATETIME_RE.fullmatch(value):
        raise ValueError(f"CoreDateTime must be an ISO 8601 date-time string, got {value!r}")
    text = value[:-1] + "+00:00" if value[-1] in "Zz" else value
    if re.search(r"\.\d{7,}", text):  # Python keeps microseconds only
        text = re.sub(r"(\.\d{6})\d+", r"\1", text)
    parsed = datetime.fromisoformat(text)
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


# ---------------------------------------------------------------------------------------------- data

_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_FOLD = str.maketrans({"œ": "oe", "æ": "ae", "ß": "ss", "ø": "o", "ł": "l", "'": "", "’": ""})

_FIRST_NAMES = (
    "Geneviève", "Josée", "Mélanie", "Stéphane", "Réjean", "Ginette", "Gaétan", "Benoît", "Marie-Ève",
    "Jean-François", "Frédérique", "Sébastien", "Élise", "Hélène", "Chantal", "Luc", "Sylvie", "Francis",
    "Noémie", "Zoé", "Maël", "Anaïs", "Émile", "Léa", "Éloïse", "Guylaine", "Normand", "Denis", "Mathieu",
    "Andrée-Anne", "Rosalie", "Félix", "Maxime", "Joëlle", "Ludovic", "Maïté", "Thérèse", "Jérôme", "Cédric",
    "Mireille", "Nathaël", "Océane", "Raphaëlle", "François", "Ariane", "Noël", "Yannick", "Amélie", "Sœur Lucie",
)  # fmt: skip
_LAST_NAMES = (
    "Tremblay", "Gagnon", "Roy", "Côté", "Bouchard", "Gauthier", "Morin", "Lavoie", "Fortin", "Gagné", "Ouellet",
    "Pelletier", "Bélanger", "Lévesque", "Bergeron", "Leblanc", "Paquette", "Girard", "Simard", "Boucher",
    "Caron", "Beaulieu", "Cloutier", "Dubé", "Poirier", "Fournier", "Lapointe", "Leclerc", "Lefebvre", "Poulin",
    "Thibault", "St-Pierre", "Nadeau", "Martin", "Landry", "Martel", "Bédard", "Grenier", "Lessard", "Bernier",
    "Michaud", "Hébert", "Desjardins", "Couture", "Turcotte", "Lachance", "Gosselin", "Savard", "Proulx",
    "Charbonneau", "Plourde", "D'Amours", "O'Neill", "Nguyễn", "Trần", "Haddad", "Saint-Onge", "Brûlé",
    "Lemaître", "Désilets", "Boisvert-Théberge", "Pérusse", "Aubé", "Vézina",
)  # fmt: skip
_TITLES = ("Mme", "M.", "Dr", "Dre", "Me", "Père", "Sœur", "Abbé")
_COMPANIES = (
    "Paroisse Sainte-Cécile", "Conservatoire de musique de {city}", "École secondaire Jean-de-Brébeuf",
    "Église Saint-Jean-Baptiste", "Salle Bourgie", "Café-bar L'Escalier", "Résidence Les Jardins d'Évangéline",
    "Chorale Les Voix d'Or", "Théâtre du Rideau Vert", "Hôtel Le Château", "Cégep de {city}",
    "Université — Faculté de musique", "Studio Piché & fils", "Bar Le Ritz", "Orchestre symphonique de {city}",
    "Centre culturel de {city}", "Maison des jeunes L'Accord", "CHSLD Notre-Dame-de-la-Merci",
    "Fabrique de la paroisse Saint-Roch", "École de musique Vincent-d'Indy", "Boîte à chanson Le Pionnier",
)  # fmt: skip
# (municipality, region, first letter of the postal code, phone area codes)
_CITIES = (
    ("Montréal", "QC", "H", ("514", "438")), ("Québec", "QC", "G", ("418", "581")),
    ("Laval", "QC", "H", ("450", "579")), ("Gatineau", "QC", "J", ("819", "873")),
    ("Longueuil", "QC", "J", ("450", "579")), ("Sherbrooke", "QC", "J", ("819", "873")),
    ("Saguenay", "QC", "G", ("418", "581")), ("Lévis", "QC", "G", ("418", "581")),
    ("Trois-Rivières", "QC", "G", ("819",)), ("Saint-Jean-sur-Richelieu", "QC", "J", ("450",)),
    ("Drummondville", "QC", "J", ("819",)), ("Saint-Jérôme", "QC", "J", ("450",)),
    ("Rimouski", "QC", "G", ("418",)), ("Baie-Saint-Paul", "QC", "G", ("418",)),
    ("Les Îles-de-la-Madeleine", "QC", "G", ("418",)), ("Val-d'Or", "QC", "J", ("819",)),
    ("Sainte-Anne-de-Beaupré", "QC", "G", ("418",)), ("Mont-Tremblant", "QC", "J", ("819",)),
    ("Ottawa", "ON", "K", ("613", "343")), ("Edmundston", "NB", "E", ("506",)),
)  # fmt: skip
_STREETS = (
    "rue Saint-Denis", "boulevard René-Lévesque Est", "chemin de la Côte-des-Neiges", "avenue du Mont-Royal Ouest",
    "rang Saint-Joseph", "rue Sherbrooke Ouest", "rue de l'Église", "montée Sainte-Julie", "chemin du Lac-Beauport",
    "rue Notre-Dame", "boulevard des Forges", "rue Principale", "avenue Cartier", "rue du Petit-Champlain",
    "chemin Sainte-Foy", "rue Wellington Nord", "boulevard Talbot", "rue des Érables", "route 132",
)  # fmt: skip
_STREET2 = ("app. 3", "app. 12B", "bureau 210", "C.P. 45", "porte arrière", "2e étage", "sous-sol")
_DOMAINS = ("videotron.ca", "gmail.com", "hotmail.com", "sympatico.ca", "bell.net", "outlook.com",
            "globetrotter.net", "cgocable.ca", "yahoo.ca")  # fmt: skip
_TAGS = ("VIP", "église", "école", "studio", "concert", "humidité ⚠️", "Dampp-Chaser", "à relancer",
         "anglophone", "paiement Interac", "chalet", "🎹 grand public")  # fmt: skip
_CLIENT_NOTES = (
    "Chien nerveux — sonner deux fois 🐕", "Préfère les rendez-vous le matin", "Piano au 3e étage, pas d'ascenseur",
    "Paie par virement Interac", "Allergique aux parfums", "Stationnement dans la ruelle\nCode de porte : 4512#",
    "Ne pas appeler après 19 h", "Cliente fidèle depuis 1998 — toujours offrir un café ☕",
    "Facturer la fabrique, pas le curé", "Parle anglais seulement / English only",
)  # fmt: skip
_PIANOS = (
    ("Yamaha", ("U1", "U3", "C3", "GB1", "P22", "b121"), ("UPRIGHT", "UPRIGHT", "GRAND", "GRAND", "STUDIO", "UPRIGHT")),
    ("Kawai", ("K-300", "GL-10", "RX-2", "506N"), ("UPRIGHT", "GRAND", "GRAND", "CONSOLE")),
    ("Steinway & Sons", ("Model B", "Model M", "K-52", "Model D"), ("GRAND", "GRAND", "UPRIGHT", "GRAND")),
    ("Heintzman", ("Droit", "Queue 5'8\""), ("UPRIGHT", "GRAND")),
    ("Mason & Risch", ("Console", "Upright"), ("CONSOLE", "UPRIGHT")),
    ("Bösendorfer", ("200", "Imperial 290"), ("GRAND", "GRAND")),
    ("Baldwin", ("Hamilton", "Acrosonic", "Model R"), ("STUDIO", "SPINET", "GRAND")),
    ("Lesage", ("Console", "Droit"), ("CONSOLE", "UPRIGHT")),
    ("Willis & Co.", ("Upright",), ("UPRIGHT",)),
    ("Sherlock-Manning", ("Studio",), ("STUDIO",)),
    ("Pratte", ("Droit",), ("UPRIGHT",)),
    ("Petrof", ("P118", "P159 Bora"), ("UPRIGHT", "GRAND")),
    ("Bechstein", ("A.114", "B 212"), ("UPRIGHT", "GRAND")),
    ("Roland", ("HP-704", "LX-708"), ("DIGITAL", "DIGITAL")),
)  # fmt: skip
_PIANO_LOCATIONS = ("Salon", "Sous-sol", "Salle paroissiale", "Studio B", "Chambre des maîtres", "Jubé",
                    "Salle de concert", "Local 204")  # fmt: skip
_PIANO_NOTES = (
    "Cheville du La4 lâche", "Pédale douce grince", "Fissure à la table d'harmonie", "Accordé 2 Hz bas (435 Hz)",
    "Marteaux usés — proposer un remplacement", "Humidité très basse l'hiver ❄️", "Touches en ivoire",
    "Système Dampp-Chaser installé",
)  # fmt: skip
_SERVICES = ("Accord", "Accord et régulation", "Réparation", "Évaluation", "Accord — 2e visite", "Harmonisation")
_PERSONAL = ("Dentiste", "Congé", "Garage — pneus d'hiver", "Vacances 🌴", "Formation PTG", "Rendez-vous médical")
_MEMOS = ("Commander des cordes", "Rappel : facture en retard", "Inventaire des feutres", "Appeler le fournisseur",
          "Renouveler l'assurance du camion")  # fmt: skip
_SYNCED = ("Google Agenda : réunion", "Google Agenda : répétition chorale", "Outlook : souper de famille")
_EVENT_NOTES = ("Laisser la clé sous le paillasson", "Client absent, la voisine ouvre", "Apporter l'hygromètre",
                "Stationnement payant 💰", "Concert le soir même — accord de précision")  # fmt: skip
_TIMELINE = {  # TimelineEntryType values of the schema
    "APPOINTMENT": ("Rendez-vous complété", "Rendez-vous annulé par le client", "Rendez-vous déplacé"),
    "SERVICE_ENTRY_MANUAL": ("Accord complet à 440 Hz", "Régulation de la mécanique", "Remplacement d'une corde"),
    "SERVICE_ENTRY_AUTOMATED": ("Rappel de service envoyé", "Prochain accord prévu dans 6 mois"),
    "INVOICE": ("Facture n° {n} payée", "Facture n° {n} envoyée", "Facture n° {n} en retard"),
    "ESTIMATE": ("Estimation n° {n} : remplacement des marteaux", "Estimation n° {n} acceptée ✅"),
    "CONTACT_EMAIL_MANUAL": ("Courriel de rappel envoyé", "Courriel reçu : « Merci beaucoup ! »"),
    "CONTACT_SMS_MANUAL": ("SMS de confirmation envoyé ✅", "SMS reçu : « Oui, 10 h me convient »"),
    "CONTACT_PHONE_MANUAL_TALKED": ("Appel : le client veut reporter", "Message laissé sur le répondeur"),
    "USER_COMMENT": ("Note : piano déménagé au sous-sol", "Note : nouveau propriétaire", ""),
}
_PREFERENCES = ("Aime un accord légèrement brillant", "Toujours appeler la veille", "Préfère le technicien habituel",
                "Pas le vendredi")  # fmt: skip
_HUMIDISTATS = ("HC-3", "HC-5", "HC-6 Smart", None)
_TIMELINE_COMMENTS = ("Très satisfaite", "À rappeler en mars", "Le client trouve le son trop brillant",
                      "Payé comptant", "Voir photo au dossier 📷")  # fmt: skip


def _fold(name: str) -> str:
    """'Geneviève D'Amours' -> 'genevievedamours' (lower-case ASCII letters and hyphens)."""
    decomposed = unicodedata.normalize("NFKD", name.lower().translate(_FOLD))
    return "".join(c for c in decomposed if "a" <= c <= "z" or c == "-")


def _weighted(rnd: random.Random, weights: tuple[float, ...]) -> int:
    """Index drawn with the given weights (they sum to 1)."""
    x = rnd.random()
    for i, w in enumerate(weights):
        x -= w
        if x < 0:
            return i
    return len(weights) - 1


class GazelleData:
    """A deterministic Gazelle account: a function of (clients, technicians, seed, anchor).

    ``anchor`` (default: today's UTC date at construction) is the date the data is centred on: users, clients,
    contacts and pianos were created and last updated over the ~3 years before the anchor's midnight (UTC);
    events start from anchor-120 days to anchor+30 days; timeline entries occurred over the 400 days before the
    anchor's midnight. Records are stored exactly as the ground-truth accessors return them: API-shaped nodes
    whose references to other entities are ``{"id": ...}`` (every one points to an existing record).
    """

    KINDS = ("users", "clients", "pianos", "events", "timeline")

    def __init__(
        self,
        clients: int = 850,
        technicians: int = 5,
        seed: int = 0,
        anchor: date | None = None,
        timezone: str = "America/Toronto",
    ):
        if clients < 0:
            raise ValueError("clients must be >= 0")
        if technicians < 1:
            raise ValueError("technicians must be >= 1 (every event has one)")
        self.client_count = clients
        self.technician_count = technicians
        self.seed = seed
        self.zone = ZoneInfo(timezone)  # the account's time zone: events are planned in it
        self.anchor = anchor if anchor is not None else datetime.now(UTC).date()
        self._anchor_s = _epoch(self.anchor)
        self._lock = threading.RLock()
        self.reset()

    # ------------------------------------------------------------------ generation

    def _id(self, prefix: str, n: int) -> str:
        digest = hashlib.blake2b(f"{self.seed}:{prefix}:{n}".encode(), digest_size=10).digest()
        h = int.from_bytes(digest)
        chars = []
        for _ in range(13):
            h, r = divmod(h, 62)
            chars.append(_BASE62[r])
        return f"{prefix}_{''.join(chars)}"

    def _stamps(self, rnd: random.Random, lo: int) -> tuple[int, int]:
        """(created, updated) in [lo, anchor midnight), updated >= created (often equal)."""
        end = self._anchor_s
        created = lo + rnd.randrange(max(1, end - lo))
        updated = created if rnd.random() < 0.3 else created + rnd.randrange(max(1, end - created))
        return created, updated

    def _user(self, i: int, created: int | None = None) -> dict:
        rnd = random.Random(f"{self.seed}:user:{i}")
        first, last = rnd.choice(_FIRST_NAMES[:-1]), rnd.choice(_LAST_NAMES)
        if created is None:
            created, updated = self._stamps(rnd, self._anchor_s - 3 * 365 * _DAY)
        else:
            updated = created
        return {
            "id": self._id("usr", i),
            "firstName": first,
            "lastName": last,
            "email": f"{_fold(first)}.{_fold(last)}@accordspianoquebec.ca",
            "status": "INACTIVE" if rnd.random() < 0.1 else "ACTIVE",
            "createdAt": iso(created),
            "updatedAt": iso(updated),
        }

    def _contact(self, rnd: random.Random, n: int, client_created: int, last: str, primary: bool) -> dict:
        city, region, letter, areas = rnd.choice(_CITIES)
        first = rnd.choice(_FIRST_NAMES)
        if not primary and rnd.random() < 0.5:
            last = rnd.choice(_LAST_NAMES)
        created, updated = self._stamps(rnd, client_created) if not primary else (client_created, client_created)
        if primary and rnd.random() < 0.6:
            updated = created + rnd.randrange(max(1, self._anchor_s - created))
        location = None
        if rnd.random() < (0.95 if primary else 0.3):
            digits = "0123456789"
            letters = "ABCEGHJKLMNPRSTVWXYZ"
            location = {
                "street1": f"{rnd.randint(1, 9999)}, {rnd.choice(_STREETS)}",
                "street2": rnd.choice(_STREET2) if rnd.random() < 0.2 else None,
                "municipality": city,
                "postalCode": f"{letter}{rnd.choice(digits)}{rnd.choice(letters)} "
                f"{rnd.choice(digits)}{rnd.choice(letters)}{rnd.choice(digits)}",
                "region": region,
            }
        email = None
        if rnd.random() < 0.85:
            email = {"email": f"{_fold(first)}.{_fold(last)}{rnd.randint(1, 99)}@{rnd.choice(_DOMAINS)}"}
        phone = None
        if rnd.random() < 0.9:
            phone = {"phoneNumber": f"+1{rnd.choice(areas)}{rnd.randint(200, 999)}{rnd.randint(0, 9999):04d}"}
        return {
            "id": self._id("con", n),
            "firstName": first,
            "lastName": last,
            "title": rnd.choice(_TITLES) if rnd.random() < 0.25 else None,
            "wantsEmail": email is not None and rnd.random() < 0.8,
            "wantsText": phone is not None and rnd.random() < 0.5,
            "defaultEmail": email,
            "defaultPhone": phone,
            "defaultLocation": location,
            "createdAt": iso(created),
            "updatedAt": iso(updated),
        }

    def _generate(self) -> None:
        anchor = self._anchor_s
        users = [self._user(i) for i in range(self.technician_count)]
        user_ids = [u["id"] for u in users]

        rnd = random.Random(f"{self.seed}:clients")
        clients, pianos, contact_n = [], [], 0
        pianos_of: dict[str, list[str]] = {}
        for i in range(self.client_count):
            created, updated = self._stamps(rnd, anchor - 3 * 365 * _DAY)
            kind = _weighted(rnd, (0.78, 0.12, 0.10))
            client_type = ("RESIDENTIAL", "COMMERCIAL", "INSTITUTION")[kind]
            last = rnd.choice(_LAST_NAMES)
            contacts = []
            for c in range(1 + (rnd.random() < 0.35) + (rnd.random() < 0.12)):
                contacts.append(self._contact(rnd, contact_n, created, last, c == 0))
                contact_n += 1
            city = (contacts[0]["defaultLocation"] or {}).get("municipality") or "Montréal"
            client = {
                "id": self._id("cli", i),
                "companyName": rnd.choice(_COMPANIES).format(city=city) if kind else None,
                "status": ("ACTIVE", "INACTIVE", "PROSPECT")[_weighted(rnd, (0.85, 0.1, 0.05))],
                "clientType": client_type,
                "tags": rnd.sample(_TAGS, _weighted(rnd, (0.6, 0.25, 0.1, 0.05))),
                "preferredTechnicianId": rnd.choice(user_ids) if rnd.random() < 0.5 else None,
                "personalNotes": rnd.choice(_CLIENT_NOTES) if rnd.random() < 0.25 else None,
                "preferenceNotes": rnd.choice(_PREFERENCES) if rnd.random() < 0.2 else None,
                "localization": (None, {"locale": "fr_CA"}, {"locale": "en_CA"})[_weighted(rnd, (0.3, 0.6, 0.1))],
                "createdAt": iso(created),
                "updatedAt": iso(updated),
                "defaultContact": contacts[0],
                "contacts": contacts,
            }
            clients.append(client)
            owned = pianos_of.setdefault(client["id"], [])
            for _ in range(_weighted(rnd, (0.1, 0.6, 0.2, 0.1))):  # 1.3 pianos per client on average
                make, models, types = rnd.choice(_PIANOS)
                m = rnd.randrange(len(models))
                p_created, p_updated = self._stamps(rnd, created)
                dampp = (None, False, True)[_weighted(rnd, (0.5, 0.3, 0.2))]
                piano = {
                    "id": self._id("pno", len(pianos)),
                    "client": {"id": client["id"]},
                    "make": make,
                    "model": models[m] if rnd.random() < 0.9 else None,
                    "serialNumber": (
                        None
                        if rnd.random() < 0.1
                        else f"{rnd.choice(('', '', 'T', 'No ', 'S/N '))}{rnd.randint(1000, 6_999_999)}"
                    ),
                    "type": types[m],
                    "year": rnd.randint(1890, self.anchor.year) if rnd.random() < 0.8 else None,
                    "status": "INACTIVE" if rnd.random() < 0.08 else "ACTIVE",
                    "location": rnd.choice(_PIANO_LOCATIONS) if rnd.random() < 0.6 else None,
                    "notes": rnd.choice(_PIANO_NOTES) if rnd.random() < 0.3 else None,
                    "damppChaserInstalled": dampp,
                    "damppChaserHumidistatModel": rnd.choice(_HUMIDISTATS) if dampp else None,
                    "damppChaserMfgDate": (
                        date(rnd.randint(2005, 2025), rnd.randint(1, 12), 1).isoformat()
                        if dampp and rnd.random() < 0.7
                        else None
                    ),
                    "createdAt": iso(p_created),
                    "updatedAt": iso(p_updated),
                }
                pianos.append(piano)
                owned.append(piano["id"])
        with_pianos = [c for c in clients if pianos_of[c["id"]]]

        rnd = random.Random(f"{self.seed}:events")
        events = []
        for offset in range(-120, 31):
            day = self.anchor + timedelta(days=offset)
            weights = (0.85, 0.15, 0.0, 0.0) if day.weekday() == 6 else (0.3, 0.35, 0.23, 0.12)
            for user_id in user_ids:
                for slot in range(_weighted(rnd, weights)):
                    kind = _weighted(rnd, (0.82, 0.08, 0.06, 0.04))
                    if kind == 0 and not with_pianos:
                        kind = 1
                    all_day = kind == 2 and rnd.random() < 0.6
                    # Planned in the account's zone: 8 h, 10 h, 12 h... local; some evenings (past midnight UTC).
                    hour = 20 if slot and rnd.random() < 0.15 else 8 + 2 * slot
                    local = datetime.combine(day, datetime.min.time(), self.zone)
                    if not all_day:
                        local = local.replace(hour=hour, minute=rnd.choice((0, 30)))
                    start = int(local.timestamp())
                    client, event_pianos = None, []
                    if kind == 0:
                        client = rnd.choice(with_pianos)
                        owned = pianos_of[client["id"]]
                        event_pianos = rnd.sample(owned, 2 if len(owned) > 1 and rnd.random() < 0.25 else 1)
                        label = client["companyName"] or "{firstName} {lastName}".format(**client["defaultContact"])
                        title = f"{rnd.choice(_SERVICES)} — {label}"
                    else:
                        title = rnd.choice((_PERSONAL, _MEMOS, _SYNCED)[kind - 1])
                    created = start - rnd.randint(3600, 45 * _DAY)
                    if created >= anchor:
                        created = anchor - rnd.randint(3600, 30 * _DAY)
                    updated = created + rnd.randrange(max(1, min(start + _DAY, anchor) - created))
                    if kind != 0:
                        status = "ACTIVE"
                    elif start < anchor:
                        status = ("COMPLETE", "CANCELED", "ACTIVE")[_weighted(rnd, (0.85, 0.1, 0.05))]
                    else:
                        status = "CANCELED" if rnd.random() < 0.1 else "ACTIVE"
                    events.append(
                        {
                            "id": self._id("evt", len(events)),
                            "title": title,
                            "start": iso(start),
                            "duration": 1440 if all_day else rnd.choice((30, 60, 60, 90, 120, 180)),
                            "isAllDay": all_day,
                            "type": ("APPOINTMENT", "PERSONAL", "MEMO", "SYNCED")[kind],
                            "status": status,
                            "notes": rnd.choice(_EVENT_NOTES) if rnd.random() < 0.3 else None,
                            "confirmedByClient": kind == 0 and rnd.random() < (0.95 if start < anchor else 0.6),
                            "createdAt": iso(created),
                            "updatedAt": iso(updated),
                            "client": {"id": client["id"]} if client else None,
                            "user": {"id": user_id},
                            "allEventPianos": {"nodes": [{"piano": {"id": p}} for p in event_pianos]},
                        }
                    )

        rnd = random.Random(f"{self.seed}:timeline")
        timeline, types = [], tuple(_TIMELINE)
        for client in clients:
            owned = pianos_of[client["id"]]
            for _ in range(_weighted(rnd, (0.2, 0.25, 0.2, 0.15, 0.1, 0.05, 0.05))):
                kind = rnd.choice(types)
                number = rnd.randint(1000, 99999)
                timeline.append(
                    {
                        "id": self._id("tle", len(timeline)),
                        "occurredAt": iso(anchor - 400 * _DAY + rnd.randrange(400 * _DAY)),
                        "type": kind,
                        "summary": rnd.choice(_TIMELINE[kind]).format(n=number) or None,
                        "comment": rnd.choice(_TIMELINE_COMMENTS) if rnd.random() < 0.3 else None,
                        "client": {"id": client["id"]},
                        "piano": {"id": rnd.choice(owned)} if owned and rnd.random() < 0.7 else None,
                        "user": {"id": rnd.choice(user_ids)} if rnd.random() < 0.55 else None,
                        "invoice": {"id": self._id("inv", number)} if kind == "INVOICE" else None,
                        "estimate": {"id": self._id("est", number)} if kind == "ESTIMATE" else None,
                    }
                )

        self._records = {}
        for kind, records in zip(self.KINDS, (users, clients, pianos, events, timeline), strict=True):
            self._records[kind] = {r["id"]: r for r in records}
            if len(self._records[kind]) != len(records):  # 80-bit hashes: never in practice
                raise RuntimeError(f"duplicate generated {kind} id")
        self._pianos_of = pianos_of

    # ------------------------------------------------------------------ queries

    def get(self, kind: str, record_id: str | None) -> dict | None:
        """The stored record (not a copy) of that kind and id, or None."""
        return self._records[kind].get(record_id) if record_id is not None else None

    def pianos_of(self, client_id: str) -> list[dict]:
        """The client's pianos, in id order (stored records, not copies)."""
        with self._lock:
            return sorted((self._records["pianos"][p] for p in self._pianos_of.get(client_id, ())),
                          key=lambda r: r["id"])  # fmt: skip

    def query(self, kind: str, sort_by: tuple[str, ...] = (), **filters: object) -> list[dict]:
        """Stored records of ``kind`` matching ``filters``, sorted by the ``sortBy`` enum values (default id
        ascending; ties broken by id ascending). Cached until the data changes; do not modify the result.

        Filters: events ``start_on``/``end_on`` (dates, inclusive, on the start's date in the account's zone),
        ``types``, ``client_ids``; timeline ``gte``/``lte`` (datetimes, inclusive), ``client_id``, ``piano_id``,
        ``types``.
        """
        key = (kind, tuple(sort_by), tuple(sorted((k, _hashable(v)) for k, v in filters.items() if v is not None)))
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                return cached
            records = sorted(self._records[kind].values(), key=lambda r: r["id"])
            for name in reversed(sort_by):
                field, descending = SORTS[name]
                records.sort(key=lambda r, f=field: r[f], reverse=descending)  # stable: ties stay in id order
            records = [r for r in records if _matches(kind, r, filters, self.zone)]
            if len(self._cache) > 64:
                self._cache.clear()
            self._cache[key] = records
            return records

    def users(self, sort_by: str | None = None) -> list[dict]:
        """Ground truth of ``allUsers`` (default order: id ascending), as copies."""
        return self._copies("users", sort_by)

    def clients(self, sort_by: str | None = None) -> list[dict]:
        """Ground truth of ``allClients``: each client with ``defaultContact`` and the full ``contacts`` list."""
        return self._copies("clients", sort_by)

    def pianos(self, sort_by: str | None = None) -> list[dict]:
        return self._copies("pianos", sort_by)

    def events(self, start_on: date | None = None, end_on: date | None = None, sort_by: str | None = None) -> list:
        """Events whose start's date in the account's zone is in [start_on, end_on] (inclusive; None = unbounded)."""
        return self._copies("events", sort_by, start_on=start_on, end_on=end_on)

    def timeline(self, gte: datetime | None = None, lte: datetime | None = None, sort_by: str | None = None) -> list:
        """Timeline entries with gte <= occurredAt <= lte (None = unbounded; naive datetimes are UTC)."""
        return self._copies("timeline", sort_by, gte=gte, lte=lte)

    def _copies(self, kind: str, sort_by: str | None, **filters: object) -> list[dict]:
        with self._lock:
            return copy.deepcopy(self.query(kind, (sort_by,) if sort_by else (), **filters))

    # ------------------------------------------------------------------ changes

    def _now(self) -> str:
        """Wall-clock UTC time, never before the anchor's midnight (so later than every generated stamp)."""
        return iso(max(int(time.time()), self._anchor_s))

    def mutate(self, k: int, entity: str = "clients") -> list[str]:
        """Edit k clients or pianos (a new, deterministic pick on each call until all were picked) and return
        their ids; their ``updatedAt`` becomes now.

        Clients: ``personalNotes`` always changes, ``status`` sometimes, ``companyName`` sometimes (companies).
        Pianos: ``notes`` always changes, ``location`` sometimes.
        """
        if entity not in ("clients", "pianos"):
            raise ValueError(f"entity must be clients or pianos, not {entity!r}")
        with self._lock:
            records = self._records[entity]
            order = list(records)  # generation order
            n, ids, now = len(order), [], self._now()
            step = next((s for s in range(int(n * 0.618) + 1, 2 * n + 2) if math.gcd(s, n) == 1), 1)
            for _ in range(min(k, n)):
                j = self._mutations[entity]
                self._mutations[entity] += 1
                rnd = random.Random(f"{self.seed}:mutate:{entity}:{j}")
                record = dict(records[order[(j * step) % n]])
                if entity == "clients":
                    record["personalNotes"] = f"{rnd.choice(_CLIENT_NOTES)} (modif. n° {j + 1})"
                    if rnd.random() < 0.5:
                        record["status"] = "INACTIVE" if record["status"] == "ACTIVE" else "ACTIVE"
                    if record["companyName"] and rnd.random() < 0.3:
                        record["companyName"] = f"{record['companyName']} inc."
                else:
                    record["notes"] = f"{rnd.choice(_PIANO_NOTES)} (visite n° {j + 1})"
                    if rnd.random() < 0.4:
                        record["location"] = rnd.choice([x for x in _PIANO_LOCATIONS if x != record["location"]])
                record["updatedAt"] = now
                records[record["id"]] = record
                self._mutated[entity].add(record["id"])
                ids.append(record["id"])
            self._cache.clear()
            return ids

    def remove(self, kind: str, record_id: str) -> bool:
        """Delete a record upstream (e.g. an appointment); True when it existed."""
        with self._lock:
            removed = self._records[kind].pop(record_id, None) is not None
            self._cache.clear()
            return removed

    def add_technician(self) -> dict:
        """Hire a technician now (createdAt = updatedAt = now) and return a copy of the new user."""
        with self._lock:
            users = self._records["users"]
            user = self._user(len(users), created=max(int(time.time()), self._anchor_s))
            user["status"] = "ACTIVE"
            users[user["id"]] = user
            self._hired += 1
            self._cache.clear()
            return dict(user)

    def make_hostile(self) -> dict[str, str]:
        """Serve one record per kind of value a real API can send and a loader must survive; returns, per kind,
        the id of the record the sync reads (a contact's client: contacts come nested in their client).

        nul, lone_surrogate: a client text JSON can carry but Postgres cannot store (NUL, a lone UTF-16 surrogate);
        impossible_date, offset_99, contact_hour_25, year_0000, event_no_such_date, timeline_hour_25: a timestamp
        or date shaped like ISO 8601 that is no moment (in a client, a contact, a piano, an event, a timeline
        entry). The clients picked have no pianos; the event starts on the anchor's day and the entry occurred the
        day before it (inside a sync's default windows around the anchor).
        """
        with self._lock:
            records, before = self._records, iso(self._anchor_s - _DAY)[:10]
            lonely = [c for c in records["clients"].values() if c["contacts"] and not self._pianos_of.get(c["id"])]
            clients = dict(
                zip(
                    ("nul", "lone_surrogate", "impossible_date", "offset_99", "contact_hour_25"),
                    lonely[:: max(1, len(lonely) // 5)],
                    strict=False,
                )
            )
            fields = {
                "nul": {"companyName": "Nul\x00l"},
                "lone_surrogate": {"personalNotes": "Half \ud83d"},
                "impossible_date": {"updatedAt": "2026-02-30T10:00:00Z"},
                "offset_99": {"updatedAt": "2025-06-01T10:00:00+99:00"},
            }
            for kind, client in clients.items():
                client = records["clients"][client["id"]] = dict(client, **fields.get(kind, {}))
                if kind == "contact_hour_25":
                    client["contacts"] = [
                        dict(client["contacts"][0], createdAt="2025-06-01T25:00:00Z"),
                        *client["contacts"][1:],
                    ]
            piano = next(iter(records["pianos"].values()))
            records["pianos"][piano["id"]] = dict(piano, damppChaserMfgDate="0000-06-01")
            event = next(
                e
                for e in records["events"].values()
                if parse_datetime(e["start"]).astimezone(self.zone).date() == self.anchor
            )
            records["events"][event["id"]] = dict(event, createdAt="2026-04-31T09:00:00Z")
            entry = next(t for t in records["timeline"].values() if t["occurredAt"].startswith(before))
            records["timeline"][entry["id"]] = dict(entry, occurredAt=f"{before}T25:00:00Z")
            self._cache.clear()
            return {
                **{kind: c["id"] for kind, c in clients.items()},
                "year_0000": piano["id"],
                "event_no_such_date": event["id"],
                "timeline_hour_25": entry["id"],
            }

    def reset(self) -> None:
        """Restore the generated data (forgets mutations and hires)."""
        with self._lock:
            self._generate()
            self._mutations = {"clients": 0, "pianos": 0}
            self._mutated: dict[str, set[str]] = {"clients": set(), "pianos": set()}
            self._hired = 0
            self._cache: dict[tuple, list[dict]] = {}

    def describe(self) -> dict[str, object]:
        with self._lock:
            return {
                "seed": self.seed,
                "anchor": self.anchor.isoformat(),
                "users": len(self._records["users"]),
                "technicians": self.technician_count,
                "hired": self._hired,
                "clients": len(self._records["clients"]),
                "contacts": sum(len(c["contacts"]) for c in self._records["clients"].values()),
                "pianos": len(self._records["pianos"]),
                "events": len(self._records["events"]),
                "timeline_entries": len(self._records["timeline"]),
                "mutated": {k: len(v) for k, v in self._mutated.items()},
            }


def _hashable(value: object) -> object:
    return tuple(value) if isinstance(value, list) else value


def _matches(kind: str, record: dict, filters: dict, zone: ZoneInfo) -> bool:
    """Filters of ``GazelleData.query`` (None values are ignored)."""
    for name, value in filters.items():
        if value is None:
            continue
        if name in ("start_on", "end_on"):
            day = parse_datetime(record["start"]).astimezone(zone).date()
            if day < value if name == "start_on" else day > value:
                return False
        if name == "types" and record["type"] not in value:
            return False
        if name == "client_ids" and (record["client"] or {}).get("id") not in value:
            return False
        if name == "client_id" and (record["client"] or {}).get("id") != value:
            return False
        if name == "piano_id" and (record["piano"] or {}).get("id") != value:
            return False
        if name in ("gte", "lte"):
            moment = value if value.tzinfo else value.replace(tzinfo=UTC)
            stamp = moment.timestamp()
            # Stamps have whole seconds: compare the strings with the bound rounded inwards.
            bound = iso(math.ceil(stamp)) if name == "gte" else iso(math.floor(stamp))
            if (record["occurredAt"] < bound) if name == "gte" else (record["occurredAt"] > bound):
                return False
    return True


# ---------------------------------------------------------------------------------------------- GraphQL


class CursorError(GraphQLError):
    pass


def encode_cursor(position: int) -> str:
    """graphql-ruby style: urlsafe base64 (no padding) of the 1-based position in the sorted, filtered list."""
    return base64.urlsafe_b64encode(str(position).encode()).rstrip(b"=").decode()


def decode_cursor(cursor: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
    except ValueError:  # binascii.Error and UnicodeDecodeError are ValueErrors
        raise CursorError("Invalid cursor") from None
    if not raw or len(raw) > 12 or not all("0" <= c <= "9" for c in raw):
        raise CursorError("Invalid cursor")
    return int(raw)


def _page_size(first: int | None) -> int:
    if first is None:
        return DEFAULT_PAGE_SIZE
    if first > MAX_PAGE_SIZE:
        raise GraphQLError(f"first must be <= {MAX_PAGE_SIZE}")
    if first < 0:
        raise GraphQLError("first must be >= 0")
    return first


def connection(records: list, first: int | None, after: str | None) -> dict:
    """A Relay connection over an offset into ``records`` (graphql-ruby's array connection)."""
    size = _page_size(first)
    start = min(decode_cursor(after), len(records)) if after is not None else 0
    nodes = records[start : start + size]
    edges = [{"cursor": encode_cursor(start + i + 1), "node": node} for i, node in enumerate(nodes)]
    return {
        "edges": edges,
        "nodes": nodes,
        "pageInfo": {
            "hasNextPage": start + size < len(records),
            "hasPreviousPage": start > 0,
            "startCursor": edges[0]["cursor"] if edges else None,
            "endCursor": edges[-1]["cursor"] if edges else None,
        },
        "totalCount": len(records),
    }


SIMULATED_SORTS = {  # the schema's sortBy values the sandbox orders by
    "allClients": ("CREATED_AT_ASC", "CREATED_AT_DESC"),
    "allPianos": ("CREATED_AT_ASC", "CREATED_AT_DESC"),
    "allEventsBatched": ("START_ASC", "START_DESC"),
}


def _sorting(field: str, sort_by: list[str] | None) -> tuple[str, ...]:
    for name in sort_by or ():
        if name not in SIMULATED_SORTS.get(field, ()):
            raise GraphQLError(f"sandbox: sortBy {name} is valid but not simulated")
    return tuple(sort_by or ())


def _simulated(args: dict, names: tuple[str, ...] = ()) -> None:
    """Refuse valid arguments the sandbox does not simulate (rather than silently ignoring them)."""
    extra = sorted(name for name, value in args.items() if value is not None and name not in names)
    if extra:
        raise GraphQLError(f"sandbox: argument(s) {', '.join(extra)} are valid but not simulated")


def _list(kind: str, field: str):
    """A root connection without filters (allClients, allPianos)."""

    def resolve(_root, info, first=None, after=None, sortBy=None, **args):
        _simulated(args)
        return connection(info.context.query(kind, _sorting(field, sortBy)), first, after)

    return resolve


def _events(_root, info, first=None, after=None, sortBy=None, filters=None, **args):
    _simulated(args)
    filters = dict(filters or {})
    _simulated(filters, ("startOn", "endOn", "type", "clientId"))
    records = info.context.query(
        "events",
        _sorting("allEventsBatched", sortBy),
        start_on=filters.get("startOn"),
        end_on=filters.get("endOn"),
        types=filters.get("type"),
        client_ids=filters.get("clientId"),
    )
    return connection(records, first, after)


def _timeline(_root, info, first=None, after=None, occurredAtGet=None, clientId=None, pianoId=None, types=None, **args):
    _simulated(args)
    records = info.context.query("timeline", (), gte=occurredAtGet, client_id=clientId, piano_id=pianoId, types=types)
    return connection(records, first, after)


def _by_id(kind: str, alias: str):
    def resolve(_root, info, id=None, **args):  # noqa: A002 (the schema's argument name)
        return info.context.get(kind, id or args.get(alias))

    return resolve


def _ref(kind: str, field: str):
    def resolve(parent, info):
        return info.context.get(kind, (parent.get(field) or {}).get("id"))

    return resolve


def _parse_literal(parser):
    def parse_literal(node, _variables=None):
        if not isinstance(node, StringValueNode):
            raise ValueError("expected a string")  # graphql-core adds the type, the value and the location
        return parser(node.value)

    return parse_literal


def _serialize_datetime(value: object) -> str:
    if isinstance(value, datetime):
        return iso(int(value.timestamp()))
    if isinstance(value, str):
        return value
    raise GraphQLError(f"CoreDateTime cannot represent {value!r}")


def _serialize_date(value: object) -> str:
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, str):
        return value
    raise GraphQLError(f"CoreDate cannot represent {value!r}")


def build_gazelle_schema():
    """The executable schema: the real ``SDL`` plus resolvers, reading a ``GazelleData`` passed as the context
    value, on the fields the sandbox simulates (any other field resolves from the record dict: null if absent)."""
    schema = build_schema(SDL)
    types = schema.type_map
    for name, output, parser in (
        ("CoreDate", _serialize_date, parse_date),
        ("CoreDateTime", _serialize_datetime, parse_datetime),
    ):
        scalar = types[name]
        # graphql-core 3.3 reads the coerce_* attributes; the older names are kept in step.
        scalar.coerce_output_value = scalar.serialize = output
        scalar.coerce_input_value = scalar.parse_value = parser
        scalar.coerce_input_literal = scalar.parse_literal = _parse_literal(parser)

    query = schema.query_type.fields
    query["allUsers"].resolve = lambda _root, info: info.context.query("users")
    query["allClients"].resolve = _list("clients", "allClients")
    query["allPianos"].resolve = _list("pianos", "allPianos")
    query["allEventsBatched"].resolve = _events
    query["allTimelineEntries"].resolve = _timeline
    query["client"].resolve = _by_id("clients", "clientId")
    query["piano"].resolve = _by_id("pianos", "pianoId")

    client = types["PrivateClient"].fields
    client["allContacts"].resolve = lambda parent, _info, first=None, after=None, **args: (
        _simulated(args) or connection(parent["contacts"], first, after)
    )
    client["allPianos"].resolve = lambda parent, info, first=None, after=None, **args: (
        _simulated(args) or connection(info.context.pianos_of(parent["id"]), first, after)
    )
    types["PrivatePiano"].fields["client"].resolve = _ref("clients", "client")
    event = types["PrivateEvent"].fields
    event["client"].resolve = _ref("clients", "client")
    event["user"].resolve = _ref("users", "user")
    event["allEventPianos"].resolve = lambda parent, _info, first=None, after=None, **args: (
        _simulated(args) or connection(parent["allEventPianos"]["nodes"], first, after)
    )
    types["PrivateEventPiano"].fields["piano"].resolve = _ref("pianos", "piano")
    entry = types["PrivateTimelineEntry"].fields
    entry["client"].resolve = _ref("clients", "client")
    entry["piano"].resolve = _ref("pianos", "piano")
    entry["user"].resolve = _ref("users", "user")
    return schema


SCHEMA = build_gazelle_schema()


def root_fields(document, operation_name: str | None) -> set[str]:
    """Names of the root fields the operation asks for (through fragments too), or an empty set."""
    operation = get_operation_ast(document, operation_name)
    if operation is None:
        return set()
    fragments = {d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)}
    names: set[str] = set()
    seen: set[str] = set()

    def walk(selection_set) -> None:
        for selection in selection_set.selections:
            if isinstance(selection, FieldNode):
                names.add(selection.name.value)
            elif isinstance(selection, InlineFragmentNode):
                walk(selection.selection_set)
            elif isinstance(selection, FragmentSpreadNode) and selection.name.value not in seen:
                seen.add(selection.name.value)
                if selection.name.value in fragments:
                    walk(fragments[selection.name.value].selection_set)

    walk(operation.selection_set)
    return names & set(ROOT_FIELDS)


# ---------------------------------------------------------------------------------------------- app


@dataclass
class GazelleFaults(Faults):
    """Common faults plus a GraphQL-level one."""

    graphql_errors: int = 0  # the next N GraphQL requests: 200 {"data": null, "errors": [INTERNAL_SERVER_ERROR]}


INTERNAL_ERROR = {"message": "Internal server error", "extensions": {"code": "INTERNAL_SERVER_ERROR"}}
_INVALID_GRANT = (
    "The provided authorization grant is invalid, expired, revoked, does not match the redirection URI used "
    "in the authorization request, or was issued to another client."
)
_INVALID_CLIENT = (
    "Client authentication failed due to unknown client, no client authentication included, "
    "or unsupported authentication method."
)


class OAuthServer:
    """Doorkeeper-like authorization server: one application, authorization codes, rotating refresh tokens.

    Access tokens live in a common ``TokenStore``. Each refresh revokes the refresh token it used and issues a
    new one; the access token issued alongside the old refresh token stays valid until it expires.
    """

    def __init__(self, client_id: str, client_secret: str, refresh_token: str, token_ttl: float):
        self.client_id, self.client_secret = client_id, client_secret
        self.initial_refresh_token = refresh_token
        self.token_ttl = token_ttl
        self.access = TokenStore(token_ttl)
        self._lock = threading.Lock()
        self._refresh: dict[str, dict] = {}
        self._codes: dict[str, dict] = {}
        self.refreshes = 0
        self.reset()

    def reset(self) -> None:
        """The initial refresh token is valid again; tokens issued since stay as they are."""
        with self._lock:
            self._refresh[self.initial_refresh_token] = {"client_id": self.client_id, "scope": "public",
                                                         "revoked": False}  # fmt: skip
            self._codes.clear()
            self.refreshes = 0

    def valid_refresh_tokens(self) -> int:
        with self._lock:
            return sum(not r["revoked"] for r in self._refresh.values())

    def authorize(self, redirect_uri: str, scope: str) -> str:
        code = secrets.token_urlsafe(32)
        with self._lock:
            self._codes[code] = {"redirect_uri": redirect_uri, "scope": scope, "expires_at": time.time() + CODE_TTL}
        return code

    def _issue(self, scope: str) -> dict:
        token = self.access.issue(self.client_id, scope)
        refresh = secrets.token_urlsafe(32)
        self._refresh[refresh] = {"client_id": self.client_id, "scope": scope, "revoked": False}
        return {
            "access_token": token.value,
            "token_type": "Bearer",
            "expires_in": int(self.token_ttl),
            "refresh_token": refresh,
            "scope": scope,
            "created_at": int(token.created_at),
        }

    def grant(self, params: dict[str, str]) -> tuple[int, dict]:
        """(HTTP status, JSON body) of a token request."""
        grant_type = params.get("grant_type")
        if grant_type not in ("authorization_code", "refresh_token"):
            error = "invalid_request" if not grant_type else "unsupported_grant_type"
            return 400, {"error": error, "error_description": "Supported grants: authorization_code, refresh_token."}
        if (params.get("client_id"), params.get("client_secret")) != (self.client_id, self.client_secret):
            return 401, {"error": "invalid_client", "error_description": _INVALID_CLIENT}
        with self._lock:
            if grant_type == "authorization_code":
                if not params.get("code"):
                    return 400, {"error": "invalid_request", "error_description": "Missing required parameter: code."}
                code = self._codes.pop(params["code"], None)  # single use
                if (
                    code is None
                    or code["expires_at"] <= time.time()
                    or code["redirect_uri"] != params.get("redirect_uri")
                ):
                    return 400, {"error": "invalid_grant", "error_description": _INVALID_GRANT}
                return 200, self._issue(code["scope"])
            if not params.get("refresh_token"):
                return 400, {"error": "invalid_request", "error_description": "Missing required parameter: "
                             "refresh_token."}  # fmt: skip
            refresh = self._refresh.get(params["refresh_token"])
            if refresh is None or refresh["revoked"] or refresh["client_id"] != self.client_id:
                return 400, {"error": "invalid_grant", "error_description": _INVALID_GRANT}
            refresh["revoked"] = True  # rotation: the used refresh token is gone
            self.refreshes += 1
            return 200, self._issue(refresh["scope"])


def _graphql_error(message: str, status: int = 400) -> Response:
    return json_response({"errors": [{"message": message}]}, status)


def create_app(
    data: GazelleData | None = None,
    *,
    client_id: str = DEFAULT_CLIENT_ID,
    client_secret: str = DEFAULT_CLIENT_SECRET,
    refresh_token: str = DEFAULT_REFRESH_TOKEN,
    api_key: str = DEFAULT_API_KEY,
    per_second: int = 10,
    limits: list[tuple[int, float]] | None = None,
    token_ttl: float = 3600,
    faults: Faults | None = None,
) -> FastAPI:
    """The Gazelle sandbox. ``app.state.data`` is the GazelleData, ``app.state.sandbox`` the Sandbox (its
    ``faults`` a ``GazelleFaults``), ``app.state.oauth`` the OAuthServer.

    ``limits`` ([(count, window_seconds), ...]) overrides ``per_second``; limits apply per access token / API key.
    """
    data = data if data is not None else GazelleData()
    limits = limits if limits is not None else [(per_second, 1.0)]
    if faults is None:
        faults = GazelleFaults()
    elif not isinstance(faults, GazelleFaults):
        faults = GazelleFaults(**asdict(faults))
    sandbox = Sandbox("gazelle", limits, faults)
    oauth = OAuthServer(client_id, client_secret, refresh_token, token_ttl)
    counters_lock = threading.Lock()
    queries: Counter[str] = Counter()
    injected = {"graphql_errors": 0}
    failing: set[str] = set()  # root fields whose queries fail (POST /_sandbox/fail_fields)

    def reset_data() -> None:
        data.reset()
        oauth.reset()
        with counters_lock:
            queries.clear()
            injected["graphql_errors"] = 0
            failing.clear()

    def extra_state() -> dict[str, object]:
        with counters_lock:
            return {
                "queries": {name: queries[name] for name in ROOT_FIELDS},
                "graphql_errors_injected": injected["graphql_errors"],
                "tokens": len(oauth.access),
                "refresh_tokens": oauth.valid_refresh_tokens(),
                "refreshes": oauth.refreshes,
                "failing_fields": sorted(failing),
            }

    app = FastAPI(title="Gazelle private API sandbox", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.data = data
    app.state.oauth = oauth
    install(
        app,
        sandbox,
        Controls(
            describe=data.describe,
            mutate=data.mutate,
            reset_data=reset_data,
            expire_tokens=oauth.access.expire_all,
            extra_state=extra_state,
        ),
    )

    # -------------------------------------------------------------- Gazelle-specific controls

    async def _k(request: Request) -> int:
        k = json.loads(await request.body() or b"{}").get("k", 1)
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise ValueError("k must be a non-negative integer")
        return k

    @app.post("/_sandbox/mutate_pianos")
    async def mutate_pianos(request: Request) -> Response:
        try:
            k = await _k(request)
        except (ValueError, AttributeError) as exc:
            return json_response({"error": str(exc)}, 400)
        return json_response({"ids": data.mutate(k, "pianos")})

    @app.post("/_sandbox/fail_fields")
    async def fail_fields(request: Request) -> Response:
        fields = json.loads(await request.body() or b"{}").get("fields", [])
        if not isinstance(fields, list) or not set(fields) <= set(ROOT_FIELDS):
            return json_response({"error": f"fields must be a list of {', '.join(ROOT_FIELDS)}"}, 400)
        with counters_lock:
            failing.clear()
            failing.update(fields)
        return json_response({"fields": sorted(failing)})

    @app.post("/_sandbox/remove")
    async def remove(request: Request) -> Response:
        body = json.loads(await request.body() or b"{}")
        if body.get("kind") not in GazelleData.KINDS or not isinstance(body.get("id"), str):
            return json_response({"error": f"give a kind ({', '.join(GazelleData.KINDS)}) and an id"}, 400)
        return json_response({"removed": data.remove(body["kind"], body["id"])})

    @app.post("/_sandbox/hostile")
    def hostile() -> Response:
        return json_response({"ids": data.make_hostile()})

    @app.post("/_sandbox/hire")
    def hire() -> Response:
        return json_response({"user": data.add_technician()})

    # -------------------------------------------------------------- OAuth

    no_cache = {"Cache-Control": "no-store", "Pragma": "no-cache"}

    @app.get(AUTHORIZE_PATH)
    def authorize(request: Request) -> Response:
        params = request.query_params
        if params.get("client_id") != client_id:
            sandbox.stats.add("unauthorized")
            return json_response({"error": "invalid_client", "error_description": _INVALID_CLIENT}, 401)
        redirect_uri = params.get("redirect_uri")
        if not redirect_uri:
            body = {"error": "invalid_request", "error_description": "Missing required parameter: redirect_uri."}
            return json_response(body, 400)
        extra = {"state": params["state"]} if "state" in params else {}
        if params.get("response_type") != "code":
            query = urlencode({"error": "unsupported_response_type", **extra})
        else:
            query = urlencode({"code": oauth.authorize(redirect_uri, params.get("scope") or "public"), **extra})
        return RedirectResponse(f"{redirect_uri}{'&' if '?' in redirect_uri else '?'}{query}", status_code=302)

    @app.post(TOKEN_PATH)
    async def token(request: Request) -> Response:
        status, body = oauth.grant(await oauth_params(request))
        if status == 200:
            sandbox.stats.add("tokens_issued")
        elif status == 401:
            sandbox.stats.add("unauthorized")
        return json_response(body, status, no_cache)

    # -------------------------------------------------------------- GraphQL

    def authenticate(request: Request) -> tuple[tuple[str, str] | None, str | None]:
        """(rate-limit key, None) or (None, 401 message)."""
        auth = request.headers.get("authorization")
        if auth is not None:
            if not auth.lower().startswith("bearer "):
                return None, "Unauthorized: unsupported Authorization scheme (use Bearer)"
            value = auth[7:].strip()
            _token, state = oauth.access.lookup(value)
            if state == "valid":
                return ("token", value), None
            if state == "expired":
                return None, "Unauthorized: the access token expired"
            return None, "Unauthorized: invalid access token"
        key = request.headers.get("x-gazelle-api-key")
        if key is None:
            return None, "Unauthorized: no credentials (Authorization: Bearer <token> or x-gazelle-api-key)"
        if key != api_key:
            return None, "Unauthorized: invalid API key"
        return ("api_key", key), None

    def unauthorized(message: str) -> Response:
        sandbox.stats.add("unauthorized")
        body = {"errors": [{"message": message, "extensions": {"code": "UNAUTHENTICATED"}}]}
        return json_response(body, 401, {"WWW-Authenticate": 'Bearer realm="Gazelle"'})

    def take_graphql_error(asked: set[str]) -> bool:
        with counters_lock:
            if asked & failing:
                return True
            if faults.graphql_errors > 0:
                faults.graphql_errors -= 1
                injected["graphql_errors"] += 1
                return True
            return False

    def run(body: bytes) -> Response:
        try:
            payload = json.loads(body)
        except ValueError:
            return _graphql_error("Invalid JSON in the request body")
        if not isinstance(payload, dict) or not isinstance(payload.get("query"), str) or not payload["query"]:
            return _graphql_error("No query string was present")
        variables, operation_name = payload.get("variables"), payload.get("operationName")
        if isinstance(variables, str):  # some clients send the variables JSON-encoded
            try:
                variables = json.loads(variables) if variables.strip() else None
            except ValueError:
                return _graphql_error("variables must be a JSON object")
        if variables is not None and not isinstance(variables, dict):
            return _graphql_error("variables must be a JSON object")
        if operation_name is not None and not isinstance(operation_name, str):
            return _graphql_error("operationName must be a string")
        try:
            document = parse(payload["query"])
        except GraphQLError as exc:
            return json_response({"errors": [exc.formatted]})
        errors = validate(SCHEMA, document)
        if errors:
            return json_response({"errors": [e.formatted for e in errors]})
        asked = root_fields(document, operation_name)
        with counters_lock:
            queries.update(asked)
        if take_graphql_error(asked):
            return json_response({"data": None, "errors": [INTERNAL_ERROR]})
        with data._lock:  # one consistent snapshot per request
            result = execute_sync(
                SCHEMA, document, variable_values=variables, operation_name=operation_name, context_value=data
            )
        response: dict[str, object] = {}
        # No data: the request failed before execution (e.g. bad variables); null data: a non-null root field
        # failed (the error has a path).
        if result.data is not None or any(e.path for e in result.errors or ()):
            response["data"] = result.data
        if result.errors:
            response["errors"] = [e.formatted for e in result.errors]
        return json_response(response)

    async def graphql_endpoint(request: Request) -> Response:
        started = time.perf_counter()
        roll = sandbox.roll()
        if roll.latency:
            await asyncio.sleep(roll.latency)
        key, problem = authenticate(request)
        if problem:
            response = unauthorized(problem)
        else:
            response, _remaining = sandbox.gate(key, roll)
            if response is None:
                response = sandbox.finish(run(await request.body()), roll)
        response.headers["X-Request-Id"] = str(uuid.uuid4())
        response.headers["X-Runtime"] = f"{time.perf_counter() - started:.6f}"
        return response

    app.add_api_route(GRAPHQL_PATH, graphql_endpoint, methods=["POST"])
    app.add_api_route(GRAPHQL_PATH.rstrip("/"), graphql_endpoint, methods=["POST"])
    return app

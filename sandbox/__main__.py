"""Command line: ``python -m sandbox <api> [options]`` runs one sandbox API until Ctrl-C."""

from __future__ import annotations

import argparse
import contextlib
import sys
import threading

from sandbox.common import add_fault_arguments, faults_from_args, serve


def _intra42(sub: argparse._SubParsersAction) -> None:
    from sandbox import intra42

    parser = sub.add_parser("intra42", help="42 intra API v2", description="42 intra API v2 sandbox")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8042, help="0 picks a free port")
    parser.add_argument("--students", type=int, default=40335, help="non-alumni students generated")
    parser.add_argument("--seed", type=int, default=42, help="seed of the generated data")
    parser.add_argument("--updated-from", default="2024-01-01T00:00:00Z")
    parser.add_argument("--updated-to", default="2026-01-01T00:00:00Z")
    parser.add_argument("--client-id", default=intra42.DEFAULT_CLIENT_ID)
    parser.add_argument("--client-secret", default=intra42.DEFAULT_CLIENT_SECRET)
    parser.add_argument("--per-second", type=int, default=2, help="rate limit per application")
    parser.add_argument("--per-hour", type=int, default=1200, help="rate limit per application")
    parser.add_argument("--token-ttl", type=float, default=7200, help="token lifetime, seconds")
    add_fault_arguments(parser)

    def build(args: argparse.Namespace):
        data = intra42.Intra42Data(args.students, args.seed, args.updated_from, args.updated_to)
        return intra42.create_app(
            data,
            client_id=args.client_id,
            client_secret=args.client_secret,
            per_second=args.per_second,
            per_hour=args.per_hour,
            token_ttl=args.token_ttl,
            faults=faults_from_args(args),
        )

    parser.set_defaults(build=build)


def _portaildf(sub: argparse._SubParsersAction) -> None:
    from sandbox import portaildf

    parser = sub.add_parser(
        "portaildf", help="Cerema Portail DF API", description="Cerema Portail DF API sandbox (V1 and V2 auth)"
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8043, help="0 picks a free port")
    parser.add_argument("--users", type=int, default=1234, help="rows of the application's users table")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated data")
    parser.add_argument("--username", default=portaildf.DEFAULT_USERNAME)
    parser.add_argument("--password", default=portaildf.DEFAULT_PASSWORD)
    parser.add_argument("--per-second", type=int, default=10, help="rate limit per account")
    parser.add_argument("--access-ttl", type=float, default=300, help="V2 access token lifetime, seconds")
    parser.add_argument(
        "--no-link-quirks", action="store_true", help="clean next/previous links (no http://, no stray %%23)"
    )
    add_fault_arguments(parser)

    def build(args: argparse.Namespace):
        return portaildf.create_app(
            portaildf.PortailDFData(args.users, args.seed),
            username=args.username,
            password=args.password,
            per_second=args.per_second,
            access_ttl=args.access_ttl,
            faults=faults_from_args(args),
            link_quirks=not args.no_link_quirks,
        )

    parser.set_defaults(build=build)


def _gazelle(sub: argparse._SubParsersAction) -> None:
    from datetime import date

    from sandbox import gazelle

    parser = sub.add_parser(
        "gazelle", help="Gazelle private GraphQL API", description="Gazelle private GraphQL API sandbox"
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8044, help="0 picks a free port")
    parser.add_argument("--clients", type=int, default=850, help="clients generated")
    parser.add_argument("--technicians", type=int, default=5, help="users (technicians) generated")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated data")
    parser.add_argument("--anchor", help="YYYY-MM-DD the data is centred on (default: today, UTC)")
    parser.add_argument("--client-id", default=gazelle.DEFAULT_CLIENT_ID)
    parser.add_argument("--client-secret", default=gazelle.DEFAULT_CLIENT_SECRET)
    parser.add_argument("--refresh-token", default=gazelle.DEFAULT_REFRESH_TOKEN, help="initially valid")
    parser.add_argument("--api-key", default=gazelle.DEFAULT_API_KEY)
    parser.add_argument("--per-second", type=int, default=10, help="rate limit per access token / API key")
    parser.add_argument("--token-ttl", type=float, default=3600, help="access token lifetime, seconds")
    add_fault_arguments(parser)
    parser.add_argument(
        "--graphql-errors", type=int, default=0, help="the next N GraphQL requests answer INTERNAL_SERVER_ERROR"
    )

    def build(args: argparse.Namespace):
        anchor = date.fromisoformat(args.anchor) if args.anchor else None
        faults = gazelle.GazelleFaults(**faults_from_args(args).as_dict(), graphql_errors=args.graphql_errors)
        return gazelle.create_app(
            gazelle.GazelleData(args.clients, args.technicians, args.seed, anchor),
            client_id=args.client_id,
            client_secret=args.client_secret,
            refresh_token=args.refresh_token,
            api_key=args.api_key,
            per_second=args.per_second,
            token_ttl=args.token_ttl,
            faults=faults,
        )

    parser.set_defaults(build=build)


def _grist(sub: argparse._SubParsersAction) -> None:
    from sandbox import grist

    parser = sub.add_parser("grist", help="Grist REST API", description="Grist REST API sandbox (grist-core)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8484, help="0 picks a free port")
    parser.add_argument("--api-key", default=grist.DEFAULT_API_KEY)
    parser.add_argument("--doc", action="append", help=f"a document id (repeatable; default {grist.DEFAULT_DOC_ID})")
    parser.add_argument("--max-in-flight", type=int, default=grist.MAX_IN_FLIGHT, help="per document, then 429")
    parser.add_argument("--max-body-bytes", type=int, default=grist.MAX_BODY_BYTES, help="then 413")
    parser.add_argument("--upsert-returns-null", action="store_true", help="PUT /records answers null (< 1.7.13)")
    add_fault_arguments(parser)
    parser.add_argument("--lost-answers", type=int, default=0, help="the next N writes are applied, answered 502")

    def build(args: argparse.Namespace):
        return grist.create_app(
            grist.GristData(tuple(args.doc or [grist.DEFAULT_DOC_ID])),
            api_key=args.api_key,
            max_in_flight=args.max_in_flight,
            max_body_bytes=args.max_body_bytes,
            upsert_returns_ids=not args.upsert_returns_null,
            faults=grist.GristFaults(**faults_from_args(args).as_dict(), lost_answers=args.lost_answers),
        )

    parser.set_defaults(build=build)


def _infrazen(sub: argparse._SubParsersAction) -> None:
    from sandbox import infrazen

    parser = sub.add_parser(
        "infrazen", help="InfraZen's cloud providers", description="Yandex Cloud, Selectel and Beget on one server"
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8045, help="0 picks a free port")
    parser.add_argument("--users", type=int, default=300, help="InfraZen users generated (with their providers)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated data")
    parser.add_argument("--big-folder-vms", type=int, default=150, help="VMs in the big Yandex folder")
    for provider, (count, _) in ((p, infrazen.DEFAULT_LIMITS[p][0]) for p in infrazen.PROVIDERS):
        parser.add_argument(f"--{provider}-per-second", type=int, default=count, help="rate limit per account")
    parser.add_argument("--iam-ttl", type=float, default=3600, help="Yandex IAM token lifetime, seconds")
    add_fault_arguments(parser)

    def build(args: argparse.Namespace):
        limits = {p: [(getattr(args, f"{p}_per_second"), 1.0)] for p in infrazen.PROVIDERS}
        return infrazen.create_app(
            infrazen.InfraZenData(args.users, args.seed, args.big_folder_vms),
            limits=limits,
            iam_ttl=args.iam_ttl,
            faults=faults_from_args(args),
        )

    parser.set_defaults(build=build)


def _ds(sub: argparse._SubParsersAction) -> None:
    from sandbox import ds

    parser = sub.add_parser(
        "ds", help="Démarches Simplifiées GraphQL API v2", description="Démarches Simplifiées GraphQL API v2 sandbox"
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8046, help="0 picks a free port")
    parser.add_argument(
        "--demarche",
        action="append",
        metavar="NUMBER:DOSSIERS:CHAMPS",
        help="a démarche to generate (repeatable; default 101:120:40 and 102:60:12)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated data")
    parser.add_argument("--token", default=ds.DEFAULT_TOKEN, help="the API token (reads every démarche)")
    parser.add_argument("--rate-limit", type=int, default=ds.RATE_LIMIT, help="requests per token per window")
    parser.add_argument("--rate-period", type=int, default=ds.RATE_PERIOD, help="window, seconds")
    parser.add_argument(
        "--no-throttle", action="store_true", help="accept every request; count the ones over the limit"
    )
    add_fault_arguments(parser)

    def build(args: argparse.Namespace):
        try:
            specs = tuple(tuple(int(x) for x in spec.split(":")) for spec in args.demarche or ())
        except ValueError as exc:
            raise ValueError("--demarche takes NUMBER:DOSSIERS:CHAMPS, e.g. 101:10000:40") from exc
        if any(len(spec) != 3 for spec in specs):
            raise ValueError("--demarche takes NUMBER:DOSSIERS:CHAMPS, e.g. 101:10000:40")
        data = ds.DSData(specs, args.seed) if specs else ds.DSData(seed=args.seed)
        return ds.create_app(
            data,
            tokens={args.token: ds.TokenRights()},
            rate_limit=args.rate_limit,
            rate_period=args.rate_period,
            enforce_limit=not args.no_throttle,
            faults=faults_from_args(args),
        )

    parser.set_defaults(build=build)


# One entry per API; later APIs add theirs here.
_APIS = [_intra42, _portaildf, _gazelle, _infrazen, _grist, _ds]


def _parser() -> tuple[argparse.ArgumentParser, argparse._SubParsersAction]:
    parser = argparse.ArgumentParser(prog="python -m sandbox", description=__doc__)
    sub = parser.add_subparsers(dest="api", required=True, metavar="API")
    for register in _APIS:
        register(sub)
    return parser, sub


def build_app(argv: list[str]):
    """The app `python -m sandbox <argv>` would serve (for serving it in a thread: sandbox.common.serve)."""
    args = _parser()[0].parse_args(argv)
    return args.build(args)


def main(argv: list[str] | None = None) -> int:
    parser, sub = _parser()
    everything = sub.add_parser("all", help="every API with its defaults, each on its default port")
    everything.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args(argv)
    chosen = (
        [parser.parse_args([api, "--host", args.host]) for api in sub.choices if api != "all"]
        if args.api == "all"
        else [args]
    )
    with contextlib.ExitStack() as stack:
        for one in chosen:
            try:
                app = one.build(one)
            except ValueError as exc:
                parser.error(str(exc))
            url = stack.enter_context(serve(app, one.host, one.port))
            print(f"{one.api} sandbox listening on {url}", flush=True)
        print("(Ctrl-C to stop)", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())

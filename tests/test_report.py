"""Failed runs are recorded in sync_runs and notified through the `usersync_notify` connection."""

from __future__ import annotations

import json
import os
import socketserver
import threading
from email import message_from_bytes

import pytest
from conftest import CLIENT_SECRET
from dagrun import run_dag

DAG_ID = "intra42_users"


class SmtpSink(socketserver.ThreadingTCPServer):
    """The least SMTP server smtplib talks to: accepts every message and keeps it (raw bytes)."""

    daemon_threads = allow_reuse_address = True

    def __init__(self):
        self.messages: list[bytes] = []
        super().__init__(("127.0.0.1", 0), _SmtpSession)


class _SmtpSession(socketserver.StreamRequestHandler):
    def handle(self):
        self.reply(b"220 sink")
        while line := self.rfile.readline():
            verb = line[:4].upper()
            if verb == b"DATA":
                self.reply(b"354 go on")
                body = b""
                while (part := self.rfile.readline()) not in (b".\r\n", b""):
                    body += part
                self.server.messages.append(body)
                self.reply(b"250 kept")
            elif verb == b"QUIT":
                self.reply(b"221 bye")
                return
            else:  # EHLO/HELO, MAIL, RCPT, RSET, NOOP
                self.reply(b"250 ok")

    def reply(self, line: bytes):
        self.wfile.write(line + b"\r\n")


@pytest.fixture
def smtp_sink():
    sink = SmtpSink()
    thread = threading.Thread(target=sink.serve_forever, daemon=True)
    thread.start()
    yield sink
    sink.shutdown()
    sink.server_close()


@pytest.fixture
def notify_conn(monkeypatch):
    def configure(conn: dict):
        monkeypatch.setenv("AIRFLOW_CONN_USERSYNC_NOTIFY", json.dumps(conn))

    return configure


@pytest.fixture
def intra42(intra42_sandbox, fresh_schema):
    intra42_sandbox.control("reset")
    fresh_schema(DAG_ID, "intra42")
    yield intra42_sandbox
    intra42_sandbox.control("reset")


def test_a_failed_run_is_recorded_with_its_task_and_error_and_mailed(intra42, sql, smtp_sink, notify_conn):
    notify_conn(
        {
            "conn_type": "smtp",
            "host": "127.0.0.1",
            "port": smtp_sink.server_address[1],
            "extra": {
                "to": "data-team@example.org",
                "from_email": "airflow@example.org",
                "disable_ssl": True,
                "disable_tls": True,
                "retry_limit": 0,
                "timeout": 5,
            },
        }
    )
    intra42.control("faults", {"error_rate": 1.0})  # every /v2 request answers 500, the token endpoint works

    run, states = run_dag(DAG_ID)

    assert states["fetch_users"] == "failed" and states["report_run"] == "upstream_failed"
    rows = sql("SELECT run_id, status, mode, report, watermark, errors FROM intra42.sync_runs")
    assert len(rows) == 1
    run_id, status, mode, report, watermark, errors = rows[0]
    assert (run_id, status, mode, report, watermark) == (run.run_id, "failed", None, None, None)
    assert [e["task"] for e in errors] == ["fetch_users"]
    assert "500" in errors[0]["error"] and errors[0]["try"] == 4  # the last of 1 + 3 retries
    assert CLIENT_SECRET not in json.dumps(errors)

    assert len(smtp_sink.messages) == 1
    mail = message_from_bytes(smtp_sink.messages[0])
    assert mail["To"] == "data-team@example.org"
    assert "intra42_users failed in fetch_users" in mail["Subject"]
    body = "".join(part.get_payload(decode=True).decode() for part in mail.walk() if not part.is_multipart())
    assert run.run_id in body and "500" in body

    # The watermark still comes from the last successful run: a failed run has none.
    intra42.control("reset")
    run_dag(DAG_ID)
    assert sql("SELECT status, watermark IS NOT NULL FROM intra42.sync_runs ORDER BY id") == [
        ("failed", False),
        ("success", True),
    ]


class RecordingNotifier:
    """A notifier configured by class path: keeps what it was built with and the failure it was told about."""

    sent: list[tuple[dict, str]] = []

    def __init__(self, **kwargs):
        self.kwargs = kwargs

    def __call__(self, context):
        RecordingNotifier.sent.append((self.kwargs, context["usersync_failure"]))


def test_a_notifier_class_named_by_the_connection_is_called(notify_conn, monkeypatch):
    from types import SimpleNamespace

    from usersync.report import notifier, notify_failure

    monkeypatch.delenv("AIRFLOW_CONN_USERSYNC_NOTIFY", raising=False)
    assert notifier(subject="s", html_content="h") is None  # no connection: no notification

    notify_conn(
        {
            "conn_type": "generic",
            "extra": {"notifier": f"{__name__}.RecordingNotifier", "notifier_args": {"channel": "#data"}},
        }
    )
    RecordingNotifier.sent.clear()
    context = {"dag_run": SimpleNamespace(dag_id="some_dag", run_id="manual__1")}
    notify_failure(context, {"task": "fetch", "error": "HTTPError: 503 Service Unavailable"})
    assert RecordingNotifier.sent == [
        ({"channel": "#data"}, "some_dag run manual__1 failed in task fetch: HTTPError: 503 Service Unavailable")
    ]


def test_error_text_hides_secrets_and_emails():
    from airflow.sdk.log import mask_secret
    from usersync.report import error_text

    mask_secret("hunter2-very-secret")
    text = error_text(ValueError("login hunter2-very-secret refused for Marie.Curie+x@Exemple.gouv.fr"))
    assert text == "ValueError: login *** refused for <email>"
    assert error_text(RuntimeError("x" * 5000)).endswith(" ...") and len(error_text(RuntimeError("x" * 5000))) < 2100
    assert os.environ.get("AIRFLOW_CONN_USERSYNC_NOTIFY") is None

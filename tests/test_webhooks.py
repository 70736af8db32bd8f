"""Webhook notifications: bodies, retries and their limits, never blocking, against a real local HTTP receiver."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import time
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import pytest

from pgwarden.config_approvals import WebhookConfig
from pgwarden.services.webhooks import WebhookNotifier, safe_url, slack_text
from pgwarden.store.approvals import ApprovalDecision, ApprovalRequest, fingerprint

STATEMENT = "DELETE FROM orders WHERE id = $1"
HANG = 0  # a scripted status: wait until the test releases the receiver, then 200


class Receiver:
    """An HTTP server in a thread that records every POST and answers as scripted per path."""

    def __init__(self) -> None:
        self.posts: list[dict] = []
        self.script: dict[str, list[int]] = {}
        self.release = threading.Event()
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                path = urlsplit(self.path).path
                with receiver.lock:
                    receiver.posts.append({"path": path, "query": urlsplit(self.path).query,
                                           "headers": dict(self.headers), "body": json.loads(body)})
                    steps = receiver.script.get(path) or []
                    status = steps.pop(0) if steps else 200
                if status == HANG:
                    receiver.release.wait(30)
                    status = 200
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def at(self, path: str) -> list[dict]:
        with self.lock:
            return [p for p in self.posts if p["path"] == path]

    def __enter__(self) -> "Receiver":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    with Receiver() as r:
        yield r


def hook(url: str, **kw) -> WebhookConfig:
    return WebhookConfig(url=url, **kw)


def links(request_id: str) -> dict[str, str]:
    base = f"https://pgw.example.com/api/v1/approvals/{request_id}"
    return {"show": base, "approve": base + "/approve", "deny": base + "/deny"}


def make_request(**kw) -> ApprovalRequest:
    now = time.time()
    fields = dict(
        id="3f2a9c0b1d2e", created_at=now, expires_at=now + 600, status="pending", mode="hold",
        requester="alice@example.com", requester_roles=("developer",), role="developer", target="shop",
        session="s-1", gateway="gw-1", statement=STATEMENT, params=({"format": 0, "value": "42"},),
        fingerprint=fingerprint("shop", STATEMENT, [(0, b"42")]), rule="dev-writes", reason="writes need review",
        policy="default", required=1, reviewer_roles=("reviewer",),
    )
    fields.update(kw)
    return ApprovalRequest(**fields)


def decided(request: ApprovalRequest, action: str, reviewer: str, comment: str = "") -> ApprovalRequest:
    now = time.time()
    decision = ApprovalDecision(reviewer, ("reviewer",), action, comment, now, "api")
    status = "approved" if action == "approve" else "denied"
    return replace(request, status=status, decisions=request.decisions + (decision,), decided_at=now)


async def until(condition, what: str, deadline: float = 15.0) -> None:
    """Poll until ``condition()``; fail (never time anything) if it does not happen within ``deadline``."""
    end = time.monotonic() + deadline
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def started(configs, **kw) -> WebhookNotifier:
    notifier = WebhookNotifier(configs, links, backoff=kw.pop("backoff", 0.01), **kw)
    notifier.start()
    return notifier


# ---------------------------------------------------------------- bodies


def test_slack_and_json_bodies(receiver):
    async def main() -> None:
        notifier = started([
            hook(receiver.url("/slack?token=s3cret"), format="slack", headers={"X-Team": "db"}),
            hook(receiver.url("/json"), format="json", headers={"Authorization": "Bearer hook-token"}),
            hook(receiver.url("/decisions"), format="json", events=["approved", "denied", "expired"]),
        ])
        request = make_request()
        assert notifier.notify("requested", request) is None
        await until(lambda: receiver.at("/slack") and receiver.at("/json"), "the requested notifications")
        slack = receiver.at("/slack")[0]
        assert slack["query"] == "token=s3cret" and slack["headers"]["X-Team"] == "db"
        assert slack["headers"]["Content-Type"] == "application/json"
        assert slack["body"] == {"text": (
            "pgwarden: alice@example.com asks to run on shop as developer (rule dev-writes): "
            f"{STATEMENT} — request 3f2a9c0b1d2e\n"
            "Review: `pgwarden approvals show 3f2a9c0b1d2e`, then `pgwarden approvals approve 3f2a9c0b1d2e` or POST "
            "<https://pgw.example.com/api/v1/approvals/3f2a9c0b1d2e/approve|approve> / "
            "<https://pgw.example.com/api/v1/approvals/3f2a9c0b1d2e/deny|deny> with a reviewer token")}
        as_json = receiver.at("/json")[0]
        assert as_json["headers"]["Authorization"] == "Bearer hook-token"
        assert as_json["body"] == {"event": "requested", "request": json.loads(json.dumps(request.as_dict())),
                                   "links": links(request.id)}

        approved = decided(decided(replace(request, required=2), "approve", "bob"), "approve", "carol")
        notifier.notify("approved", approved)
        denied = decided(request, "deny", "dave", "not on <Friday> & never")
        notifier.notify("denied", denied)
        notifier.notify("expired", replace(request, status="expired", closed_reason="no decision in time"))
        await until(lambda: notifier.delivered == 9, "the decision notifications")
        assert (len(receiver.at("/slack")), len(receiver.at("/json")), len(receiver.at("/decisions"))) == (3, 3, 3)
        texts = sorted(p["body"]["text"] for p in receiver.at("/slack"))
        assert any("request 3f2a9c0b1d2e of alice@example.com on shop as developer (rule dev-writes) "
                   "was approved by bob, carol" in t for t in texts)
        assert any("was denied by dave (“not on &lt;Friday&gt; &amp; never”)" in t for t in texts)
        assert not any("|approve>" in t for t in texts if "asks" not in t)
        assert sorted(p["body"]["event"] for p in receiver.at("/decisions")) == ["approved", "denied", "expired"]
        assert not [p for p in receiver.at("/slack") if "expired" in p["body"]["text"]]  # not in its events
        assert receiver.at("/decisions")[0]["body"]["links"] == links(request.id)
        await notifier.stop()
        assert notifier.delivered == 9 and notifier.failed == 0

    asyncio.run(main())


def test_slack_text_truncates_and_escapes():
    statement = "SELECT 1 WHERE a < b AND c > d; " + "x" * 1000
    text = slack_text("requested", make_request(statement=statement, required=3, role=None), links("3f2a9c0b1d2e"))
    body = text.split("): ", 1)[1].split(" — request")[0]
    assert body.startswith("SELECT 1 WHERE a &lt; b AND c &gt; d; xxx") and body.endswith("x…")
    assert len(body.replace("&lt;", "<").replace("&gt;", ">")) == 501
    assert "on shop (rule dev-writes)" in text and "needs 3 approvals" in text


def test_safe_url_hides_secrets():
    slack = "https://u:pw@hooks.slack.com/services/T0/B0/SECRET?token=x#f"
    assert safe_url(slack) == "https://hooks.slack.com/services/…"
    assert safe_url("http://127.0.0.1:8080/hook?key=abc") == "http://127.0.0.1:8080/hook"
    assert safe_url("https://example.com") == "https://example.com/"


# ---------------------------------------------------------------- retries


def test_5xx_and_429_are_retried_until_delivered(receiver):
    receiver.script["/flaky"] = [500, 502]
    receiver.script["/throttled"] = [429]

    async def main() -> None:
        notifier = started([hook(receiver.url("/flaky")), hook(receiver.url("/throttled"), format="slack")])
        notifier.notify("requested", make_request())
        await until(lambda: notifier.delivered == 2, "both deliveries")
        flaky = receiver.at("/flaky")
        assert len(flaky) == 3 and flaky[0]["body"] == flaky[1]["body"] == flaky[2]["body"]
        assert len(receiver.at("/throttled")) == 2
        await notifier.stop()
        assert notifier.failed == 0

    asyncio.run(main())


def test_4xx_is_not_retried_and_gives_up_after_max_attempts(receiver, caplog):
    receiver.script["/bad"] = [400, 400, 400]
    receiver.script["/down"] = [503] * 10
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}/refused"

    async def main() -> None:
        notifier = started([hook(receiver.url("/bad?secret=abc")), hook(receiver.url("/down"), max_attempts=3),
                            hook(closed, max_attempts=2)])
        with caplog.at_level(logging.INFO, logger="pgwarden.webhooks"):
            notifier.notify("requested", make_request())
            await until(lambda: notifier.failed == 3, "three failures")
        assert len(receiver.at("/bad")) == 1
        assert len(receiver.at("/down")) == 3
        assert notifier.delivered == 0
        await notifier.stop()

    asyncio.run(main())
    messages = [r.getMessage() for r in caplog.records]
    assert any("/bad" in m and "HTTP 400" in m and "not retried" in m for m in messages)
    assert any("/down" in m and "after 3 attempt(s)" in m and "HTTP 503" in m for m in messages)
    assert any("/refused" in m and "after 2 attempt(s)" in m for m in messages)
    assert any("/refused" in m and "attempt 1 of 2" in m for m in messages)
    assert not any("secret=abc" in m for m in messages)


# ---------------------------------------------------------------- never blocking


def test_a_hanging_receiver_blocks_neither_notify_nor_other_webhooks(receiver, caplog):
    receiver.script["/hang"] = [HANG]

    async def main() -> None:
        notifier = started([hook(receiver.url("/hang"), timeout=60), hook(receiver.url("/ok"))])
        notifier.notify("requested", make_request())  # returns at once although /hang never answers
        await until(lambda: receiver.at("/hang") and receiver.at("/ok"), "both posts")
        assert notifier.delivered == 1  # /ok went through while /hang still hangs
        notifier.notify("approved", decided(make_request(), "approve", "bob"))
        await until(lambda: len(receiver.at("/ok")) == 2, "the second post to /ok")
        with caplog.at_level(logging.WARNING, logger="pgwarden.webhooks"):
            await notifier.stop(timeout=0.05)  # cancels the hanging delivery
        assert not notifier._tasks
        notifier.notify("denied", make_request())  # after stop: ignored, no error

    asyncio.run(main())
    assert any("not delivered at shutdown" in r.getMessage() for r in caplog.records)


def test_full_queue_drops_with_a_warning(receiver, caplog):
    async def main() -> None:
        notifier = WebhookNotifier([hook(receiver.url("/q?token=zzz"))], links, backoff=0.01, queue_size=2)
        with caplog.at_level(logging.WARNING, logger="pgwarden.webhooks"):
            for n in range(3):  # not started yet: nothing leaves the queue
                notifier.notify("requested", make_request(id=f"00000000000{n}"))
        assert notifier.dropped == 1
        notifier.start()
        await until(lambda: notifier.delivered == 2, "the two queued notifications")
        assert sorted(p["body"]["request"]["id"] for p in receiver.at("/q")) == ["000000000000", "000000000001"]
        await notifier.stop()

    asyncio.run(main())
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("queue full" in m and "000000000002" in m and "/q" in m for m in warnings)
    assert not any("zzz" in m for m in warnings)


def test_notify_never_raises(receiver, caplog):
    def broken_links(request_id: str) -> dict[str, str]:
        raise RuntimeError("boom")

    async def main() -> None:
        notifier = WebhookNotifier([hook(receiver.url("/x"))], broken_links)
        notifier.start()
        with caplog.at_level(logging.ERROR, logger="pgwarden.webhooks"):
            assert notifier.notify("requested", make_request()) is None
            assert notifier.notify("requested", None) is None  # type: ignore[arg-type]
        await notifier.stop()
        idle = WebhookNotifier([], links)  # no webhooks: start and stop are no-ops
        idle.start()
        idle.notify("requested", make_request())
        await idle.stop()

    asyncio.run(main())
    assert sum("not queued" in r.getMessage() for r in caplog.records) == 2

"""``pgwarden alerts test``: a test alert through each configured sink, with the outcome per sink."""

from __future__ import annotations

import json
import socket

import yaml
from typer.testing import CliRunner

from pgwarden.cli.main import app
from pgwarden.testing.receivers import WebhookReceiver, closed_port_url


def test_each_sink_reports_its_own_outcome(tmp_path):
    receiver = WebhookReceiver()
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    udp.settimeout(5)
    config = tmp_path / "pgwarden.yaml"
    config.write_text(yaml.safe_dump({
        "targets": {"app": {"host": "127.0.0.1", "database": "d", "user": "u", "password": "p"}},
        "alerts": {"sinks": [
            {"name": "slack", "type": "webhook", "url": f"http://127.0.0.1:{receiver.port}/hook/SECRET",
             "format": "slack"},
            {"name": "gone", "type": "webhook", "url": closed_port_url(), "max_attempts": 1},
            {"name": "siem", "type": "syslog", "address": "127.0.0.1", "port": udp.getsockname()[1],
             "protocol": "udp"},
            {"name": "log", "type": "log"},
            {"name": "quiet", "type": "webhook", "url": f"http://127.0.0.1:{receiver.port}/quiet",
             "min_severity": "critical"},  # filters are bypassed: a test must reach every sink
        ]},
    }))
    try:
        result = CliRunner().invoke(app, ["alerts", "test", "-c", str(config), "--json", "--timeout", "10"])
        assert result.exit_code == 1, result.output  # "gone" failed
        rows = {r["sink"]: r for r in json.loads(result.stdout)}
        assert {n: r["outcome"] for n, r in rows.items()} == {
            "slack": "delivered", "gone": "failed", "siem": "delivered", "log": "not tested", "quiet": "delivered"}
        assert "SECRET" not in result.stdout  # webhook URLs are shown without their path
        assert any("Test alert from pgwarden" in b.get("text", "") for _, b, _ in receiver.posts)
        assert b"Test alert from pgwarden" in udp.recv(65536)

        only = CliRunner().invoke(app, ["alerts", "test", "-c", str(config), "--sink", "slack"])
        assert only.exit_code == 0, only.output
        assert "delivered" in only.stdout
        unknown = CliRunner().invoke(app, ["alerts", "test", "-c", str(config), "--sink", "nope"])
        assert unknown.exit_code == 2 and "no alert sink named 'nope'" in unknown.output
    finally:
        receiver.close()
        udp.close()

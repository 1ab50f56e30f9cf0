import io
import json

from config.logs import get_logger, setup_logging
from config.schema import Secret


def test_json_lines_when_not_a_tty_with_bound_keys_and_redacted_secrets():
    buf = io.StringIO()
    setup_logging("info", "auto", stream=buf)
    log = get_logger("bgpd.peer", peer="198.18.1.1")
    log.info("peer_state", state="established", password=Secret("hunter2"))
    log.debug("not_shown")
    lines = buf.getvalue().splitlines()
    assert len(lines) == 1
    event = json.loads(lines[0])
    assert event["event"] == "peer_state"
    assert event["component"] == "bgpd.peer" and event["peer"] == "198.18.1.1"
    assert event["password"] == "***" and "hunter2" not in lines[0]
    assert event["level"] == "info" and "timestamp" in event


def test_console_rendering_when_asked():
    buf = io.StringIO()
    setup_logging("debug", "console", stream=buf)
    get_logger("ipam").debug("block_claimed", block="198.19.0.0/26")
    out = buf.getvalue()
    assert "block_claimed" in out and "198.19.0.0/26" in out
    assert not out.lstrip().startswith("{")

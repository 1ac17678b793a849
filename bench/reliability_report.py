"""Runs the load, fault and hostile-input tests and writes docs/reliability.md from their results.

    .venv/bin/python -m bench.reliability_report [--out docs/reliability.md]

The evidence is the tests themselves (real servers on loopback, bounded in count and time); this
command only runs them together and says what held, what was survived and what was tried.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# Section, pytest selection, what the section proves.
SECTIONS = [
    ("Load held", "tests/test_load.py", "64 concurrent streaming clients against 8 slots and 24 waiting places: every accepted stream completes, the rest get the intended 429/503; vanished clients give their slots back."),
    ("Load held", "tests/test_engine.py", "Batched answers equal one-at-a-time answers; the queue refuses when full and times out; cancelled requests free their slot."),
    ("Load held", "tests/test_hardening.py -k search", "A 10-word search through a session of 8,000 words answers in under 5 s while another read answers in under 2 s (searches were quadratic and held the store's lock: 17-105 s, everyone waiting); too many words are a 400, only whitespace matches nothing."),
    ("Load held", "tests/test_hardening.py -k large_prompts", "Six 1 MB prompts tokenized at once leave /livez answering in under 2 s (0.3 s measured; 4.9 s before)."),
    ("Faults survived", "tests/test_sessions.py -k survives", "The server killed with SIGKILL right after answering, and stopped with SIGTERM: sessions intact, SQLite integrity_check ok."),
    ("Faults survived", "tests/test_hardening.py -k kill_during", "SIGKILL while three session chats stream: after a restart every session holds its answered turns whole and nothing of the cut ones; integrity_check ok."),
    ("Faults survived", "tests/test_hardening.py -k full_disk or read_only or private", "The data folder's disk full (a real 2 MiB tmpfs): 507 storage_full, answers sent flagged as not saved, streams end with an error event and [DONE], /readyz says full until space is freed; a read-only folder stops startup naming it; files 0600 in a 0700 folder."),
    ("Faults survived", "tests/test_hardening.py -k client_leaves", "A non-streamed request whose client leaves stops generating within 2 s (it ran on for minutes before)."),
    ("Faults survived", "tests/test_registry.py -k unload or restart", "A model unloaded while a stream runs: the stream finishes, new requests get 404; registered models survive a restart."),
    ("Faults survived", "tests/test_observability.py -k drain or sigterm", "SIGTERM drains: readiness turns 503, running streams finish with [DONE], exit code 0."),
    ("Faults survived", "tests/test_api.py -k disconnect", "A client that disconnects mid-stream frees the engine for the next request."),
    ("Faults survived", "tests/test_websocket.py -k closing or cancel", "Sockets closed mid-stream and cancelled requests free every slot."),
    ("Inputs tried", "tests/test_hostile_input.py", "Deeply nested JSON, invalid UTF-8, huge and non-finite numbers, duplicate keys, truncated bodies, non-JSON content types, a 3 MiB body, unicode edge cases: 4xx in the OpenAI envelope, never 5xx."),
    ("Inputs tried", "tests/test_schemathesis.py", "Schemathesis-generated requests for every operation of /openapi.json: no 5xx, every error in the envelope."),
    ("Inputs tried", "tests/test_security.py", "Missing and wrong keys, scopes, rate limits, body, message, prompt and max_tokens guards, control tokens in user text."),
    ("Inputs tried", "tests/test_hardening.py -k stream_limit or refused_while or short_key or registration or special_file", "WebSocket generations count against a key's stream limit, one socket or several; refused requests spend no tokens; short keys refused beyond loopback; model errors naming paths shown only to admin keys; devices and /proc refused as model sources."),
    ("Inputs tried", "tests/test_hardening.py -k protocol_violation or byte_at_a_time", "Ten raw WebSocket protocol violations each get the RFC 6455 close frame (1002, 1007, 1009 at once for a 2^63-1 byte header); a body sent a byte at a time is cut off with 408 within 10 s."),
    ("Inputs tried", "tests/test_hardening.py -k host or state_changing or probes or logit_bias or limit_of", "Without keys, a foreign Host (DNS rebinding), a foreign page Origin and text/plain or form POSTs are refused before anything changes; unicode digits in limit and logit_bias are 400s, not 500s."),
]


def run(selection: str, report: Path) -> tuple[int, int, int, float]:
    """(passed, failed, skipped, seconds) of one pytest selection."""
    path, _, keyword = selection.partition(" -k ")
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:warnings", path, f"--junitxml={report}"]
    if keyword:
        command += ["-k", keyword]
    started = time.monotonic()
    subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=1800)
    seconds = time.monotonic() - started
    suite = ElementTree.parse(report).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    tests, failures, errors, skipped = (int(suite.get(name, 0)) for name in ("tests", "failures", "errors", "skipped"))
    return tests - failures - errors - skipped, failures + errors, skipped, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "reliability.md")
    arguments = parser.parse_args()
    lines = [
        "# Reliability",
        "",
        "Written by `.venv/bin/python -m bench.reliability_report`; do not edit by hand.",
        "",
        f"Run {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC} on {platform.machine()}, {os.cpu_count()} cores. "
        "Every check is a test against real servers on 127.0.0.1, bounded in count and time.",
        "",
    ]
    current = None
    all_passed = True
    with tempfile.TemporaryDirectory() as scratch:
        for index, (section, selection, proves) in enumerate(SECTIONS):
            if section != current:
                lines += [f"## {section}", "", "| tests | passed | failed | seconds | what it proves |", "| --- | ---: | ---: | ---: | --- |"]
                current = section
            passed, failed, _, seconds = run(selection, Path(scratch) / f"{index}.xml")
            all_passed &= failed == 0 and passed > 0
            lines.append(f"| `{selection}` | {passed} | {failed} | {seconds:.0f} | {proves} |")
            print(lines[-1], flush=True)
            if index + 1 == len(SECTIONS) or SECTIONS[index + 1][0] != section:
                lines.append("")
    lines += ["Verdict: " + ("every check passed, nothing lost." if all_passed else "SOME CHECKS FAILED: see the rows above."), ""]
    arguments.out.write_text("\n".join(lines), encoding="utf-8")
    print(f"wrote {arguments.out}")


if __name__ == "__main__":
    main()

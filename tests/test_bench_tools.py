"""The benchmark's own tools: telling other work's load from its own, and refusing loaded figures."""

from __future__ import annotations

import subprocess
import sys
import time

from bench.machine_load import machine_busy_seconds, measure_quietly, own_seconds
from bench.report import LLAMA_SERVER, OUR_SERVICE, targets

SPIN = "import time\nwhile time.process_time() < {seconds}: pass\n"  # seconds of CPU, however loaded the machine


def test_work_the_benchmark_starts_counts_as_its_own():
    before = own_seconds()

    subprocess.run([sys.executable, "-c", SPIN.format(seconds=1.5)], check=True)

    assert own_seconds() - before > 1.2


def test_a_process_outside_the_benchmark_is_other_work():
    # setsid in a shell that exits at once: the spinner is re-parented away from this process.
    subprocess.run(["sh", "-c", f"setsid {sys.executable} -c '{SPIN.format(seconds=3)}' &"], check=True)
    time.sleep(0.2)
    own, busy = own_seconds(), machine_busy_seconds()

    measured = measure_quietly(lambda: time.sleep(1.5), threads=2, attempts=1, wait_seconds=0)

    assert own_seconds() - own < 0.3 and machine_busy_seconds() - busy > 1.0
    assert measured.foreign_cores > 0.6, measured


def _model(our_16: dict, server_16: dict) -> dict:
    empty = {"runs": [], "error": "not run"}
    return {
        "single": {"this engine (service default)": empty},
        "http": {
            OUR_SERVICE: {"levels": [our_16], "rss_after_load_mib": 300.0},
            LLAMA_SERVER: {"levels": [server_16], "rss_after_load_mib": 250.0},
        },
    }


def test_a_level_measured_under_other_work_gets_no_verdict():
    level = {"streams": 16, "completed": 16, "aggregate_tok_s": 500.0}
    loaded = _model({**level, "foreign_cores": 0.9}, {**level, "aggregate_tok_s": 300.0, "foreign_cores": 0.0})
    quiet = _model({**level, "foreign_cores": 0.1}, {**level, "aggregate_tok_s": 300.0, "foreign_cores": 0.0})

    verdicts = {name: {target.name: target.verdict() for target in targets(model, 0.25)} for name, model in (("loaded", loaded), ("quiet", quiet))}

    key = "HTTP aggregate at 16 streams vs llama-server (equal slots)"
    assert verdicts["loaded"][key] == "not measured" and verdicts["quiet"][key] == "pass"

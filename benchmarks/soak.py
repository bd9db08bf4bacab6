"""A bounded loopback soak: the SDK against the local engine, with injected faults.

For ``--seconds`` (default 60), ``--concurrency`` tasks (default 200) invoke a real Python
cloud function, alternating sync and async calls, while one fault is armed every
``--fault-every`` calls (default 20, i.e. 5 %): counted, not random. Each logical call carries
a unique id; the function appends the ids it runs to a file, so afterwards we can count

* duplicate executions: an id that ran more than once (must be 0), and
* lost async jobs: an acknowledged ``sync=False`` call whose id never ran (must be 0),

besides calls, errors by code, and this process's RSS and open descriptors at the start and
the end. It stops by itself, and exits 1 when a duplicate or a lost job was found.

    python benchmarks/soak.py                # 60 s
    python benchmarks/soak.py --seconds 10 --json
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import anyio

import minapp_async
from minapp_async.engine import Engine
from minapp_async.testing import running_engine

#: Appends its call id to the file the caller names; O_APPEND keeps concurrent lines whole.
RECORD_PY = """\
import os

def main(event):
    data = event['data']
    fd = os.open(data['log'], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (data['id'] + '\\n').encode())
    finally:
        os.close(fd)
    return data['id']
"""

#: The faults armed in turn, one every --fault-every calls: each kind, before and after the
#: function runs, and the "not now" statuses the SDK retries.
FAULTS: list[dict[str, Any]] = [
    {"kind": "status", "status": 503, "retry_after": 0.05},
    {"kind": "drop", "when": "before"},
    {"kind": "drop", "when": "after"},
    {"kind": "status", "status": 429, "retry_after": 0.05},
    {"kind": "status", "status": 500, "when": "after"},
    {"kind": "reset_mid_body", "when": "after"},
    {"kind": "malformed", "body": b"<html>bad gateway</html>", "content_type": "text/html"},
    {"kind": "slow", "delay": 0.2},
    {"kind": "reset_mid_body", "when": "before"},
    {"kind": "trickle", "delay": 0.005},
]


def rss_kib() -> int:
    """This process's resident set size in KiB (Linux /proc)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return -1


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def soak(seconds: float, concurrency: int, fault_every: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="minapp-soak-") as tmp:
        log = Path(tmp) / "ran.log"
        log.touch()
        async with running_engine(
            {"record.py": RECORD_PY}, concurrency=16, schedule_wait=10.0
        ) as engine:
            engine.create_user(username="soak", password="soak-pw")
            creds = minapp_async.UserCredentials(username="soak", password="soak-pw")
            async with minapp_async.Session(
                engine.client_id, base_url=engine.url, credentials=creds
            ) as session:
                await session.invoke("record", {"id": "warm", "log": str(log)})
                start = {"rss_kib": rss_kib(), "open_fds": open_fds()}
                outcome = await _run(engine, session, log, seconds, concurrency, fault_every)
                end_open = {"rss_kib": rss_kib(), "open_fds": open_fds()}
            with anyio.fail_after(330):  # the platform's async limit, plus a margin
                await engine.drain(timeout=320)
            ran = Counter(log.read_text().split())
        after_close = {"rss_kib": rss_kib(), "open_fds": open_fds()}
    ran.pop("warm", None)
    acked = outcome.pop("acknowledged")
    return {
        **outcome,
        "duplicate_executions": sum(1 for n in ran.values() if n > 1),
        "lost_async_jobs": len([i for i in acked if i not in ran]),
        "acknowledged_async": len(acked),
        "executions": sum(ran.values()),
        "start": start,
        "end": end_open,
        "after_close": after_close,
    }


async def _run(
    engine: Engine,
    session: minapp_async.Session,
    log: Path,
    seconds: float,
    concurrency: int,
    fault_every: int,
) -> dict[str, Any]:
    numbers = itertools.count()
    faults = itertools.cycle(FAULTS)
    errors: Counter[str] = Counter()
    acknowledged: list[str] = []
    counts = {"calls": 0, "tries": 0, "ok": 0, "faults_armed": 0}
    stop_at = anyio.current_time() + seconds

    def count_try(info: minapp_async.CallInfo) -> None:
        counts["tries"] += 1

    counted = session.with_options(on_request=count_try)

    async def worker() -> None:
        while anyio.current_time() < stop_at:
            n = next(numbers)
            if n % fault_every == fault_every - 1:
                fault = dict(next(faults))
                engine.faults.add(fault.pop("kind"), **fault)
                counts["faults_armed"] += 1
            call_id, sync = f"c{n}", n % 2 == 0
            counts["calls"] += 1
            try:
                await counted.invoke("record", {"id": call_id, "log": str(log)}, sync)
            except minapp_async.HError as err:
                errors[f"{err.code} {type(err).__name__}"] += 1
            else:
                counts["ok"] += 1
                if not sync:
                    acknowledged.append(call_id)

    rss_samples: list[int] = []

    async def sample_rss() -> None:
        # Six samples over the run: a plateau is a bounded cache, a steady climb a leak.
        while anyio.current_time() < stop_at:
            await anyio.sleep(seconds / 6)
            rss_samples.append(rss_kib())

    started = time.perf_counter()
    # Calls started before the end finish within their own deadlines (10 s at most).
    with anyio.fail_after(seconds + 60):
        async with anyio.create_task_group() as tg:
            tg.start_soon(sample_rss)
            for _ in range(concurrency):
                tg.start_soon(worker)
    elapsed = time.perf_counter() - started
    engine.faults.clear()
    # Accepted async jobs still queued: the engine runs 16 at a time and queues the rest.
    backlog = sum(1 for job in engine.jobs() if job.status == "waiting")
    return {
        **counts,
        "seconds": round(elapsed, 1),
        "calls_per_second": round(counts["calls"] / elapsed, 1),
        "errors_by_code": dict(sorted(errors.items())),
        "async_backlog_at_end": backlog,
        "rss_samples_mib": [round(kib / 1024, 1) for kib in rss_samples],
        "acknowledged": acknowledged,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="how long to call (60)")
    parser.add_argument("--concurrency", type=int, default=200, help="concurrent callers (200)")
    parser.add_argument(
        "--fault-every", type=int, default=20, help="arm one fault every N calls (20: 5 %%)"
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.concurrency < 1 or args.fault_every < 1:
        parser.error("--seconds must be > 0, --concurrency and --fault-every >= 1")

    report = anyio.run(soak, args.seconds, args.concurrency, args.fault_every)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(
            f"{report['calls']} calls in {report['seconds']} s "
            f"({report['calls_per_second']}/s), concurrency {args.concurrency}, "
            f"{report['faults_armed']} faults armed (1 every {args.fault_every} calls)"
        )
        print(f"ok {report['ok']}, errors {report['errors_by_code']}")
        print(f"tries {report['tries']} (retries {report['tries'] - report['calls']})")
        print(
            f"executions {report['executions']}, duplicate executions "
            f"{report['duplicate_executions']}, lost async jobs {report['lost_async_jobs']} "
            f"of {report['acknowledged_async']} acknowledged"
        )
        print(
            f"RSS during the run (MiB): {report['rss_samples_mib']}; async jobs still queued "
            f"in the engine when the calls stopped: {report['async_backlog_at_end']}"
        )
        # start: engine up, Session warm; end: pool still open; after_close: both closed.
        for moment in ("start", "end", "after_close"):
            m = report[moment]
            print(f"{moment:>11}: RSS {m['rss_kib'] / 1024:.1f} MiB, open fds {m['open_fds']}")
    return 1 if report["duplicate_executions"] or report["lost_async_jobs"] else 0


if __name__ == "__main__":
    sys.exit(main())

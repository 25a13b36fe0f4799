"""A patient's export and a retention run on a large record.

In one process, against an embedded SecantusDB (its own process): a conversation of N
messages (two lines of text each) is written, then

* an export is built twice: once timed, once under ``tracemalloc`` for the peak of
  Python allocations (tracemalloc slows it, so the two are apart);
* a second conversation of N messages, ``--per-day`` a day (100) from 400 days ago and earlier, is
  deleted by one retention run (default batches and pauses) while a writer inserts a
  message every 10 ms and measures each insert's latency.

    .venv/bin/python -m bench.exports --messages 10000

Prints a table and records the run in bench/results/exports.json, one entry per N.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import tracemalloc
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import percentile, record_run, stamp  # noqa: E402

BODY = "Follow-up about the results of last week, and the next steps. " * 3


class _Links:
    def sign_path(self, path: str, user_id: str) -> tuple[str, datetime]:
        return path, datetime.now(UTC)

    def verify_signed(self, path: str, query: dict[str, str]) -> str:
        return ""

    def absolute(self, path: str) -> str:
        return path


async def fill(
    db: Any, conversation_id: str, count: int, start: datetime, per_day: int = 86_400
) -> None:
    """``count`` messages from ``start``, ``per_day`` a day."""
    from bson import ObjectId

    from storage import names

    await db[names.CONVERSATIONS].insert_one(
        {"_id": conversation_id, "member_ids": ["dr", "pat"], "created_at": datetime.now(UTC)}
    )
    for first in range(1, count + 1, 1000):
        await db[names.MESSAGES].insert_many(
            [
                {
                    "_id": ObjectId(),
                    "conversation_id": conversation_id,
                    "seq": seq,
                    "sender_id": "dr" if seq % 2 else "pat",
                    "client_id": f"c{seq}",
                    "body": f"{seq}: {BODY}",
                    "created_at": start + timedelta(days=seq / per_day),
                }
                for seq in range(first, min(first + 1000, count + 1))
            ]
        )


async def run(url: str, count: int, batch: int, per_day: int) -> dict[str, Any]:
    from pymongo import AsyncMongoClient

    from hub.core.settings import RecordSettings
    from hub.record.exports import Exports
    from hub.record.retention import Retention
    from storage import mongo, names
    from storage.attachments import AttachmentStore
    from storage.audit import AuditLog
    from storage.directory import Directory
    from storage.exports import ExportStore
    from storage.retention import RetentionStore

    client: AsyncMongoClient[Any] = AsyncMongoClient(url, tz_aware=True)
    db = client["bench_exports"]
    await client.drop_database("bench_exports")
    await mongo.ensure_indexes(db)
    await fill(db, "conv", count, datetime.now(UTC) - timedelta(days=30))
    store = ExportStore(db)

    async def notify(room: str, event: str, data: dict[str, Any]) -> None:
        pass

    settings = RecordSettings()
    exports = Exports(
        settings,
        "Clinic",
        store,
        AttachmentStore(db),
        Directory(db),
        _Links(),
        notify,
        AuditLog(db),
    )
    await store.create("pat", "pat")
    started = time.perf_counter()
    await exports.build_next()
    build_s = time.perf_counter() - started
    built = await db[names.EXPORTS].find_one({"state": "ready"})
    await store.create("pat", "pat")
    tracemalloc.start()
    await exports.build_next()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    # The same record, 400 days old and more, ``per_day`` messages a day.
    age = timedelta(days=400 + count / per_day)
    await fill(db, "old", count, datetime.now(UTC) - age, per_day)
    retention = Retention(
        RecordSettings(retention_days={"messages": 365}, retention_batch=batch),
        RetentionStore(db, AttachmentStore(db)),
        AuditLog(db),
    )
    latencies: list[float] = []
    done = asyncio.Event()

    async def writer() -> None:
        seq = 0
        while not done.is_set():
            seq += 1
            began = time.perf_counter()
            await db["live"].insert_one({"seq": seq, "at": datetime.now(UTC)})
            latencies.append((time.perf_counter() - began) * 1000)
            await asyncio.sleep(0.01)

    writing = asyncio.create_task(writer())
    await asyncio.sleep(1.0)  # the writer's latency before the run
    quiet = list(latencies)
    started = time.perf_counter()
    await retention.run(
        {
            "messages": 365,
            **dict.fromkeys(("attachments", "transcripts", "assistant", "notifications")),
        }
    )
    retention_s = time.perf_counter() - started
    during = latencies[len(quiet) :]
    done.set()
    await writing
    await client.close()
    assert built is not None
    return {
        "messages": count,
        "retention_batch": batch,
        "old_per_day": per_day,
        "export_s": round(build_s, 2),
        "export_peak_mib": round(peak / 2**20, 1),
        "bundle_mib": round(built["files"]["bundle"]["size"] / 2**20, 1),
        "pdf_mib": round(built["files"]["pdf"]["size"] / 2**20, 2),
        "retention_s": round(retention_s, 1),
        "retention_docs_per_s": round(count / retention_s),
        "insert_p99_ms_quiet": round(percentile(quiet, 0.99), 1),
        "insert_p99_ms_during_retention": round(percentile(during, 0.99), 1),
    }


def main() -> None:
    from hub.core.settings import RecordSettings

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=RecordSettings().retention_batch)
    parser.add_argument("--per-day", type=int, default=100, help="old messages a day")
    args = parser.parse_args()
    from hub.server import embedded

    with tempfile.TemporaryDirectory() as tmp:
        server = embedded.start_mongodb(Path(tmp))
        try:
            report = asyncio.run(run(server.url, args.messages, args.batch, args.per_day))
        finally:
            server.stop()
    record_run(
        ROOT / "bench" / "results" / "exports.json",
        {**stamp(), **report},
        key=lambda run: (
            run["messages"],
            run.get("retention_batch", 0),
            run.get("old_per_day", 0),
        ),
    )


if __name__ == "__main__":
    main()

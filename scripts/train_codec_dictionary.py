"""Train a zstd dictionary for the state codec on simulated customers (offline, once per dictionary).

    python scripts/train_codec_dictionary.py NUMBER > dictionary.b64

Runs simulated portfolios (``pipeline.simulate``, seeds other than the ones
benchmarks use) through the real engine, takes each customer's record as
layout-1 JSON every ``--every`` events and at the end, and trains a
``--size``-byte dictionary on them. Print its base64; pasting it into
``pipeline/codec_dict.py`` under a *new* number (and a new format byte in
``pipeline.codec.FORMATS``) releases it. A released dictionary is never
retrained in place: records written with it must stay readable.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import sys

import zstandard

from detectors.config import Thresholds
from pipeline import codec
from pipeline import simulate
from pipeline.config import LedgerConfig
from pipeline.engine import RiskEngine
from pipeline.events import parse_event
from pipeline.ledger import LedgerRejected
from pipeline.models import OnlineModels


def samples(customers: int, days: int, seeds: list[int], every: int) -> list[bytes]:
    out: list[bytes] = []
    for seed in seeds:
        ledger = LedgerConfig()
        engine = RiskEngine(Thresholds(), ledger, OnlineModels.from_options(Thresholds().models, ledger))
        records: dict = {}
        counts: dict[str, int] = {}
        for line in simulate.simulate_lines(customers, days, seed):
            event = parse_event(line)
            try:
                records[event.customer_id], _ = engine.on_event(records.get(event.customer_id), event, event.occurred_at)
            except LedgerRejected:
                continue
            counts[event.customer_id] = counts.get(event.customer_id, 0) + 1
            if counts[event.customer_id] % every == 0:
                record = records[event.customer_id]
                out.append(codec.layout_json(record.ledger, record.risk.to_json()))
        out.extend(codec.layout_json(r.ledger, r.risk.to_json()) for r in records.values())
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("number", type=int, help="the dictionary's number (never one already released)")
    parser.add_argument("--size", type=int, default=16384)
    parser.add_argument("--customers", type=int, default=150)
    parser.add_argument("--days", type=int, default=400)
    parser.add_argument("--seeds", type=int, nargs="+", default=[101, 103])
    parser.add_argument("--every", type=int, default=40, help="also sample each customer every N of its events")
    args = parser.parse_args(argv)
    if any(args.number == released for _, released in codec.FORMATS.values()):
        parser.error(f"dictionary {args.number} is released; train a new number")
    data = samples(args.customers, args.days, args.seeds, args.every)
    trained = zstandard.train_dictionary(args.size, data, dict_id=0x43570000 + args.number, level=codec.LEVEL, threads=0)
    raw = trained.as_bytes()
    print(f"{len(data)} samples, {sum(map(len, data)):,} bytes; dictionary {len(raw):,} bytes, "
          f"sha256 {hashlib.sha256(raw).hexdigest()}", file=sys.stderr)
    print(base64.b64encode(raw).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A digest of everything a backtest produces, to check that a speed change changed nothing.

``python -m benchmarks.engine_digest [--events N] [--customers C] [--days D] [--rules]``
prints one SHA-256 each for the alert revisions, the final customer records
(their changelog bytes) and the model metrics, plus the tick count and the CPU
seconds of the replay. Run it before and after a change to the engine,
ledger, detectors or models: "identical" in BENCHMARKS.md means these match.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time

from benchmarks.backtest_speed import _engine, _warm_up, stream


def digest(lines: list[bytes], with_models: bool = True) -> dict[str, object]:
    from pipeline.backtest import run_backtest
    from pipeline.engine import encode_record

    engine = _engine(with_models=with_models)
    cpu = time.process_time()
    result = run_backtest(lines, engine)
    cpu = time.process_time() - cpu
    alerts = hashlib.sha256()
    for update in result.updates:
        alerts.update(json.dumps(update.alert, sort_keys=True, default=str).encode())
    records = hashlib.sha256()
    for customer_id in sorted(result.records):
        records.update(customer_id.encode())
        records.update(encode_record(result.records[customer_id]))
    return {
        "events": result.events,
        "ticks": result.ticks,
        "revisions": len(result.updates),
        "alerts": alerts.hexdigest()[:16],
        "records": records.hexdigest()[:16],
        "model": hashlib.sha256(json.dumps(result.model, sort_keys=True).encode()).hexdigest()[:16],
        "cpu_s": round(cpu, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=150_000)
    parser.add_argument("--customers", type=int, default=10_000)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--rules", action="store_true", help="rule detectors only, no models")
    args = parser.parse_args()
    _warm_up()
    lines = stream(args.customers, args.days, limit=args.events)
    print(json.dumps(digest(lines, with_models=not args.rules)))


if __name__ == "__main__":
    main()

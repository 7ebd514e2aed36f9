"""``creditwatch`` command line (CONTRACT §4).

Every failure a user can cause — a bad argument, an unreachable broker, a
missing file — ends in one line on stderr and a non-zero exit, never a
traceback. Subcommands import their heavy dependencies lazily so that
``creditwatch --help`` stays instant.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Callable, NoReturn, Sequence

from pipeline.config import ConfigError, Settings, load_settings


class UserError(Exception):
    """A problem the user can fix; printed as one line."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port {port} is out of range (1..65535)")
    return port


def _existing_file(text: str) -> Path:
    path = Path(text)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"no such file: {text}")
    return path


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="creditwatch", description="Credit-risk early warning on a streaming receivables ledger.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    demo = commands.add_parser("demo", help="run the whole system on one machine with embedded defaults")
    demo.add_argument("--port", type=_port, default=None, help="broker port (default: a free one)")
    demo.add_argument("--events", type=_existing_file, default=None, help="JSONL events to ingest (default: the bundled examples)")
    demo.add_argument("--once", action="store_true", help="print the positions and stop instead of running on")
    demo.set_defaults(handler=_cmd_demo)

    broker = commands.add_parser("broker", help="run the embedded Kafka-compatible broker on 127.0.0.1")
    broker.add_argument("--port", type=_port, default=9092)
    broker.set_defaults(handler=_cmd_broker)

    worker = commands.add_parser("worker", help="run a stream-processing worker against CREDITWATCH_BROKER_URL")
    worker.set_defaults(handler=_cmd_worker)

    ingest = commands.add_parser("ingest", help="publish events from a JSONL file to the input topics")
    ingest.add_argument("file", type=_existing_file, metavar="FILE.jsonl")
    ingest.set_defaults(handler=_cmd_ingest)

    schema = commands.add_parser("schema", help="write one JSON Schema per event type")
    schema.add_argument("--out", type=Path, default=Path("schemas"), help="directory to write into (default: ./schemas)")
    schema.set_defaults(handler=_cmd_schema)

    backtest = commands.add_parser("backtest", help="replay events offline through the same detectors and models")
    backtest.add_argument("file", type=_existing_file, metavar="FILE.jsonl")
    backtest.add_argument("--config", type=_existing_file, default=None, help="thresholds file (TOML)")
    backtest.add_argument("--json", action="store_true", help="print one JSON object")
    backtest.add_argument("--until", default=None, help="run the clock on to this day (YYYY-MM-DD) after the last event")
    backtest.add_argument("--no-models", action="store_true", help="rules only")
    backtest.set_defaults(handler=_cmd_backtest)

    customer = commands.add_parser("customer", help="customer commands")
    customer_commands = customer.add_subparsers(dest="customer_command", metavar="ACTION", parser_class=_Parser)
    customer_commands.required = True
    show = customer_commands.add_parser("show", help="one customer's current ledger position")
    show.add_argument("customer_id", metavar="ID")
    show.add_argument("--json", action="store_true", help="print JSON")
    show.add_argument("--as-of", default=None, help="day to age at, YYYY-MM-DD (default: today)")
    show.set_defaults(handler=_cmd_customer_show)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace, Settings], int] = args.handler
    try:
        settings = load_settings()
        return handler(args, settings)
    except (UserError, ConfigError) as problem:
        print(f"creditwatch: error: {problem}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as unexpected:  # noqa: BLE001 - a bug still gets one line, the trace on request
        if os.environ.get("CREDITWATCH_DEBUG"):
            raise
        print(
            f"creditwatch: internal error: {type(unexpected).__name__}: {unexpected} (set CREDITWATCH_DEBUG=1 for the trace)",
            file=sys.stderr,
        )
        return 70


def _cmd_broker(args: argparse.Namespace, settings: Settings) -> int:
    from streams.broker import BrokerError, run_broker

    try:
        return run_broker(args.port)
    except BrokerError as problem:
        raise UserError(str(problem)) from None


def _cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    from streams.worker import run_worker

    return run_worker(settings)


def _cmd_ingest(args: argparse.Namespace, settings: Settings) -> int:
    from streams.ingest import BrokerUnavailable, ingest_file

    try:
        report = ingest_file(args.file, settings, errors=sys.stderr)
    except BrokerUnavailable as problem:
        raise UserError(str(problem)) from None
    print(report.summary())
    return 0 if not report.skipped else 1


def _cmd_schema(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.events import json_schemas

    try:
        args.out.mkdir(parents=True, exist_ok=True)
        for name, schema in json_schemas().items():
            (args.out / f"{name}.schema.json").write_text(json.dumps(schema, indent=2) + "\n")
    except OSError as problem:
        raise UserError(f"cannot write schemas to {args.out}: {problem.strerror}") from None
    print(f"wrote {len(json_schemas())} schemas to {args.out}")
    return 0


def _cmd_backtest(args: argparse.Namespace, settings: Settings) -> int:
    from datetime import date

    from detectors.config import ThresholdError, load_thresholds
    from pipeline.backtest import ProgressBar, build_engine, run_backtest

    try:
        thresholds = load_thresholds(args.config)
    except ThresholdError as problem:
        raise UserError(str(problem)) from None
    try:
        until = date.fromisoformat(args.until) if args.until else None
    except ValueError:
        raise UserError(f"--until {args.until!r} is not a date written YYYY-MM-DD") from None
    engine = build_engine(thresholds, settings.ledger, with_models=not args.no_models)
    with args.file.open("rb") as handle:
        total = sum(1 for _ in handle)
    bar = ProgressBar(total) if total >= 20_000 or sys.stderr.isatty() else None
    with args.file.open("rb") as handle:
        result = run_backtest(handle, engine, progress=bar, until=until)
    if bar is not None:
        bar.close()
    if args.json:
        print(json.dumps(result.to_json(), default=str))
        return 0
    from pipeline.report import format_backtest

    print(format_backtest(result))
    return 0


def _cmd_customer_show(args: argparse.Namespace, settings: Settings) -> int:
    from datetime import date

    from streams.state_reader import StateUnavailable, read_customer_state
    from pipeline.ledger import position
    from pipeline.report import format_position

    try:
        as_of = date.fromisoformat(args.as_of) if args.as_of else date.today()
    except ValueError:
        raise UserError(f"--as-of {args.as_of!r} is not a date written YYYY-MM-DD") from None
    try:
        state = read_customer_state(settings, args.customer_id)
    except StateUnavailable as problem:
        raise UserError(str(problem)) from None
    if state is None:
        raise UserError(f"no customer {args.customer_id!r} in the ledger")
    pos = position(state, as_of, settings.ledger)
    print(json.dumps(pos.to_json(), indent=2) if args.json else format_position(pos))
    return 0


def _cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from streams.demo import run_demo

    return run_demo(settings, port=args.port, events_file=args.events, once=args.once)


if __name__ == "__main__":
    sys.exit(main())

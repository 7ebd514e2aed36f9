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
from typing import Any, Callable, NoReturn, Sequence

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


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{value} must be greater than 0")
    return value


def _existing_file(text: str) -> Path:
    path = Path(text)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"no such file: {text}")
    return path


def _whole_number(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None


def _iso_date(text: str):  # -> datetime.date
    from datetime import date

    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date written YYYY-MM-DD") from None


def _share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="creditwatch", description="Credit-risk early warning on a streaming receivables ledger.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    demo = commands.add_parser("demo", help="run the whole system on one machine with embedded defaults")
    demo.add_argument("--port", type=_port, default=None, help="broker port (default: a free one)")
    demo.add_argument("--web-port", type=_port, default=8000, help="web app port (default 8000, or a free one)")
    demo.add_argument("--events", type=_existing_file, default=None,
                      help="publish this JSONL file instead of the simulated portfolio")
    demo.add_argument("--customers", type=_positive_int, default=60, help="simulated customers (default 60)")
    demo.add_argument("--seed", type=int, default=7)
    demo.add_argument("--speed", type=_positive_int, default=3600,
                      help="simulated seconds per real second after the history (default 3600: a day in 24 s)")
    demo.add_argument("--history-days", type=_positive_int, default=150, help="days of history published at once")
    demo.add_argument("--run-for", type=_positive_int, default=None, help="stop after this many seconds")
    demo.add_argument("--once", action="store_true", help="stop as soon as the first alerts are stored")
    demo.set_defaults(handler=_cmd_demo)

    broker = commands.add_parser("broker", help="run the embedded Kafka-compatible broker on 127.0.0.1")
    broker.add_argument("--port", type=_port, default=9092)
    broker.set_defaults(handler=_cmd_broker)

    worker = commands.add_parser("worker", help="run a stream-processing worker against CREDITWATCH_BROKER_URL")
    worker.add_argument("--config", type=_existing_file, default=None, help="thresholds file (TOML)")
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
    backtest.add_argument("--compare", type=_existing_file, default=None, metavar="FILE",
                          help="a second thresholds file: what-if report of --config (A) against this one (B)")
    backtest.add_argument("--report", type=Path, default=None, metavar="FILE.html",
                          help="with --compare: write the side-by-side report with a chart of alerts per week")
    backtest.add_argument("--feedback", action="store_true",
                          help="reviewers' verdicts from the store: reviewer-confirmed precision (with --compare) "
                               "and the reviewer-feedback model's learning replayed")
    backtest.add_argument("--verdicts", type=_existing_file, default=None, metavar="FILE.json",
                          help="the same from a file: {alert_id: confirmed|false_positive} or `alerts list --json`")
    backtest.add_argument("--review-days", type=_positive_int, default=7, metavar="N",
                          help="with verdicts: each becomes known N days after its alert was raised (default: 7)")
    backtest.set_defaults(handler=_cmd_backtest)

    simulate = commands.add_parser("simulate", help="generate a realistic simulated portfolio as JSONL events")
    simulate.add_argument("--customers", type=_positive_int, default=200, metavar="N", help="customers (default: 200)")
    simulate.add_argument("--days", type=_positive_int, default=365, metavar="D", help="days of history (default: 365)")
    simulate.add_argument("--seed", type=_whole_number, default=42, metavar="S",
                          help="random seed; the same seed gives the same bytes (default: 42)")
    simulate.add_argument("--start", type=_iso_date, default=None, metavar="YYYY-MM-DD",
                          help="first day (default: 2025-01-01)")
    simulate.add_argument("--default-share", type=_share, default=0.05, metavar="F",
                          help="share of customers that deteriorate and are written off (default: 0.05)")
    simulate_target = simulate.add_mutually_exclusive_group()
    simulate_target.add_argument("--out", type=Path, default=None, metavar="FILE", help="write to FILE (default: stdout)")
    simulate_target.add_argument("--to-broker", action="store_true",
                                 help="publish to the input topics at CREDITWATCH_BROKER_URL instead")
    simulate.set_defaults(handler=_cmd_simulate)

    customer = commands.add_parser("customer", help="customer commands")
    customer_commands = customer.add_subparsers(dest="customer_command", metavar="ACTION", parser_class=_Parser)
    customer_commands.required = True
    show = customer_commands.add_parser("show", help="one customer's current ledger position")
    show.add_argument("customer_id", metavar="ID")
    show.add_argument("--json", action="store_true", help="print JSON")
    show.add_argument("--as-of", default=None, help="day to age at, YYYY-MM-DD (default: today)")
    show.set_defaults(handler=_cmd_customer_show)
    _add_store_commands(commands)
    _add_threshold_commands(commands)
    _add_web_commands(commands)
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

    return run_worker(settings, args.config)


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
    if args.compare is not None:
        return _backtest_compare(args, settings, thresholds)
    if args.report is not None:
        raise UserError("--report needs --compare")
    engine = build_engine(thresholds, settings.ledger, with_models=not args.no_models)
    with args.file.open("rb") as handle:
        total = sum(1 for _ in handle)
    bar = ProgressBar(total) if total >= 20_000 or sys.stderr.isatty() else None
    replay = None
    verdicts = _verdicts(args, settings)
    if verdicts is not None:
        from pipeline.feedback import FeedbackReplay

        replay = FeedbackReplay(verdicts, review_days=args.review_days)
    with args.file.open("rb") as handle:
        result = run_backtest(handle, engine, progress=bar, until=until, feedback=replay)
    if bar is not None:
        bar.close()
    if args.json:
        print(json.dumps(result.to_json(), default=str))
        return 0
    from pipeline.report import format_backtest

    print(format_backtest(result))
    return 0


def _cmd_simulate(args: argparse.Namespace, settings: Settings) -> int:
    import time

    from pipeline.simulate import DEFAULT_START, publish, simulate_lines

    started = time.perf_counter()
    start = args.start or DEFAULT_START
    lines = simulate_lines(args.customers, args.days, args.seed, start=start, default_share=args.default_share)
    written_off = round(args.customers * args.default_share)
    what = f"{args.customers} customers, {args.days} days from {start}, {written_off} written off"
    if args.to_broker:
        from streams.ingest import BrokerUnavailable

        try:
            report = publish(lines, settings)
        except BrokerUnavailable as problem:
            raise UserError(str(problem)) from None
        print(f"simulated {what}; {report.summary()} in {time.perf_counter() - started:.1f} s")
        return 0 if not report.skipped else 1
    if args.out is None:
        try:
            for line in lines:
                sys.stdout.write(line + "\n")
            sys.stdout.flush()
        except BrokenPipeError:  # `creditwatch simulate | head`
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    count = 0
    try:
        with args.out.open("w", encoding="utf-8") as out:
            for line in lines:
                out.write(line + "\n")
                count += 1
    except OSError as problem:
        raise UserError(f"cannot write {args.out}: {problem.strerror}") from None
    print(f"wrote {count:,} events ({what}) to {args.out} in {time.perf_counter() - started:.1f} s")
    return 0


def _backtest_compare(args: argparse.Namespace, settings: Settings, thresholds: Any) -> int:
    from detectors.config import ThresholdError, load_thresholds
    from pipeline.whatif import compare, format_text, write_html

    try:
        other = load_thresholds(args.compare)
    except ThresholdError as problem:
        raise UserError(str(problem)) from None
    feedback = _verdicts(args, settings)
    lines = args.file.read_bytes().splitlines()
    _, _, report = compare(lines, thresholds, other, settings.ledger, feedback, with_models=not args.no_models,
                           review_days=args.review_days)
    if args.report is not None:
        try:
            write_html(report, args.report)
        except OSError as problem:
            raise UserError(f"cannot write {args.report}: {problem.strerror}") from None
    print(json.dumps(report, default=str) if args.json else format_text(report))
    return 0


def _verdicts(args: argparse.Namespace, settings: Settings) -> dict[str, str] | None:
    """Reviewers' verdicts for a backtest: from --verdicts FILE, or the store with --feedback, or None."""
    from pipeline.feedback import load_verdicts

    if args.verdicts is not None:
        try:
            return load_verdicts(args.verdicts)
        except (ValueError, KeyError) as problem:
            raise UserError(f"--verdicts {args.verdicts}: {problem}") from None
    if args.feedback:
        return load_verdicts(_threshold_store(settings))
    return None


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

    return run_demo(settings, port=args.port, events_file=args.events, once=args.once, web_port=args.web_port,
                    customers=args.customers, seed=args.seed, speed=args.speed, history_days=args.history_days,
                    run_for=args.run_for)


# --- the SQL store: `db upgrade`, `alerts …` ------------------------------------

_ALERT_STATUSES = ("open", "acknowledged", "resolved", "false_positive")
_SEVERITIES = ("info", "warning", "critical")
_ALERT_ORDERS = {"newest": "-raised_at", "oldest": "raised_at", "severity": "-severity", "updated": "-updated_at",
                 "customer": "customer", "confirm": "-confirm_probability"}


def _add_store_commands(commands: argparse._SubParsersAction) -> None:
    db = commands.add_parser("db", help="the SQL store's schema (CREDITWATCH_DATABASE_URL)")
    db_commands = db.add_subparsers(dest="db_command", metavar="ACTION", parser_class=_Parser)
    db_commands.required = True
    upgrade = db_commands.add_parser("upgrade", help="create the store's tables or migrate them to this version")
    upgrade.set_defaults(handler=_cmd_db_upgrade)

    alerts = commands.add_parser("alerts", help="stored alerts: list, show and work them")
    alert_commands = alerts.add_subparsers(dest="alerts_command", metavar="ACTION", parser_class=_Parser)
    alert_commands.required = True
    listing = alert_commands.add_parser("list", help="list stored alerts, newest first")
    listing.add_argument("--status", action="append", choices=_ALERT_STATUSES, help="only this status (repeatable)")
    listing.add_argument("--severity", action="append", choices=_SEVERITIES, help="only this severity (repeatable)")
    listing.add_argument("--detector", action="append", help="only this detector (repeatable)")
    listing.add_argument("--customer", action="append", metavar="ID", help="only this customer (repeatable)")
    listing.add_argument("--assignee", default=None, help="only alerts assigned to NAME ('' = unassigned)", metavar="NAME")
    listing.add_argument("--search", default=None, help="text in the title, customer name or id")
    listing.add_argument("--sort", choices=list(_ALERT_ORDERS), default="newest",
                         help="newest first (default), oldest first, worst severity first, last updated first, by customer, "
                              "most likely confirmed by a reviewer first (pipeline.feedback)")
    listing.add_argument("--limit", type=int, default=None, help="at most N alerts (default: all)", metavar="N")
    listing.add_argument("--json", action="store_true", help="print a JSON array of alerts (CONTRACT §3)")
    listing.set_defaults(handler=_cmd_alerts_list)

    show = alert_commands.add_parser("show", help="one alert with its history and deliveries")
    show.add_argument("alert_id", metavar="ALERT_ID")
    show.add_argument("--json", action="store_true", help="print JSON")
    show.set_defaults(handler=_cmd_alerts_show)

    by_help = "who makes the change (default: $USER)"
    for name, status, help_text, note_required in (
        ("ack", "acknowledged", "acknowledge an alert", False),
        ("resolve", "resolved", "resolve an alert (needs --note)", True),
        ("false-positive", "false_positive", "mark an alert a false positive (needs --note)", True),
        ("reopen", "open", "reopen an alert (a resolved or false-positive one needs --note)", False),
    ):
        change = alert_commands.add_parser(name, help=help_text)
        change.add_argument("alert_id", metavar="ALERT_ID")
        change.add_argument("--by", default=None, metavar="NAME", help=by_help)
        change.add_argument("--note", default=None, required=note_required, help="why")
        change.set_defaults(handler=_cmd_alerts_status, to_status=status)

    assign = alert_commands.add_parser("assign", help="give an alert to someone (or --unassign)")
    assign.add_argument("alert_id", metavar="ALERT_ID")
    assign.add_argument("assignee", nargs="?", default=None, metavar="NAME")
    assign.add_argument("--unassign", action="store_true", help="take the alert away from whoever has it")
    assign.add_argument("--by", default=None, metavar="NAME", help=by_help)
    assign.add_argument("--note", default=None)
    assign.set_defaults(handler=_cmd_alerts_assign)


def _cmd_db_upgrade(args: argparse.Namespace, settings: Settings) -> int:
    from sinks.store import StoreError, safe_url, upgrade_database

    url = settings.resolved_database_url
    try:
        before, after = upgrade_database(url)
    except StoreError as problem:
        raise UserError(str(problem)) from None
    where = safe_url(url)
    if before == after:
        print(f"{where}: schema is current (revision {after})")
    else:
        print(f"{where}: schema upgraded from {before or 'empty'} to revision {after}")
    return 0


def _alert_store(settings: Settings):  # -> sinks.store.AlertStore
    from sinks.store import AlertStore, StoreError, check_schema_current

    url = settings.resolved_database_url
    try:
        check_schema_current(url)
    except StoreError as problem:
        raise UserError(str(problem)) from None
    return AlertStore(url)


def _store_call(call: Callable[[], object]) -> object:
    from sinks.store import StoreError

    try:
        return call()
    except StoreError as problem:
        raise UserError(str(problem)) from None


def _cmd_alerts_list(args: argparse.Namespace, settings: Settings) -> int:
    if args.limit is not None and args.limit < 0:
        raise UserError(f"--limit {args.limit} must be 0 or more")
    store = _alert_store(settings)
    try:
        alerts = _store_call(lambda: store.list_alerts(
            status=args.status, severity=args.severity, detector=args.detector, customer=args.customer,
            assignee=args.assignee, search=args.search, order=_ALERT_ORDERS[args.sort], limit=args.limit,
        ))
    finally:
        store.close()
    if args.json:
        print(json.dumps(alerts))
        return 0
    if not alerts:
        print("no alerts")
        return 0
    rows = [("ALERT", "SEVERITY", "STATUS", "DETECTOR", "CUSTOMER", "RAISED", "ASSIGNEE", "TITLE")]
    for alert in alerts:  # type: ignore[union-attr]
        customer = alert["customer_id"] + (f" {alert['customer_name']}" if alert.get("customer_name") else "")
        rows.append((alert["alert_id"], alert["severity"], alert["status"], alert["detector"], customer[:30],
                     (alert["raised_at"] or "")[:16].replace("T", " "), alert.get("assignee") or "-",
                     alert["title"]))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1])
    return 0


def _cmd_alerts_show(args: argparse.Namespace, settings: Settings) -> int:
    store = _alert_store(settings)
    try:
        alert = _store_call(lambda: store.get_alert(args.alert_id))
    finally:
        store.close()
    if alert is None:
        raise UserError(f"no alert {args.alert_id!r}")
    if args.json:
        print(json.dumps(alert))
        return 0
    a: dict = alert  # type: ignore[assignment]
    print(f"{a['alert_id']}  {a['severity'].upper()}  {a['status']}  (revision {a['revision']})")
    print(f"  {a['title']}")
    print(f"  customer   {a['customer_id']}" + (f" ({a['customer_name']})" if a.get("customer_name") else ""))
    print(f"  detector   {a['detector']}" + (f", score {a['score']:.2f}" if a.get("score") is not None else ""))
    print(f"  raised     {a['raised_at']}   updated {a['updated_at']}")
    print(f"  assignee   {a.get('assignee') or '-'}")
    for reason in a["reasons"]:
        print(f"  - {reason.get('message') or reason.get('code')}")
    print("history:")
    for item in a["history"]:
        moved = f"{item['from_status'] or '-'} → {item['to_status']}"
        if item["change"] == "assigned":
            moved = f"assignee {item['from_assignee'] or '-'} → {item['to_assignee'] or '-'}"
        note = f": {item['note']}" if item.get("note") else ""
        print(f"  {item['at'][:19].replace('T', ' ')}  {item['by']:<12} {item['change']:<9} {moved}{note}")
    if a["deliveries"]:
        print("deliveries:")
        for item in a["deliveries"]:
            error = f" ({item['last_error']})" if item.get("last_error") and item["status"] != "delivered" else ""
            print(f"  {item['sink']:<8} {item['kind']:<13} {item['change']:<14} {item['status']:<9} "
                  f"attempts {item['attempts']}{error}")
    return 0


def _changed_by(args: argparse.Namespace) -> str:
    from sinks.store import default_user

    return args.by if args.by is not None else default_user()


def _cmd_alerts_status(args: argparse.Namespace, settings: Settings) -> int:
    store = _alert_store(settings)
    by = _changed_by(args)
    try:
        alert = _store_call(lambda: store.change_status(args.alert_id, args.to_status, by, args.note))
    finally:
        store.close()
    print(f"{args.alert_id}: now {alert['status']} (by {by})")  # type: ignore[index]
    return 0


def _cmd_alerts_assign(args: argparse.Namespace, settings: Settings) -> int:
    if args.unassign == (args.assignee is not None):
        raise UserError("give either a NAME to assign the alert to or --unassign")
    store = _alert_store(settings)
    by = _changed_by(args)
    try:
        alert = _store_call(lambda: store.assign(args.alert_id, None if args.unassign else args.assignee, by, args.note))
    finally:
        store.close()
    print(f"{args.alert_id}: assigned to {alert['assignee'] or 'nobody'} (by {by})")  # type: ignore[index]
    return 0


# --- the web app: `serve`, `users …` ----------------------------------------------


def _add_web_commands(commands: argparse._SubParsersAction) -> None:
    serve = commands.add_parser("serve", help="serve the web app (alert inbox, customers, portfolio)")
    serve.add_argument("--port", type=_port, default=8000, help="port to listen on (default: 8000)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    serve.set_defaults(handler=_cmd_serve)

    users = commands.add_parser("users", help="web app users")
    user_commands = users.add_subparsers(dest="users_command", metavar="ACTION", parser_class=_Parser)
    user_commands.required = True
    add = user_commands.add_parser("add", help="add a user (asks for the password unless --password is given)")
    add.add_argument("name", metavar="NAME")
    add.add_argument("--role", required=True, choices=("viewer", "controller", "ops", "admin"),
                     help="viewer reads; ops and controller work alerts; controller and admin approve limits")
    add.add_argument("--password", default=None, help="the password (default: ask, without echo)")
    add.set_defaults(handler=_cmd_users_add)
    listing = user_commands.add_parser("list", help="list users and their roles")
    listing.set_defaults(handler=_cmd_users_list)


def _cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.web.app import load_web_settings, run_server
    from sinks.store import safe_url

    web = load_web_settings()
    _alert_store(settings).close()  # the schema must be current: one line if not
    print(f"creditwatch web app on http://{args.host}:{args.port} (store {safe_url(settings.resolved_database_url)})",
          flush=True)
    try:
        run_server(settings, args.host, args.port, web_settings=web)
    except OSError as problem:
        raise UserError(f"cannot serve on {args.host}:{args.port}: {problem.strerror or problem}") from None
    return 0


def _read_new_password() -> str:
    import getpass

    if not sys.stdin.isatty():  # scripted: the first line of stdin
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("Password: ")
    if getpass.getpass("Repeat the password: ") != first:
        raise UserError("the passwords differ")
    return first


def _cmd_users_add(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.web.auth import check_new_user, hash_password

    password = args.password if args.password is not None else _read_new_password()
    try:
        check_new_user(args.name, args.role, password)
    except ValueError as problem:
        raise UserError(str(problem)) from None
    store = _alert_store(settings)
    try:
        try:
            _store_call(lambda: store.add_user(args.name, hash_password(password), args.role))
        except ValueError as problem:
            raise UserError(str(problem)) from None
    finally:
        store.close()
    print(f"added user {args.name} ({args.role})")
    return 0


def _cmd_users_list(args: argparse.Namespace, settings: Settings) -> int:
    store = _alert_store(settings)
    try:
        users = _store_call(store.list_users)
    finally:
        store.close()
    for user in users:  # type: ignore[union-attr]
        print(f"{user['name']:<24} {user['role']:<11} since {user['created_at'][:10]}")
    if not users:
        print("no users")
    return 0


def _add_threshold_commands(commands: argparse._SubParsersAction) -> None:
    thresholds = commands.add_parser("thresholds", help="detection thresholds: versions with an audit trail")
    actions = thresholds.add_subparsers(dest="thresholds_command", metavar="ACTION", parser_class=_Parser)
    actions.required = True
    show = actions.add_parser("show", help="the thresholds in force and their version")
    show.add_argument("--json", action="store_true")
    show.set_defaults(handler=_cmd_thresholds_show)
    change = actions.add_parser("set", help="change one option; workers apply it within seconds")
    change.add_argument("key", metavar="DETECTOR.OPTION")
    change.add_argument("value", metavar="VALUE")
    change.add_argument("--reason", required=True, help="why (required, kept in the history)")
    change.add_argument("--by", default=None, help="who (default: $USER)")
    change.set_defaults(handler=_cmd_thresholds_set)
    hist = actions.add_parser("history", help="every change: who, when, old → new, why")
    hist.add_argument("--json", action="store_true")
    hist.add_argument("--limit", type=int, default=50)
    hist.set_defaults(handler=_cmd_thresholds_history)
    export = actions.add_parser("export", help="print the thresholds in force as a file --config accepts")
    export.set_defaults(handler=_cmd_thresholds_export)
    load = actions.add_parser("load", help="make a thresholds file the version in force")
    load.add_argument("file", type=_existing_file, metavar="FILE.toml")
    load.add_argument("--reason", required=True)
    load.add_argument("--by", default=None)
    load.set_defaults(handler=_cmd_thresholds_load)


def _threshold_store(settings: Settings):  # noqa: ANN202 - lazily imported type
    from sinks.store import AlertStore, SchemaOutdated, StoreUnavailable, check_schema_current

    url = settings.resolved_database_url
    try:
        check_schema_current(url)
    except (SchemaOutdated, StoreUnavailable) as problem:
        raise UserError(str(problem)) from None
    return AlertStore(url)


def _cmd_thresholds_show(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.tuning import current

    version = current(_threshold_store(settings))
    if args.json:
        import tomllib

        print(json.dumps({"version": version.number, "thresholds": tomllib.loads(version.thresholds.to_toml())}))
    else:
        print(f"# version {version.number if version.number is not None else '— (built-in defaults)'}")
        print(version.thresholds.to_toml(), end="")
    return 0


def _cmd_thresholds_export(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.tuning import current

    version = current(_threshold_store(settings))
    print(f"# creditwatch thresholds, version {version.number or 'defaults'}")
    print(version.thresholds.to_toml(), end="")
    return 0


def _cmd_thresholds_set(args: argparse.Namespace, settings: Settings) -> int:
    from detectors.config import ThresholdError
    from pipeline.tuning import change
    from sinks.store import default_user

    try:
        version, changes = change(_threshold_store(settings), args.key, args.value, args.by or default_user(), args.reason)
    except ThresholdError as problem:
        raise UserError(str(problem)) from None
    if not changes:
        print(f"unchanged: {args.key} already has that value (version {version})")
    for key, old, new in changes:
        print(f"version {version}: {key}: {old!r} → {new!r}")
    return 0


def _cmd_thresholds_load(args: argparse.Namespace, settings: Settings) -> int:
    from detectors.config import ThresholdError, load_thresholds
    from pipeline.tuning import current, diff, record_file
    from sinks.store import default_user

    try:
        thresholds = load_thresholds(args.file)
    except ThresholdError as problem:
        raise UserError(str(problem)) from None
    store = _threshold_store(settings)
    before = current(store)
    version = record_file(store, thresholds, args.by or default_user(), args.reason)
    for key, old, new in diff(before.thresholds, thresholds):
        print(f"version {version}: {key}: {old!r} → {new!r}")
    return 0


def _cmd_thresholds_history(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.tuning import history

    entries = history(_threshold_store(settings), limit=args.limit)
    if args.json:
        print(json.dumps(entries, default=str))
        return 0
    for entry in entries:
        print(f"version {entry['version']}  {entry['changed_at']}  by {entry['changed_by']}: {entry['reason'] or ''}")
        for item in entry["changes"]:
            print(f"    {item['key']}: {item['old']!r} → {item['new']!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

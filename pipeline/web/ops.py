"""The ops pages: threshold versions with their audit trail, and what-if runs before a change goes live.

``/ops/thresholds`` shows the version in force (every detector's options,
their allowed ranges and defaults), edits them with a required reason and
lists the history (who, when, old → new, why). Saving goes through
:func:`pipeline.tuning.change_many` — the code path of ``creditwatch
thresholds set`` — so validation is the CLI's (one message naming the key and
the allowed range) and the result is a new version in the store, which
running workers pick up on their next poll (``CREDITWATCH_THRESHOLD_POLL_MS``).

``/ops/whatif`` replays a stored event file (a ``.jsonl`` file under
``CREDITWATCH_DATA_DIR``; nothing outside it can be named) through
:func:`pipeline.whatif.compare` with A = the version in force and B = a
candidate (edited values or a stored version), in a background thread, one
run at a time; ``/ops/whatif/jobs/{id}`` shows the side-by-side table and the
alert-volume chart, and "Apply B" saves B as a new version (with a reason),
refused if the thresholds changed since the run.

Only ``ops`` and ``admin`` users reach these pages (others get 403); every
form carries the session's CSRF token.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import queue
import tempfile
import threading
import typing
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Mapping

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from detectors.config import ModelOptions, ThresholdError, Thresholds, allowed_range
from pipeline import tuning
from pipeline.web.app import WebContext, _flash, _render, check_csrf, current_user

log = logging.getLogger("creditwatch.web.ops")

#: Roles that may change thresholds and run what-ifs.
OPS_ROLES = frozenset({"ops", "admin"})
FIELD_PREFIX = "opt:"
MAX_REASON = 2000
MAX_CHANGES_TEXT = 10_000
#: How deep below the data directory event files are looked for, and how many are listed.
MAX_DEPTH = 3
MAX_FILES = 500


def require_ops(user: dict[str, Any] = Depends(current_user)) -> dict[str, Any]:
    if user["role"] not in OPS_ROLES:
        raise HTTPException(status_code=403, detail=f"Only ops and admin users tune thresholds; a {user['role']} "
                                                    "cannot.")
    return user


# --- the options, as the form shows them ---------------------------------------------------------


@dataclass(frozen=True)
class OptionField:
    key: str  # section.option
    section: str
    option: str
    value: Any
    default: Any
    kind: str  # "bool" | "choice" | "list" | "number"
    choices: tuple[str, ...]
    allowed: str | None
    description: str | None

    @property
    def text(self) -> str:
        """The value as the form shows it (a choice bare, everything else as TOML)."""
        return str(self.value) if self.kind == "choice" else toml_text(self.value)

    @property
    def allowed_text(self) -> str:
        if self.kind == "bool":
            return "true or false"
        if self.kind == "choice":
            return " / ".join(self.choices)
        if self.kind == "list":
            return "a list, e.g. [\"a\", \"b\"]"
        return self.allowed or "any number"


def toml_text(value: Any) -> str:
    """A value as TOML, the way ``creditwatch thresholds set`` takes it on the command line."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_text(item) for item in value) + "]"
    return repr(value)


def _option_models() -> list[tuple[str, type]]:
    import detectors.rules  # noqa: F401  (registers the rule detectors)
    from detectors.base import REGISTRY

    return [*((name, REGISTRY[name].Options) for name in sorted(REGISTRY)), ("models", ModelOptions)]


def option_fields(thresholds: Thresholds) -> list[tuple[str, list[OptionField]]]:
    """Per section (every detector, then ``models``), its options with value, default and allowed range."""
    sections = []
    for section, cls in _option_models():
        values = (thresholds.models if section == "models" else thresholds.options_for(section)).model_dump()
        fields = []
        for option, info in cls.model_fields.items():
            annotation = info.annotation
            origin = typing.get_origin(annotation)
            choices: tuple[str, ...] = ()
            if annotation is bool:
                kind = "bool"
            elif origin is typing.Literal:
                kind, choices = "choice", tuple(str(c) for c in typing.get_args(annotation))
            elif origin in (tuple, list) or annotation in (tuple, list):
                kind = "list"
            else:
                kind = "number"
            fields.append(OptionField(
                key=f"{section}.{option}", section=section, option=option, value=values[option],
                default=info.get_default(call_default_factory=True), kind=kind, choices=choices,
                allowed=allowed_range(cls, option), description=info.description))
        sections.append((section, fields))
    return sections


def _message(problem: ThresholdError, key: str | None = None) -> str:
    """The CLI's one line without its ``thresholds:`` source, with the allowed range when it lacks one."""
    text = str(problem)
    if text.startswith("thresholds: "):
        text = text[len("thresholds: "):]
    if key is not None and "allowed" not in text:
        section, _, option = key.partition(".")
        cls = dict(_option_models()).get(section)
        allowed = allowed_range(cls, option) if cls is not None else None
        if allowed:
            text += f" (allowed: {allowed})"
    return text


def submitted_changes(fields: list[OptionField], form: Mapping[str, Any]) -> dict[str, str]:
    """``key → raw TOML value`` for every option whose submitted text differs from the value in force."""
    values: dict[str, str] = {}
    for item in fields:
        given = form.get(FIELD_PREFIX + item.key)
        if given is None:
            continue
        text = str(given).strip()
        if text == item.text:
            continue
        values[item.key] = toml_text(text) if item.kind == "choice" else text
    return values


def validate(base: Thresholds, values: Mapping[str, str]) -> tuple[Thresholds | None, dict[str, str], list[str]]:
    """Apply ``values`` with the CLI's validation: (result, errors by key, errors across keys)."""
    by_key: dict[str, str] = {}
    for key, raw in values.items():
        try:
            tuning.with_value(base, key, raw)
        except ThresholdError as problem:
            by_key[key] = _message(problem, key)
    if by_key:
        return None, by_key, []
    updated = base
    try:
        for key, raw in values.items():
            updated = tuning.with_value(updated, key, raw)
    except ThresholdError as problem:  # e.g. a warning level above its critical level
        return None, {}, [_message(problem)]
    return updated, {}, []


def parse_change_lines(text: str) -> tuple[dict[str, str], list[str]]:
    """``detector.option = value`` per line (blank lines and ``#`` comments skipped)."""
    values: dict[str, str] = {}
    errors: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, raw = line.partition("=")
        if not sep or not key.strip() or not raw.strip():
            errors.append(f"line {number}: write detector.option = value")
            continue
        values[key.strip()] = raw.strip()
    return values, errors


# --- event files under the data directory ------------------------------------------------------


def event_files(data_dir: Path) -> list[dict[str, Any]]:
    """The ``.jsonl`` files below ``data_dir`` (relative names), never one that resolves outside it."""
    try:
        root = data_dir.resolve()
    except OSError:
        return []
    if not root.is_dir():
        return []
    found: list[dict[str, Any]] = []
    for directory, subdirs, names in os.walk(root):
        depth = len(Path(directory).relative_to(root).parts)
        subdirs[:] = sorted(d for d in subdirs if not d.startswith(".")) if depth < MAX_DEPTH else []
        for name in sorted(names):
            if name.startswith(".") or not name.endswith(".jsonl"):
                continue
            path = Path(directory) / name
            try:
                resolved = path.resolve()
                if not resolved.is_relative_to(root) or not resolved.is_file():
                    continue
                size = resolved.stat().st_size
            except OSError:
                continue
            found.append({"name": path.relative_to(root).as_posix(), "size": size})
            if len(found) >= MAX_FILES:
                break
    return sorted(found, key=lambda item: item["name"])[:MAX_FILES]


def resolve_event_file(data_dir: Path, name: str) -> Path | None:
    """The file for a name from :func:`event_files`; None for anything else (``..``, absolute paths, links out)."""
    if not name or name not in {item["name"] for item in event_files(data_dir)}:
        return None
    root = data_dir.resolve()
    path = (root / name).resolve()
    return path if path.is_relative_to(root) and path.is_file() else None


def _size(size: int) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:,} {unit}" if unit == "bytes" else f"{size:,.1f} {unit}"
        size /= 1024  # type: ignore[assignment]
    return str(size)


# --- what-if runs ------------------------------------------------------------------------------


@dataclass
class WhatIfJob:
    id: str
    user: str
    file: str
    path: Path
    a_version: int | None
    a: Thresholds
    b: Thresholds
    b_label: str
    #: key → raw TOML value: what "Apply B" sets on top of A.
    b_values: dict[str, str]
    b_changes: list[tuple[str, Any, Any]]
    with_models: bool
    created_at: datetime
    status: str = "queued"  # queued → running → done | failed
    report: dict[str, Any] | None = None
    error: str | None = None
    applied_version: int | None = None
    done: threading.Event = field(default_factory=threading.Event, repr=False)


class JobsBusy(Exception):
    pass


class WhatIfJobs:
    """What-if runs, one at a time in a background thread, the last ``keep`` remembered (in memory).

    A replay is CPU work for seconds to minutes; it never runs on the
    server's event loop or in a request's thread. Per process: a restart
    forgets the runs (their reports can be downloaded; the thresholds they
    applied are in the store).
    """

    def __init__(self, run: Callable[[WhatIfJob], dict[str, Any]], keep: int = 20, max_waiting: int = 4):
        self._run = run
        self.keep = keep
        self.max_waiting = max_waiting
        self._jobs: dict[str, WhatIfJob] = {}
        self._queue: queue.Queue[WhatIfJob] = queue.Queue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def submit(self, job: WhatIfJob) -> WhatIfJob:
        with self._lock:
            waiting = sum(1 for j in self._jobs.values() if j.status in ("queued", "running"))
            if waiting >= self.max_waiting:
                raise JobsBusy(f"{waiting} what-if runs are waiting already; try again when one has finished.")
            self._jobs[job.id] = job
            finished = [j for j in self._jobs.values() if j.status in ("done", "failed")]
            for old in sorted(finished, key=lambda j: j.created_at)[:max(0, len(self._jobs) - self.keep)]:
                del self._jobs[old.id]
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._work, name="creditwatch-whatif", daemon=True)
                self._thread.start()
        self._queue.put(job)
        return job

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            job.status = "running"
            try:
                job.report = self._run(job)
                job.status = "done"
            except Exception as problem:  # noqa: BLE001 - a failed run is shown on its page, the thread goes on
                log.exception("what-if %s failed", job.id)
                job.error = " ".join(str(problem).split()) or type(problem).__name__
                job.status = "failed"
            finally:
                job.done.set()

    def get(self, job_id: str) -> WhatIfJob | None:
        with self._lock:
            return self._jobs.get(job_id)

    def recent(self) -> list[WhatIfJob]:
        with self._lock:
            return sorted(self._jobs.values(), key=lambda j: j.created_at, reverse=True)

    def wait(self, job_id: str, timeout: float | None = None) -> WhatIfJob:
        job = self.get(job_id)
        if job is None:
            raise KeyError(job_id)
        job.done.wait(timeout)
        return job


def run_whatif(ctx: WebContext) -> Callable[[WhatIfJob], dict[str, Any]]:
    from pipeline.whatif import compare, feedback_from_store

    def run(job: WhatIfJob) -> dict[str, Any]:
        lines = job.path.read_bytes().splitlines()
        feedback = feedback_from_store(ctx.store)
        _, _, report = compare(lines, job.a, job.b, ctx.settings.ledger, feedback, with_models=job.with_models)
        return report

    return run


def chart(report: Mapping[str, Any], width: int = 900, height: int = 260, pad: int = 40) -> dict[str, Any]:
    """The alert-volume chart of ``whatif.write_html`` (same scale and geometry), as values for the template."""
    weeks = sorted(set(report["weekly_alerts"]["a"]) | set(report["weekly_alerts"]["b"]))
    series = {side: [report["weekly_alerts"][side].get(week, 0) for week in weeks] for side in ("a", "b")}
    top = max([1, *series["a"], *series["b"]])

    def points(values: list[int]) -> str:
        if len(values) == 1:
            values = values * 2
        step = (width - 2 * pad) / max(len(values) - 1, 1)
        return " ".join(f"{pad + i * step:.1f},{height - pad - v / top * (height - 2 * pad):.1f}"
                        for i, v in enumerate(values))

    return {"width": width, "height": height, "pad": pad, "top": top, "weeks": weeks,
            "a": points(series["a"]), "b": points(series["b"]),
            "rows": [(week, series["a"][i], series["b"][i]) for i, week in enumerate(weeks)]}


def report_columns(report: Mapping[str, Any]) -> list[tuple[str, str]]:
    from pipeline.whatif import COLUMNS

    reviewed = any("reviewer_precision" in row for side in ("a", "b") for row in report[side]["by_detector"].values())
    return [(key, title) for key, title in COLUMNS if key != "reviewer_precision" or reviewed]


def cell(key: str, row: Mapping[str, Any]) -> str:
    value = row.get(key)
    if value is None:
        return "—"
    if key in ("precision", "recall", "reviewer_precision"):
        text = f"{value * 100:.1f} %"
        return f"{text} of {row['reviewed']}" if key == "reviewer_precision" and "reviewed" in row else text
    if key == "alerts_per_customer_month":
        return f"{value:.4f}"
    if isinstance(value, float):
        return f"{value:,.1f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


# --- the pages ---------------------------------------------------------------------------------


def _stored_version(store: Any, number: int) -> Thresholds | None:
    import tomllib

    from detectors.config import parse_thresholds

    for row in store.threshold_changes(limit=1000):
        if row["version"] == number:
            return parse_thresholds(tomllib.loads(row["content"]), f"version {number}")
    return None


def add_ops_pages(app: FastAPI, ctx: WebContext) -> None:
    ops = APIRouter(prefix="/ops", dependencies=[Depends(require_ops)])
    jobs = WhatIfJobs(run_whatif(ctx))
    app.state.ops_jobs = jobs
    save_lock = threading.Lock()  # one save at a time in this process: the version check and the write go together

    def thresholds_page(request: Request, status_code: int = 200, values: Mapping[str, str] | None = None,
                        field_errors: Mapping[str, str] | None = None, errors: list[str] | None = None,
                        reason: str = "") -> HTMLResponse:
        version = tuning.current(ctx.store)
        latest = ctx.store.threshold_changes(limit=1)
        return _render(ctx, request, "ops_thresholds.html", status_code=status_code, version=version,
                       latest=latest[0] if latest else None, sections=option_fields(version.thresholds),
                       values=values or {}, field_errors=field_errors or {}, errors=errors or [], reason=reason,
                       history=tuning.history(ctx.store, limit=100), prefix=FIELD_PREFIX, toml=toml_text)

    @ops.get("", include_in_schema=False)
    def ops_home() -> Response:
        return RedirectResponse("/ops/thresholds", status_code=303)

    @ops.get("/thresholds", response_class=HTMLResponse)
    def show_thresholds(request: Request) -> Response:
        return thresholds_page(request)

    @ops.post("/thresholds", dependencies=[Depends(check_csrf)])
    async def save_thresholds(request: Request, user: dict[str, Any] = Depends(require_ops)) -> Response:
        form = await request.form()
        return await run_in_threadpool(_save_thresholds, request, dict(form), user)

    def _save_thresholds(request: Request, form: dict[str, Any], user: dict[str, Any]) -> Response:
        reason = str(form.get("reason") or "").strip()[:MAX_REASON]
        submitted = {str(k)[len(FIELD_PREFIX):]: str(v) for k, v in form.items() if str(k).startswith(FIELD_PREFIX)}
        with save_lock:
            version = tuning.current(ctx.store)
            fields = [f for _, section in option_fields(version.thresholds) for f in section]
            values = submitted_changes(fields, form)
            _, field_errors, errors = validate(version.thresholds, values)
            if not reason:
                errors.append("A reason is required for every threshold change; it is kept in the history.")
            if str(form.get("base_version") or "0") != str(version.number or 0):
                errors.append(f"The thresholds were changed meanwhile (now version {version.number}); nothing was "
                              "saved. Check the values in force below and save again.")
                return thresholds_page(request, 409, errors=errors, reason=reason)
            if field_errors or errors:
                return thresholds_page(request, 400, values=submitted, field_errors=field_errors, errors=errors,
                                       reason=reason)
            if not values:
                _flash(request, "error", "Nothing to save: every value is the one in force.")
                return RedirectResponse("/ops/thresholds", status_code=303)
            try:
                number, changes = tuning.change_many(ctx.store, values, user["name"], reason, source="web")
            except ThresholdError as problem:  # validated above; a race with another process ends here
                return thresholds_page(request, 400, values=submitted, errors=[_message(problem)], reason=reason)
        log.info("thresholds version %s saved by %s: %s", number, user["name"],
                 ", ".join(f"{k}: {o!r} -> {n!r}" for k, o, n in changes))
        _flash(request, "ok", f"Saved version {number}: "
                              + "; ".join(f"{k}: {toml_text(o)} → {toml_text(n)}" for k, o, n in changes)
                              + ". Running workers apply it within seconds.")
        return RedirectResponse("/ops/thresholds", status_code=303)

    @ops.post("/whatif/draft", dependencies=[Depends(check_csrf)])
    async def whatif_draft(request: Request) -> Response:
        """The thresholds form's "try in a what-if first": the changed fields become B's change lines."""
        form = await request.form()
        version = await run_in_threadpool(tuning.current, ctx.store)
        fields = [f for _, section in option_fields(version.thresholds) for f in section]
        values = submitted_changes(fields, dict(form))
        request.session["whatif_draft"] = "\n".join(f"{k} = {v}" for k, v in values.items())[:MAX_CHANGES_TEXT]
        return RedirectResponse("/ops/whatif", status_code=303)

    def whatif_page(request: Request, status_code: int = 200, errors: list[str] | None = None,
                    form: Mapping[str, Any] | None = None) -> HTMLResponse:
        version = tuning.current(ctx.store)
        files = [{**item, "size_text": _size(item["size"])} for item in event_files(ctx.settings.data_dir)]
        form = dict(form or {})
        if not form and "whatif_draft" in request.session:
            form = {"b_kind": "edited", "b_changes": request.session.pop("whatif_draft")}
        return _render(ctx, request, "ops_whatif.html", status_code=status_code, version=version, files=files,
                       data_dir=str(ctx.settings.data_dir), versions=tuning.history(ctx.store, limit=100),
                       jobs=jobs.recent(), errors=errors or [], form=form)

    @ops.get("/whatif", response_class=HTMLResponse)
    def show_whatif(request: Request) -> Response:
        return whatif_page(request)

    @ops.post("/whatif", dependencies=[Depends(check_csrf)])
    async def start_whatif(request: Request, user: dict[str, Any] = Depends(require_ops)) -> Response:
        form = await request.form()
        return await run_in_threadpool(_start_whatif, request, dict(form), user)

    def _start_whatif(request: Request, form: dict[str, Any], user: dict[str, Any]) -> Response:
        shown = {k: str(v)[:MAX_CHANGES_TEXT] for k, v in form.items() if k != "csrf_token"}
        name = str(form.get("file") or "")
        path = resolve_event_file(ctx.settings.data_dir, name)
        if path is None:
            return whatif_page(request, 400, form=shown, errors=[
                "Choose one of the listed event files; only .jsonl files in the data directory can be replayed."])
        version = tuning.current(ctx.store)
        a = dataclasses.replace(version.thresholds, source=f"version {version.number} (in force)"
                                if version.number is not None else "built-in defaults (in force)")
        errors: list[str] = []
        if form.get("b_kind") == "version":
            try:
                number = int(str(form.get("b_version") or ""))
            except ValueError:
                number = -1
            stored = _stored_version(ctx.store, number)
            if stored is None:
                return whatif_page(request, 400, form=shown, errors=[f"There is no stored version {number}."])
            b_label = f"version {number}"
            changes = tuning.diff(version.thresholds, stored)
            b_values = {key: toml_text(new) for key, _, new in changes}
            b = stored
        else:
            values, errors = parse_change_lines(str(form.get("b_changes") or "")[:MAX_CHANGES_TEXT])
            updated, field_errors, cross = validate(version.thresholds, values)
            errors += [*field_errors.values(), *cross]
            if errors or updated is None:
                return whatif_page(request, 400, form=shown, errors=errors)
            changes = tuning.diff(version.thresholds, updated)
            b_values = {key: toml_text(new) for key, _, new in changes}
            b_label = "edited: " + ", ".join(f"{k} = {toml_text(n)}" for k, _, n in changes)
            b = updated
        if not changes:
            return whatif_page(request, 400, form=shown, errors=[
                "B is the same as the thresholds in force; change at least one value (or pick another version)."])
        job = WhatIfJob(id=uuid.uuid4().hex[:12], user=user["name"], file=name, path=path,
                        a_version=version.number, a=a, b=dataclasses.replace(b, source=b_label), b_label=b_label,
                        b_values=b_values, b_changes=changes, with_models=form.get("models") == "1",
                        created_at=ctx.clock.now())
        try:
            jobs.submit(job)
        except JobsBusy as problem:
            return whatif_page(request, 429, form=shown, errors=[str(problem)])
        log.info("what-if %s started by %s on %s: %s", job.id, user["name"], name, b_label)
        return RedirectResponse(f"/ops/whatif/jobs/{job.id}", status_code=303)

    def _job(job_id: str) -> WhatIfJob:
        job = jobs.get(job_id)
        if job is None:
            raise HTTPException(status_code=404, detail="There is no such what-if run (runs are kept in memory "
                                                        "until the web app restarts).")
        return job

    @ops.get("/whatif/jobs/{job_id}", response_class=HTMLResponse)
    def show_job(request: Request, job_id: str) -> Response:
        job = _job(job_id)
        report = job.report
        version = tuning.current(ctx.store)
        return _render(ctx, request, "ops_whatif_job.html", job=job, report=report,
                       columns=report_columns(report) if report else [], cell=cell,
                       chart=chart(report) if report else None, toml_text=toml_text,
                       stale=(version.number or 0) != (job.a_version or 0), version=version)

    @ops.get("/whatif/jobs/{job_id}/report.html")
    def download_report(job_id: str) -> Response:
        from pipeline.whatif import write_html

        job = _job(job_id)
        if job.report is None:
            raise HTTPException(status_code=404, detail="This what-if run has no report (yet).")
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "whatif.html"
            write_html(job.report, path)
            content = path.read_bytes()
        return Response(content, media_type="text/html; charset=utf-8",
                        headers={"Content-Disposition": f'attachment; filename="whatif-{job.id}.html"'})

    @ops.post("/whatif/jobs/{job_id}/apply", dependencies=[Depends(check_csrf)])
    async def apply_b(request: Request, job_id: str, user: dict[str, Any] = Depends(require_ops)) -> Response:
        form = await request.form()
        return await run_in_threadpool(_apply_b, request, job_id, str(form.get("reason") or ""), user)

    def _apply_b(request: Request, job_id: str, reason: str, user: dict[str, Any]) -> Response:
        job = _job(job_id)
        target = f"/ops/whatif/jobs/{job.id}"
        reason = reason.strip()[:MAX_REASON]
        if job.status != "done":
            _flash(request, "error", "B can be applied once the what-if run has finished.")
            return RedirectResponse(target, status_code=303)
        if not reason:
            _flash(request, "error", "A reason is required to apply B; nothing was saved.")
            return RedirectResponse(target, status_code=303)
        with save_lock:
            version = tuning.current(ctx.store)
            if (version.number or 0) != (job.a_version or 0):
                _flash(request, "error", f"The thresholds changed since this run (version {job.a_version or '—'} "
                                         f"then, {version.number} now); nothing was saved. Run the what-if again.")
                return RedirectResponse(target, status_code=303)
            try:
                number, changes = tuning.change_many(ctx.store, job.b_values, user["name"], reason, source="web")
            except ThresholdError as problem:
                _flash(request, "error", f"Not saved: {_message(problem)}")
                return RedirectResponse(target, status_code=303)
        job.applied_version = number
        log.info("what-if %s: B saved as thresholds version %s by %s", job.id, number, user["name"])
        _flash(request, "ok", f"B saved as version {number} ({len(changes)} change(s)). Running workers apply it "
                              "within seconds.")
        return RedirectResponse("/ops/thresholds", status_code=303)

    app.include_router(ops)

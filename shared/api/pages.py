"""A page per turn and per conversation, for people, behind the same API keys.

``/turns/{id}``: the waterfall of the turn's stages on its own time axis (the orchestrator
and the researcher side by side in one bracket, the merge's start marked across them, then
the merge and the agent; the stage the user waited on outlined), the routing reason, the
knowledge level with the top hits, the memory the agent wrote, and the reply.
``/conversations/{id}``: its turns, memory and qualification status, each turn linked.

A browser cannot add an ``Authorization`` header to a link, so a page without a key shows a
form; the key it takes is checked like a bearer key and kept in an HttpOnly, SameSite=Strict
cookie for the pages (``/v1`` routes still want the header). Every value is HTML-escaped and
the pages carry no script (``Content-Security-Policy: default-src 'none'``).
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, quote

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from shared.api.auth import KEY_COOKIE, authenticate, page_caller
from shared.config import get_settings
from shared.db.api_keys import Caller
from shared.db.conversations import ConversationView, conversation_of
from shared.db.session import session_scope, transient_database_failures
from shared.db.spans import spans_of
from shared.db.turns import load_turn
from shared.errors import ChordlineError, TurnNotFound, Unauthenticated
from shared.schemas import ResearchHit
from shared.trace import HEADER_STAGES, StageBar, TurnTrace, trace_of
from shared.turn.researcher import stored_research
from shared.turn_summary import TurnSummary, summarise_turn
from shared.validation import check_slug, check_turn_id

TOP_HITS = 3
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
    "form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
STAGE_COLOURS = {
    "orchestrator": "#2a9d8f",
    "researcher": "#9b5de5",
    "merge": "#6c757d",
    "agent": "#2b8a3e",
}

STYLE = """
body{
  font:15px/1.45 system-ui,sans-serif;
  margin:2rem auto;
  max-width:70rem;
  color:#1d2430;
  padding:0 1rem;
}
h1{font-size:1.3rem}
h2{font-size:1.05rem;margin-top:1.8rem}
code,pre{font:13px ui-monospace,monospace}
pre{background:#f4f5f7;padding:.8rem;overflow:auto;white-space:pre-wrap}
.facts{display:grid;grid-template-columns:max-content 1fr;gap:.2rem 1rem}
.facts dt{color:#5c6470}
.waterfall{border:1px solid #d8dce2;padding:.8rem;border-radius:6px}
.row{display:grid;grid-template-columns:11rem 1fr 6rem;align-items:center;height:1.9rem}
.track{position:relative;height:1.1rem;background:#f4f5f7}
.bar,.wait{position:absolute;top:0;height:100%}
.wait{background:repeating-linear-gradient(90deg,#c9ced6 0 3px,transparent 3px 6px)}
.bar{border-radius:2px;min-width:2px}
.waited .bar{outline:2px solid #e09f00;outline-offset:1px}
.parallel{
  border-left:3px solid #e09f00;
  margin:.2rem 0 .2rem -.5rem;
  padding-left:.4rem;
  position:relative;
}
.parallel .note{font-size:12px;color:#8a6d00}
.merge-mark{position:absolute;top:0;bottom:0;border-left:2px dashed #495057}
.ms{text-align:right;color:#5c6470;font-variant-numeric:tabular-nums}
.axis{display:grid;grid-template-columns:11rem 1fr 6rem;color:#5c6470;font-size:12px}
.axis span:nth-child(2){display:flex;justify-content:space-between}
table{border-collapse:collapse;width:100%}
td,th{border-bottom:1px solid #e3e6ea;padding:.35rem .5rem;text-align:left;vertical-align:top}
.level{font-weight:600}
.ACCURATE{color:#2b8a3e}
.PARTIAL{color:#b06d00}
.MISSING{color:#c92a2a}
form input[type=password]{width:32rem;max-width:100%;padding:.4rem}
"""


def esc(value: object) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def html_page(title: str, body: str, *, status: int = 200) -> HTMLResponse:
    document = (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{STYLE}</style></head><body>{body}</body></html>"
    )
    return HTMLResponse(document, status_code=status, headers=SECURITY_HEADERS)


# --------------------------------------------------------------------------- the turn page


@dataclass(frozen=True)
class TurnPage:
    summary: TurnSummary
    trace: TurnTrace
    hits: list[ResearchHit]


def turn_page_data(caller: Caller, turn_id: str) -> TurnPage:
    turn_id = check_turn_id(turn_id, field="turn_id")
    with transient_database_failures(), session_scope() as session:
        turn = load_turn(session, turn_id)
        if turn.tenant_id != caller.tenant_id:
            raise TurnNotFound(f"turn {turn_id} does not exist")
        research = stored_research(turn)
        return TurnPage(
            summary=summarise_turn(session, turn_id),
            trace=trace_of(turn, spans_of(session, turn_id)),
            hits=list(research.hits[:TOP_HITS]) if research else [],
        )


def _percent(ms: float, total: float) -> float:
    return round(max(0.0, min(100.0, ms / total * 100)), 3)


def _bar_row(bar: StageBar, *, total: float, waited_on: str | None) -> str:
    wait_from = bar.wait_start_ms if bar.wait_start_ms is not None else bar.start_ms
    left = _percent(wait_from, total)
    wait_width = round(max(0.0, _percent(bar.start_ms, total) - left), 3)
    run_left = _percent(bar.start_ms, total)
    run_width = round(max(0.2, _percent(bar.end_ms, total) - run_left), 3)
    colour = STAGE_COLOURS.get(bar.stage, "#495057")
    waited = " waited" if bar.stage == waited_on else ""
    note = " (waited on)" if waited else ""
    attempt = f", attempt {bar.attempt}" if bar.attempt > 1 else ""
    return (
        f'<div class="row{waited}" data-stage="{esc(bar.stage)}" '
        f'data-start-ms="{bar.start_ms:.1f}" data-end-ms="{bar.end_ms:.1f}">'
        f"<span>{esc(bar.stage)}{note}</span><div class=track>"
        f'<div class=wait style="left:{left}%;width:{wait_width}%"></div>'
        f'<div class=bar title="{esc(bar.queue)} on {esc(bar.worker)}{attempt}" '
        f'style="left:{run_left}%;width:{run_width}%;background:{colour}"></div></div>'
        f"<span class=ms>{bar.duration_ms:,.0f} ms</span></div>"
    )


def waterfall(trace: TurnTrace) -> str:
    if not trace.bars:
        return "<p>No stage has finished yet.</p>"
    total = max([trace.latency_ms or 0.0, *(b.end_ms for b in trace.bars), 1.0])
    waited_on = trace.path.waited_on
    merge = next((b for b in trace.bars if b.stage == "merge"), None)
    headers = [b for b in trace.bars if b.stage in HEADER_STAGES]
    rest = [b for b in trace.bars if b.stage not in HEADER_STAGES]
    ticks = "".join(f"<span>{total * i / 4:,.0f}</span>" for i in range(5))
    rows = [f"<div class=axis><span></span><span>{ticks}</span><span>ms</span></div>"]
    if headers:
        mark = ""
        if merge is not None:
            at = _percent(merge.start_ms, total)
            mark = (
                f'<div class=merge-mark title="the merge starts" '
                f'style="left:calc(11rem + (100% - 17rem) * {at} / 100)"></div>'
            )
        together = "side by side" if trace.topology == "parallel" else "one after the other"
        rows.append(
            f'<div class=parallel data-topology="{esc(trace.topology)}">'
            f"<div class=note>orchestrator and researcher, {together}</div>"
            + "".join(_bar_row(b, total=total, waited_on=waited_on) for b in headers)
            + mark
            + "</div>"
        )
    rows += [_bar_row(b, total=total, waited_on=waited_on) for b in rest]
    legend = (
        "<p class=ms style='text-align:left'>striped: waiting in its queue; solid: running; "
        "dashed line: the merge starts; outlined: the stage the user waited on</p>"
    )
    return f"<div class=waterfall id=waterfall>{''.join(rows)}</div>{legend}"


def _hits(page: TurnPage) -> str:
    level = page.summary.kb_information_level or "-"
    heading = (
        f'<p>Knowledge level: <span class="level {esc(level)}" id=level>{esc(level)}</span></p>'
    )
    if not page.hits:
        return heading + "<p>No passages.</p>"
    rows = "".join(
        f"<tr><td>{hit.score:.3f}</td><td>{esc(hit.title)}</td><td>{esc(hit.text[:300])}</td></tr>"
        for hit in page.hits
    )
    return (
        heading + "<table id=hits><tr><th>score</th><th>document</th><th>passage</th></tr>"
        f"{rows}</table>"
    )


def render_turn(page: TurnPage) -> HTMLResponse:
    s = page.summary
    conversation = f"/conversations/{quote(s.conversation, safe='')}"
    facts = {
        "status": s.status + (f" ({s.failure_reason})" if s.failure_reason else ""),
        "agent": s.agent or "-",
        "topology": s.topology,
        "latency": "-" if page.trace.latency_ms is None else f"{page.trace.latency_ms:,.0f} ms",
        "waited on": page.trace.path.waited_on or "-",
        "accepted": s.accepted_at,
    }
    dl = "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in facts.items())
    memory = json.dumps(s.memory_written, indent=2, ensure_ascii=False) if s.memory_written else "-"
    body = (
        f"<h1>Turn {s.seq} of conversation "
        f'<a href="{esc(conversation)}">{esc(s.conversation)}</a></h1>'
        f"<p><code>{esc(s.id)}</code></p><dl class=facts>{dl}</dl>"
        f"<h2>Stages</h2>{waterfall(page.trace)}"
        f"<h2>Routing</h2><p id=routing>{esc(s.routing_reason or '-')}</p>"
        f"<h2>Knowledge base</h2>{_hits(page)}"
        f"<h2>Message</h2><pre>{esc(s.message)}</pre>"
        f"<h2>Reply</h2><pre id=reply>{esc(s.reply or '-')}</pre>"
        f"<h2>Memory written</h2><pre id=memory>{esc(memory)}</pre>"
    )
    return html_page(f"turn {s.id}", body)


# --------------------------------------------------------------------------- the conversation


def render_conversation(view: ConversationView) -> HTMLResponse:
    rows = "".join(
        f'<tr><td>{t.seq}</td><td><a href="/turns/{esc(t.id)}">{esc(t.message[:120])}</a></td>'
        f"<td>{esc(t.agent or '-')}</td>"
        f'<td class="level {esc(t.kb_information_level or "")}">'
        f"{esc(t.kb_information_level or '-')}</td><td>{esc(t.status)}</td></tr>"
        for t in view.turns
    )
    memory = json.dumps(view.memory, indent=2, ensure_ascii=False) if view.memory else "-"
    body = (
        f"<h1>Conversation {esc(view.id)}</h1><dl class=facts>"
        f"<dt>qualification</dt><dd id=qualification>{esc(view.qualification_status)}</dd>"
        f"<dt>turns</dt><dd>{len(view.turns)}</dd><dt>updated</dt><dd>{esc(view.updated_at)}</dd></dl>"
        "<h2>Turns</h2><table id=turns><tr><th>#</th><th>message</th><th>agent</th>"
        f"<th>knowledge</th><th>status</th></tr>{rows}</table>"
        f"<h2>Memory</h2><pre id=memory>{esc(memory)}</pre>"
    )
    return html_page(f"conversation {view.id}", body)


def conversation_page_data(caller: Caller, conversation: str) -> ConversationView:
    max_chars = get_settings().turn.max_id_chars
    conversation = check_slug("conversation_id", conversation, max_chars=max_chars)
    with transient_database_failures(), session_scope() as session:
        return conversation_of(session, tenant_id=caller.tenant_id, conversation=conversation)


# --------------------------------------------------------------------------- keys and errors


def safe_next(target: str | None) -> str:
    """Where to go after the login: a path on this service, never another site."""
    if target and target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/"


def login_form(next_path: str, *, problem: str | None = None, status: int = 401) -> HTMLResponse:
    said = f'<p id=problem style="color:#c92a2a">{esc(problem)}</p>' if problem else ""
    body = (
        "<h1>chordline</h1><p>This page belongs to a tenant: enter one of its API keys "
        "(<code>chordline key create --tenant TENANT</code>).</p>"
        f'{said}<form method=post action="/login">'
        f'<input type=hidden name=next value="{esc(next_path)}">'
        "<p><input type=password name=key id=key autocomplete=off "
        'placeholder="chl_..." required></p>'
        "<p><button type=submit id=open>Open</button></p></form>"
    )
    return html_page("chordline: API key", body, status=status)


def error_page(exc: ChordlineError, status: int) -> HTMLResponse:
    return html_page("chordline", f"<h1>{status}</h1><p id=problem>{esc(exc)}</p>", status=status)


def install_pages(app: FastAPI) -> None:
    def guarded(request: Request, render: Any) -> Response:
        try:
            caller = page_caller(request)
            if caller is None:
                return login_form(request.url.path)
            return render(caller)  # type: ignore[no-any-return]
        except Unauthenticated as exc:
            return login_form(request.url.path, problem=str(exc))
        except TurnNotFound as exc:
            return error_page(exc, 404)
        except ChordlineError as exc:
            from shared.api.problems import status_of

            return error_page(exc, status_of(exc))

    @app.get("/turns/{turn_id}", include_in_schema=False)
    def turn_page(request: Request, turn_id: str) -> Response:
        return guarded(request, lambda caller: render_turn(turn_page_data(caller, turn_id)))

    @app.get("/conversations/{conversation_id}", include_in_schema=False)
    def conversation_page(request: Request, conversation_id: str) -> Response:
        return guarded(
            request,
            lambda caller: render_conversation(conversation_page_data(caller, conversation_id)),
        )

    @app.get("/login", include_in_schema=False)
    def login_page(next: str = "/") -> Response:
        return login_form(safe_next(next), status=200)

    @app.post("/login", include_in_schema=False)
    async def login(request: Request) -> Response:
        form = parse_qs((await request.body()).decode("utf-8", "replace"))
        key = (form.get("key") or [""])[0].strip()
        target = safe_next((form.get("next") or ["/"])[0])
        try:
            from starlette.concurrency import run_in_threadpool

            await run_in_threadpool(authenticate, key)
        except Unauthenticated as exc:
            return login_form(target, problem=str(exc))
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(
            KEY_COOKIE,
            key,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
            path="/",
        )
        return response

    @app.post("/logout", include_in_schema=False)
    def logout() -> Response:
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(KEY_COOKIE, path="/")
        return response

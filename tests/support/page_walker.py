"""Walk one dashboard page in a real browser: use every widget once and report everything that breaks.

Given a Playwright page already on a dashboard page, `walk()` finds the interactive widgets in Streamlit's DOM
(by `data-testid`), uses each once (a non-default option where there is one), waits for the script run to
settle, and after every interaction looks for what a user must never see: an exception box, an error that the
page's plan does not expect, Streamlit's help output of an object, a "complete" status with an error inside, a
job shown as completed although every item failed, a job started but another one shown, and texts the plan
forbids. Widgets that appear after an interaction are walked too, within a bound on interactions and time.
Finally the page is reloaded and what the reload lost (job panels, input values) is recorded.

A full-page screenshot is saved after each group of interactions (a page section), after every finding and
after the reload, under `test-artifacts/pages/<page>/`, with a `walk.md` report beside them.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import Locator, Page, WebSocket

WIDGET_TESTIDS = [
    "stButton",
    "stFormSubmitButton",
    "stDownloadButton",
    "stSelectbox",
    "stMultiSelect",
    "stRadio",
    "stCheckbox",
    "stToggle",
    "stSlider",
    "stNumberInput",
    "stTextInput",
    "stTextArea",
    "stTabs",
    "stExpander",
    "stFileUploader",
    "stDataFrame",
    "stPlotlyChart",
]
VALUE_KINDS = {  # widgets whose value a reload should keep
    "stSelectbox",
    "stMultiSelect",
    "stRadio",
    "stCheckbox",
    "stToggle",
    "stSlider",
    "stNumberInput",
    "stTextInput",
    "stTextArea",
}
RAW_OBJECT_PATTERNS = [  # what Streamlit's magic / st.write prints for an object it cannot render
    r"Help on (class|function|method|module|object|built-in)",
    r"^\s*class \w+(\(|:)",
    r"<[\w.]+ object at 0x[0-9a-f]+>",
    r"DeltaGenerator\(",
]
NO_CHANGE = {"already open", "only one option", "its only value (both steps off)", "no fitting file in the plan"}
LATER = {  # widgets that change what else is shown are used after the widgets they would hide
    "stSelectbox": 1,
    "stMultiSelect": 1,
    "stRadio": 2,
    "stTabs": 3,
}

# One pass over the page in document order: every heading (for grouping) and every widget, each tagged with a
# stable `data-walker` id so Python can find the same node again.
DISCOVER_JS = """
([kinds, withSidebar, hiddenToo]) => {
  const roots = [document.querySelector('[data-testid="stMain"]')];
  if (withSidebar) roots.push(document.querySelector('[data-testid="stSidebarUserContent"]'));
  const txt = e => {  // visible text without material-icon ligatures ("search Analyse" -> "Analyse")
    if (!e) return '';
    const copy = e.cloneNode(true);
    copy.querySelectorAll('[data-testid="stIconMaterial"], [data-testid^="stExpanderIcon"]').forEach(i => i.remove());
    return (copy.innerText || copy.textContent || '').trim().replace(/\\s+/g, ' ');
  };
  const visible = e => hiddenToo || (e.checkVisibility({checkVisibilityCSS: true}) &&
                                     e.getBoundingClientRect().width > 0);
  window.__walkerSeq = window.__walkerSeq || 0;
  const tag = e => {
    if (!e.dataset.walker) e.dataset.walker = String(++window.__walkerSeq);
    return e.dataset.walker;
  };
  const sel = ['h1', 'h2', 'h3'].concat(kinds.map(k => `[data-testid="${k}"]`)).join(',');
  const out = [];
  for (const root of roots) {
    if (!root) continue;
    let section = root.matches('[data-testid="stSidebarUserContent"]') ? 'sidebar' : 'top';
    for (const el of root.querySelectorAll(sel)) {
      if (/^H[123]$/.test(el.tagName)) { if (visible(el)) section = txt(el).slice(0, 60); continue; }
      if (!visible(el)) continue;
      const kind = el.dataset.testid;
      const box = el.closest('.stElementContainer');
      const keyMatch = box ? /(?:^| )st-key-(\\S+)/.exec(box.className) : null;
      const key = keyMatch ? keyMatch[1] : null;
      const inForm = !!el.closest('[data-testid="stForm"]');
      const label = txt(el.querySelector('[data-testid="stWidgetLabel"]'));
      const base = {kind, key, section, inForm, disabled: false, options: [], value: null};
      if (kind === 'stTabs') {
        el.querySelectorAll('[role="tab"]').forEach(t => {
          if (!visible(t)) return;
          out.push({...base, uid: tag(t), label: txt(t), value: t.getAttribute('aria-selected') === 'true',
                    disabled: t.disabled});
        });
        continue;
      }
      if (kind === 'stExpander') {
        const details = el.querySelector('details');
        const summary = el.querySelector('summary');
        out.push({...base, uid: tag(el), label: txt(summary), value: !!(details && details.open)});
        continue;
      }
      const item = {...base, uid: tag(el), label};
      if (['stButton', 'stFormSubmitButton', 'stDownloadButton'].includes(kind)) {
        const b = el.querySelector('button');
        item.label = txt(b); item.disabled = !b || b.disabled;
      } else if (kind === 'stRadio') {
        const labels = Array.from(el.querySelectorAll('[role="radiogroup"] label'));
        item.options = labels.map(l => txt(l));
        const checked = labels.find(l => { const i = l.querySelector('input'); return i && i.checked; });
        item.value = checked ? txt(checked) : null;
        item.disabled = labels.every(l => { const i = l.querySelector('input'); return i && i.disabled; });
      } else if (kind === 'stSelectbox' || kind === 'stMultiSelect') {
        const input = el.querySelector('input[role="combobox"]');
        item.disabled = !input || input.disabled;
        if (!item.label && input) item.label = input.getAttribute('aria-label') || '';
        item.value = kind === 'stMultiSelect' ? Array.from(el.querySelectorAll('[data-tag]')).map(t =>
          t.getAttribute('aria-label')) : (input && input.value ? input.value : null);
      } else if (kind === 'stCheckbox' || kind === 'stToggle') {
        const input = el.querySelector('input');
        item.label = item.label || txt(el);
        item.value = !!(input && input.checked); item.disabled = !input || input.disabled;
      } else if (kind === 'stSlider') {
        const thumb = el.querySelector('input[type="range"]');
        item.value = thumb ? thumb.value : null;
        item.disabled = !thumb || thumb.disabled;
      } else if (kind === 'stNumberInput' || kind === 'stTextInput' || kind === 'stTextArea') {
        const input = el.querySelector('input, textarea');
        if (!item.label && input) item.label = input.getAttribute('aria-label') || '';
        item.value = input ? input.value : null; item.disabled = !input || input.disabled;
      } else if (kind === 'stFileUploader') {
        const input = el.querySelector('input[type="file"]');
        item.disabled = !input || input.disabled;
        item.options = input ? [input.getAttribute('accept') || ''] : [];
        item.value = Array.from(el.querySelectorAll('[data-testid="stFileChipName"]')).map(f => txt(f));
      } else if (kind === 'stDataFrame') {
        const buttons = box ? Array.from(box.querySelectorAll('button')) : [];
        item.options = buttons.map(b => b.getAttribute('aria-label') || txt(b));
        item.label = item.label || key || 'table';
      } else if (kind === 'stPlotlyChart') {
        item.label = txt(el.querySelector('.gtitle')) || key || 'chart';
        const active = el.querySelector('.modebar-btn.active');
        item.value = active ? (active.getAttribute('data-title') || '') : '';
      }
      out.push(item);
    }
  }
  return out;
}
"""

SETTLE_JS = """
() => {
  const main = document.querySelector('[data-testid="stMain"]');
  const running = !!document.querySelector('[data-testid="stStatusWidgetRunningIcon"]');
  const stale = document.querySelectorAll('[data-stale="true"]').length;
  const skeleton = main ? main.querySelectorAll('[data-testid="stSkeleton"]').length : 0;
  let h = 0;
  const all = '[data-testid="stMain"] [data-testid], [data-testid="stSidebar"] [data-testid]';
  for (const e of document.querySelectorAll(all)) {
    const s = e.dataset.testid;
    for (let i = 0; i < s.length; i++) h = (h * 31 + s.charCodeAt(i)) | 0;
  }
  return {busy: running || stale > 0 || skeleton > 0 || !main, sig: h};
}
"""

CONTENT_HEIGHT_JS = """
() => {
  const main = document.querySelector('[data-testid="stMain"]');
  const bottoms = ['stMainBlockContainer', 'stSidebarUserContent'].map(t => {
    const block = document.querySelector(`[data-testid="${t}"] [data-testid="stVerticalBlock"]`);
    return block ? block.getBoundingClientRect().bottom + (main ? main.scrollTop : 0) : 0;
  });
  return Math.max(...bottoms);
}
"""

CHECK_JS = """
(rawPatterns) => {
  const txt = e => (e ? (e.innerText || e.textContent || '') : '').trim();
  const out = [];
  document.querySelectorAll('[data-testid="stException"]').forEach(e =>
    out.push({kind: 'exception', text: txt(e).slice(0, 600)}));
  document.querySelectorAll('[data-testid="stAlertContentError"]').forEach(e => {
    if (!e.closest('[data-testid="stException"]')) out.push({kind: 'error', text: txt(e).slice(0, 600)});
  });
  document.querySelectorAll('[data-testid="stHelp"]').forEach(e =>
    out.push({kind: 'raw-help', text: `st.help output ${Math.round(e.getBoundingClientRect().height)} px tall: ` +
              txt(e).slice(0, 200)}));
  document.querySelectorAll('[data-testid="stFileChip"][aria-invalid="true"]').forEach(e =>
    out.push({kind: 'upload-refused', text: txt(e).slice(0, 300)}));
  const regexes = rawPatterns.map(p => new RegExp(p, 'm'));
  document.querySelectorAll('[data-testid="stMarkdownContainer"], [data-testid="stText"], [data-testid="stCode"]')
    .forEach(e => { const t = txt(e); if (regexes.some(r => r.test(t)))
      out.push({kind: 'raw-object', text: t.slice(0, 300)}); });
  document.querySelectorAll('[data-testid="stExpanderIconCheck"]').forEach(icon => {
    const box = icon.closest('[data-testid="stExpander"]');
    const err = box && box.querySelector('[data-testid="stAlertContentError"]');
    if (err) out.push({kind: 'success-with-error', text: `"${txt(box.querySelector('summary'))}" shows a green ` +
                       `check with an error inside: ${txt(err).slice(0, 300)}`});
  });
  const panels = [];
  document.querySelectorAll('[data-testid="stMarkdownContainer"]').forEach(md => {
    const m = /^Job (\\d+) · /.exec(txt(md));
    if (!m) return;
    const code = md.querySelector('code');
    let block = md.closest('[data-testid="stVerticalBlock"]');
    const metrics = {};
    while (block && !block.querySelector('[data-testid="stMetric"]')) block = block.parentElement &&
      block.parentElement.closest('[data-testid="stVerticalBlock"]');
    const part = (mt, id) => txt(mt.querySelector(`[data-testid="${id}"]`));
    if (block) block.querySelectorAll('[data-testid="stMetric"]').forEach(mt =>
      metrics[part(mt, 'stMetricLabel')] = part(mt, 'stMetricValue'));
    panels.push({id: Number(m[1]), state: code ? txt(code) : '', title: txt(md), metrics});
  });
  const toasts = Array.from(document.querySelectorAll('[data-testid="stToast"]')).map(t => txt(t));
  const body = txt(document.querySelector('[data-testid="stApp"]'));
  return {alerts: out, panels, toasts, body};
}
"""


@dataclass
class PagePlan:
    """What a walk of one page needs to know: inputs that must be meaningful, expected errors, skips."""

    name: str  # folder name for artifacts, e.g. "compare"
    path: str  # URL path below the dashboard root ("" for Home)
    heading: str  # the page's title (h1), to know it has loaded
    expected_errors: dict[str, str] = field(default_factory=dict)  # regex on the error text -> why expected
    skip: dict[str, str] = field(default_factory=dict)  # regex on a widget's label -> why it is not used
    text: dict[str, str | list[str] | None] = field(default_factory=dict)  # label regex -> value(s); None: keep
    files: dict[str, Path] = field(default_factory=dict)  # uploader label regex, or ".ext", -> file to upload
    choices: dict[str, str] = field(default_factory=dict)  # label regex -> option to choose
    limits: dict[str, float] = field(default_factory=dict)  # label regex -> seconds its click may keep the page busy
    order: dict[str, int] = field(default_factory=dict)  # label regex -> rank (-1: before all, 9: after all)
    forbidden_text: dict[str, str] = field(default_factory=dict)  # regex on the page's text -> why wrong
    sidebar: bool = False  # walk the sidebar's widgets too
    max_interactions: int = 60
    time_budget_s: float = 150.0
    click_timeout_s: float = 20.0  # a click that keeps the page busy longer is a finding (see `limits`)
    settle_max_s: float = 90.0  # how long the walk waits for a busy page before it opens a fresh session
    job_wait_s: float = 45.0  # how long to wait for a job started by the walk


@dataclass
class Finding:
    step: int
    action: str
    kind: str
    detail: str
    screenshot: str = ""


@dataclass
class Step:
    n: int
    action: str
    section: str
    seconds: float
    note: str = ""
    screenshot: str = ""


@dataclass
class WalkReport:
    page: str
    steps: list[Step] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    expected_seen: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    untouched: dict[str, str] = field(default_factory=dict)  # ident -> why (disabled, hidden again, ...)
    reload_losses: list[str] = field(default_factory=list)
    reload_notes: list[str] = field(default_factory=list)  # tabs and expanders back to their defaults
    seconds: float = 0.0
    timing: dict[str, float] = field(default_factory=dict)  # where the seconds went
    screenshots: list[str] = field(default_factory=list)

    def describe(self) -> str:
        lines = [f"page {self.page}: {len(self.steps)} interactions in {self.seconds:.0f}s ({self.timing})"]
        lines += [f"  FINDING [{f.kind}] after step {f.step} ({f.action}): {f.detail} -> {f.screenshot}"
                  for f in self.findings]  # fmt: skip
        lines += [f"  lost on reload: {loss}" for loss in self.reload_losses]
        lines += [f"  skipped {k}: {v}" for k, v in self.skipped.items()]
        lines += [f"  not used {k}: {v}" for k, v in self.untouched.items()]
        return "\n".join(lines)

    def markdown(self) -> str:
        out = [f"# Walk of {self.page}", "", f"{len(self.steps)} interactions, {self.seconds:.1f} s: {self.timing}", ""]
        out += ["## Findings", ""] + [
            f"- **{f.kind}** after step {f.step} ({f.action}): {f.detail} (`{f.screenshot}`)" for f in self.findings
        ] + ["", "## Lost on reload", ""] + [f"- {x}" for x in self.reload_losses]  # fmt: skip
        out += ["", "## Reset on reload (informational)", ""] + [f"- {x}" for x in self.reload_notes]
        out += ["", "## Steps", ""] + [
            f"{s.n}. [{s.section}] {s.action} ({s.seconds:.1f} s){' - ' + s.note if s.note else ''}"
            + (f" `{s.screenshot}`" if s.screenshot else "")
            for s in self.steps
        ]
        out += ["", "## Expected errors seen", ""] + [f"- {x}" for x in self.expected_seen]
        out += ["", "## Skipped", ""] + [f"- {k}: {v}" for k, v in self.skipped.items()]
        out += ["", "## Seen but not used", ""] + [f"- {k}: {v}" for k, v in self.untouched.items()]
        return "\n".join(out) + "\n"


def _matches(patterns: dict[str, Any], text: str) -> str | None:
    """The first pattern (a regex, searched case-insensitively) that matches `text`."""
    return next((p for p in patterns if re.search(p, text, re.IGNORECASE)), None)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40] or "x"


class RunMonitor:
    """Whether the page's script is running, from the session's own websocket messages (Streamlit's running
    indicator only shows after 500 ms and not at all in some layouts, so the DOM cannot tell)."""

    def __init__(self, page: Page) -> None:
        self.running = False
        self.runs = 0  # script runs seen to start (whole page or fragment)
        self.last_message = time.monotonic()
        page.on("websocket", self._socket)

    def _socket(self, socket: WebSocket) -> None:
        socket.on("framereceived", self._frame)

    def _frame(self, payload: str | bytes) -> None:
        from google.protobuf.message import DecodeError
        from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

        if isinstance(payload, str):
            return
        try:
            msg = ForwardMsg.FromString(payload)
        except DecodeError:
            return
        kind = msg.WhichOneof("type")
        if kind == "new_session":
            self.running = True
            self.runs += 1
        elif kind == "session_status_changed":
            self.runs += msg.session_status_changed.script_is_running and not self.running
            self.running = msg.session_status_changed.script_is_running
        elif kind == "script_finished":
            self.running = False
        self.last_message = time.monotonic()


_MONITORS: dict[int, RunMonitor] = {}  # id(page) -> its monitor (pages live as long as the walk)


def monitor(page: Page) -> RunMonitor:
    """The page's run monitor, attached now when it has none (it sees sockets opened after this)."""
    if id(page) not in _MONITORS:
        _MONITORS[id(page)] = RunMonitor(page)
    return _MONITORS[id(page)]


def settle(page: Page, timeout: float = 60.0, quiet: float = 0.25, grace: float = 0.45) -> bool:
    """Wait until the script run is over: the session says no script runs, no message came and the page's
    structure did not change for `quiet` seconds, and nothing is stale or loading. When no run starts within
    `grace` seconds the action needed none. False on timeout."""
    runs = monitor(page)
    start, runs_before = time.monotonic(), runs.runs
    deadline = start + timeout
    last: int | None = None
    stable_since = start
    while time.monotonic() < deadline:
        try:
            state = page.evaluate(SETTLE_JS)
        except PlaywrightError:  # navigation in progress
            state = {"busy": True, "sig": None}
        now = time.monotonic()
        if runs.running or state["busy"] or state["sig"] != last:
            last = None if state["busy"] else state["sig"]
            stable_since = now
        elif min(now - stable_since, now - runs.last_message) >= quiet:
            if runs.runs > runs_before or now - start >= grace:
                return True
        page.wait_for_timeout(50)
    return False


def open_page(page: Page, base_url: str, plan: PagePlan, timeout: float = 90.0) -> None:
    """Go to the plan's page and wait for its title and a finished script run."""
    monitor(page)
    page.goto(f"{base_url}/{plan.path}", wait_until="domcontentloaded")
    page.get_by_role("heading", name=plan.heading, exact=True, level=1).wait_for(timeout=timeout * 1000)
    settle(page, timeout)


class Walker:
    """One walk of one page; use `walk()`."""

    def __init__(self, page: Page, plan: PagePlan, artifacts: Path) -> None:
        self.page = page
        self.plan = plan
        self.folder = artifacts / plan.name
        self.folder.mkdir(parents=True, exist_ok=True)
        for old in self.folder.glob("*.png"):
            old.unlink()
        self.report = WalkReport(page=plan.name)
        self.touched: dict[str, int] = {}
        self.gone_since_touch: set[str] = set()
        self.seen: dict[str, dict[str, Any]] = {}
        self.enabled_once: set[str] = set()
        self.budget_hit = False
        self.text_uses: dict[str, int] = {}
        self.reported: set[tuple[str, str]] = set()
        self.shots = 0
        self.section = ""
        self.toast_jobs: set[int] = set()
        self.jobs_seen: set[int] = set()  # every job panel the walk saw, and every job it started
        self.unsent: set[str] = set()  # form widgets changed since the form was last submitted

    @contextlib.contextmanager
    def timed(self, bucket: str) -> Iterator[None]:
        t0 = time.monotonic()
        try:
            yield
        finally:
            spent = self.report.timing.get(bucket, 0.0) + time.monotonic() - t0
            self.report.timing[bucket] = round(spent, 1)

    # --- discovery ------------------------------------------------------------------------------------

    def discover(self, hidden_too: bool = False) -> list[dict[str, Any]]:
        """The widgets on screen in document order (with `hidden_too`, also those in closed tabs and expanders),
        each with a walk identity: its key, else its kind and label, numbered when repeated."""
        found: list[dict[str, Any]] = self.page.evaluate(DISCOVER_JS, [WIDGET_TESTIDS, self.plan.sidebar, hidden_too])
        counts: dict[str, int] = {}
        for w in found:  # numbers in keys and labels vary (job ids, counts, list positions): not part of identity
            name = w["key"] or w["label"] or "?"
            if w["kind"] in ("stButton", "stFormSubmitButton", "stDownloadButton") and w["key"]:
                name = f"{name}:{w['label']}"  # a button whose label changes does something else now
            listed = bool(w["key"] and re.search(r"\d", w["key"]))  # one of a list (job panels, recipe steps)
            name = re.sub(r"\d+", "#", name)
            base = f"{w['kind']}:{name}" if w["kind"] not in ("stTabs",) else f"tab:{w['label']}"
            counts[base] = counts.get(base, 0) + 1
            # widgets of one list share an identity: the walk uses one of them
            w["ident"] = base if counts[base] == 1 or listed else f"{base}#{counts[base]}"
        return found

    def _describe(self, w: dict[str, Any]) -> str:
        kind = {"stTabs": "tab"}.get(w["kind"], w["kind"].removeprefix("st").lower())
        key = f" ({w['key']})" if w["key"] and w["label"] else ""
        return f"{kind} '{w['label'] or w['key'] or '?'}'{key}"

    # --- checks ---------------------------------------------------------------------------------------

    def screenshot(self, name: str) -> str:
        """A full-page PNG: the viewport grows to the content's height first (the main area scrolls)."""
        with self.timed("screenshots"):
            height = self.page.evaluate(CONTENT_HEIGHT_JS)
            size = self.page.viewport_size or {"width": 1400, "height": 1800}
            wanted = min(max(900, int(height) + 60), 16000)
            if wanted != size["height"]:
                self.page.set_viewport_size({"width": size["width"], "height": wanted})
                self.page.wait_for_timeout(200)
            self.shots += 1
            path = self.folder / f"{self.shots:02d}-{_slug(name)}.png"
            self.page.screenshot(path=str(path), full_page=True)
        self.report.screenshots.append(path.name)
        return path.name

    def check(self, step: int, action: str) -> list[Finding]:
        """Everything wrong on the page now that was not reported before (each distinct problem once)."""
        state = self.page.evaluate(CHECK_JS, RAW_OBJECT_PATTERNS)
        new: list[Finding] = []

        def add(kind: str, detail: str) -> None:
            same = (kind, re.sub(r"[0-9a-f]{8,}|\d+", "#", detail))  # one finding per problem, not per image
            if same not in self.reported:
                self.reported.add(same)
                new.append(Finding(step, action, kind, detail))

        for alert in state["alerts"]:
            if alert["kind"] == "error":
                expected = _matches(self.plan.expected_errors, alert["text"])
                if expected:
                    note = f"{alert['text'][:160]} (expected: {self.plan.expected_errors[expected]})"
                    if note not in self.report.expected_seen:
                        self.report.expected_seen.append(note)
                    continue
                add("unexpected-error", alert["text"])
            else:
                add(alert["kind"], alert["text"])
        for panel in state["panels"]:
            metrics = panel["metrics"]
            if panel["state"] == "completed" and metrics.get("ok") == "0" and metrics.get("failed", "0") != "0":
                add("completed-but-all-failed", f"Job {panel['id']} shows `completed` with ok 0, failed "
                    f"{metrics.get('failed')}: {panel['title'][:120]}")  # fmt: skip
        shown = {p["id"] for p in state["panels"]}
        self.jobs_seen |= shown | self.toast_jobs
        for job in sorted(self.toast_jobs):
            if job not in shown:
                add("wrong-job-shown", f"job {job} was started but the page shows "
                    f"{', '.join(f'Job {i}' for i in sorted(shown)) or 'no job panel'}")  # fmt: skip
        self.toast_jobs.clear()
        for pattern, why in self.plan.forbidden_text.items():
            hit = re.search(pattern, state["body"])
            if hit:
                add("forbidden-text", f"{hit.group(0)!r}: {why}")
        return new

    def running_jobs(self) -> list[int]:
        state = self.page.evaluate(CHECK_JS, RAW_OBJECT_PATTERNS)
        return [p["id"] for p in state["panels"] if p["state"] in ("running", "created")]

    def note_toasts(self) -> None:
        for toast in self.page.evaluate(CHECK_JS, RAW_OBJECT_PATTERNS)["toasts"]:
            for job in re.findall(r"[Jj]ob (\d+) (?:started|queued)", toast):
                self.toast_jobs.add(int(job))

    # --- interactions ---------------------------------------------------------------------------------

    def _text_for(self, label: str) -> str | None | bool:
        """The plan's value for a text box: a string, None (keep the default), or False (no entry)."""
        pattern = _matches(self.plan.text, label)
        if pattern is None:
            return False
        value = self.plan.text[pattern]
        if isinstance(value, list):
            used = self.text_uses.get(pattern, 0)
            self.text_uses[pattern] = used + 1
            return value[min(used, len(value) - 1)]
        return value

    def _choice(self, label: str, options: list[str], current: Any) -> str | None:
        pattern = _matches(self.plan.choices, label)
        if pattern is not None and self.plan.choices[pattern] in options:
            return self.plan.choices[pattern]
        others = [o for o in options if o != current]
        if not others:
            return None
        if current in options:  # the next one after the current choice
            i = options.index(current)
            return next((o for o in options[i + 1 :] + options[:i] if o != current), None)
        return others[0]

    def interact(self, w: dict[str, Any]) -> str:
        """Use one widget once; returns a note on what was done."""
        el: Locator = self.page.locator(f'[data-walker="{w["uid"]}"]')
        kind, label = w["kind"], w["label"]
        if kind in ("stButton", "stFormSubmitButton", "stDownloadButton"):
            el.locator("button").first.click()
            return "clicked"
        if kind == "stTabs":
            el.click()
            return "opened tab"
        if kind == "stExpander":
            if w["value"]:
                return "already open"
            el.locator("summary").first.click()
            return "expanded"
        if kind == "stRadio":
            choice = self._choice(label, w["options"], w["value"])
            if choice is None:
                return "only one option"
            el.locator('[role="radiogroup"] label').filter(has_text=choice).first.click()
            return f"chose {choice!r}"
        if kind == "stSelectbox":
            el.locator('button[aria-label="Open"]').first.click()
            options = self.page.get_by_role("listbox").get_by_role("option")
            options.first.wait_for(timeout=5000)
            names = [o.strip() for o in options.all_inner_texts()]
            choice = self._choice(label, names, w["value"])
            if choice is None:
                self.page.keyboard.press("Escape")
                return f"only option {names[0] if names else '-'}"
            options.nth(names.index(choice)).click()
            return f"chose {choice!r}"
        if kind == "stMultiSelect":
            el.locator('button[aria-label="Open"]').first.click()
            options = self.page.get_by_role("listbox").get_by_role("option")
            try:
                options.first.wait_for(timeout=2000)
                names = [o.strip() for o in options.all_inner_texts()]
            except PlaywrightError:
                names = []
            skip = ("select all", "no results", "no options")
            names = [n for n in names if n and n.lower() not in skip]
            if names:
                choice = self._choice(label, names, None) or names[0]
                options.filter(has_text=re.compile(f"^{re.escape(choice)}$")).first.click()
                self.page.keyboard.press("Escape")
                return f"added {choice!r}"
            self.page.keyboard.press("Escape")
            if w["value"]:
                el.locator(f'button[aria-label="Remove {w["value"][-1]}"]').first.click()
                return f"removed {w['value'][-1]!r}"
            return "no options"
        if kind in ("stCheckbox", "stToggle"):
            el.locator("label").first.click()
            return "unticked" if w["value"] else "ticked"
        if kind == "stSlider":
            thumb = el.locator('input[type="range"]').first
            thumb.focus()
            thumb.press("ArrowRight")
            if thumb.input_value() == w["value"]:
                thumb.press("ArrowLeft")
            return f"moved from {w['value']} to {thumb.input_value()}"
        if kind == "stNumberInput":
            if not w["value"]:  # empty (None): the steppers are off, type a value
                field_ = el.locator("input").first
                field_.fill("1")
                field_.press("Enter")
                return "typed 1"
            up, down = el.get_by_test_id("stNumberInputStepUp"), el.get_by_test_id("stNumberInputStepDown")
            if up.is_enabled():
                up.click()
                return "stepped up"
            if down.is_enabled():
                down.click()
                return "stepped down"
            return "its only value (both steps off)"
        if kind in ("stTextInput", "stTextArea"):
            value = self._text_for(label)
            box = el.locator("input, textarea").first
            if value is None:
                return f"kept {w['value']!r}"
            text = "walk" if value is False else str(value)
            box.fill(text)
            if w["inForm"]:
                box.evaluate("e => e.blur()")
            else:
                box.press("Control+Enter" if kind == "stTextArea" else "Enter")
            return f"typed {text!r}"
        if kind == "stFileUploader":
            file = self._file_for(label, w["options"][0] if w["options"] else "")
            if file is None:
                return "no fitting file in the plan"
            el.locator('input[type="file"]').set_input_files(str(file))
            el.get_by_test_id("stFileChipName").filter(has_text=file.name).first.wait_for(timeout=30_000)
            return f"uploaded {file.name}"
        if kind == "stDataFrame":
            return self._use_table(el, w)
        if kind == "stPlotlyChart":
            return self._use_chart(el, w)
        return "unknown widget"

    def _use(self, w: dict[str, Any]) -> str:
        """Use the widget; when a rerun replaced it meanwhile (a job ended), find it again and retry once."""
        for attempt in (1, 2):
            try:
                return self.interact(w)
            except PlaywrightError as exc:
                self.page.keyboard.press("Escape")
                if attempt == 2:
                    return f"could not use it: {str(exc).splitlines()[0][:160]}"
                settle(self.page, self.plan.click_timeout_s)
                again = next((x for x in self.discover() if x["ident"] == w["ident"]), None)
                if again is None or again["disabled"]:
                    return "gone or disabled before it could be used"
                w = again
        return "not used"

    def _file_for(self, label: str, accept: str) -> Path | None:
        pattern = _matches({k: v for k, v in self.plan.files.items() if not k.startswith(".")}, label)
        if pattern is not None:
            return self.plan.files[pattern]
        for ext in (a.strip() for a in accept.split(",") if a.strip()):
            if ext in self.plan.files:
                return self.plan.files[ext]
        return None

    def _use_table(self, el: Locator, w: dict[str, Any]) -> str:
        """A data editor gets a new value in its first cell; any other table a click on its first row (which
        selects it where the table has row selection)."""
        box = el.bounding_box()
        if box is None:
            return "not on screen"
        x, y = box["x"] + 12, box["y"] + 35 + 17  # the row-marker column of the first row under the header
        if any("add row" in (o or "").lower() for o in w["options"]):
            self.page.mouse.click(box["x"] + 80, y)  # select the first data cell (past the row markers)
            self.page.keyboard.press("Enter")  # open its editor
            self.page.wait_for_timeout(200)
            self.page.keyboard.press("Control+A")
            self.page.keyboard.type("walk", delay=40)
            self.page.keyboard.press("Enter")
            self.page.wait_for_timeout(200)
            self.page.keyboard.press("Escape")  # leave the grid, which would catch the next click
            return "edited the first cell"
        self.page.mouse.click(x, y)
        return "clicked the first row"

    def _use_chart(self, el: Locator, w: dict[str, Any]) -> str:
        """Click the first bar or point; a chart in lasso mode gets a lasso drawn round its plot area."""
        if "lasso" in (w["value"] or "").lower():
            area = el.locator(".nsewdrag").first.bounding_box()
            if area is None:
                return "no plot area"
            m = self.page.mouse
            m.move(area["x"] + 2, area["y"] + 2)
            m.down()
            for fx, fy in ((0.98, 0.01), (0.98, 0.98), (0.01, 0.98), (0.01, 0.02)):
                m.move(area["x"] + area["width"] * fx, area["y"] + area["height"] * fy, steps=5)
            m.up()
            return "drew a lasso round every point"
        el.scroll_into_view_if_needed()
        point = el.evaluate(
            """e => {
              const area = e.querySelector('.nsewdrag');
              if (!area) return null;
              const a = area.getBoundingClientRect();
              for (const m of e.querySelectorAll('.bars path, .scatterlayer .points path')) {
                const r = m.getBoundingClientRect();
                const x = r.left + r.width / 2, y = r.top + r.height / 2;
                if (r.width > 0 && r.height > 0 && x > a.left && x < a.right && y > a.top && y < a.bottom)
                  return [x, y];
              }
              return null;
            }"""
        )
        if point is None:
            return "no bar or point"
        self.page.mouse.click(point[0], point[1])  # plotly takes clicks on its drag layer, over the marks
        return "clicked the first bar or point"

    # --- the walk -------------------------------------------------------------------------------------

    def wait_for_jobs(self) -> str:
        """A job the walk started runs in the background: give it time to end so its outcome is checked."""
        deadline = time.monotonic() + self.plan.job_wait_s
        running = self.running_jobs()
        if not running:
            return ""
        while running and time.monotonic() < deadline:
            self.page.wait_for_timeout(250)
            running = self.running_jobs()
        settle(self.page, 30)
        return f"jobs still running after {self.plan.job_wait_s:.0f}s: {running}" if running else "waited for the job"

    def record(self, step: int, action: str, findings: list[Finding], shot: str = "") -> str:
        if findings:
            shot = shot or self.screenshot(f"{step}-{findings[0].kind}-{action}")
            for f in findings:
                f.screenshot = shot
            self.report.findings.extend(findings)
        return shot

    def walk(self) -> WalkReport:
        start = time.monotonic()
        self.page.set_default_timeout(10_000)  # a widget that is not there fails fast; the walk goes on
        if id(self.page) not in _MONITORS:  # the session's socket is only seen from a load on
            monitor(self.page)
            self.page.reload(wait_until="domcontentloaded")
            settle(self.page, 90)
        shot = self.screenshot("loaded")
        self.record(0, "page load", self.check(0, "page load"), shot)
        self.report.steps.append(Step(0, "opened the page", "top", 0.0, screenshot=shot))
        step = 0
        while True:
            with self.timed("discover"):
                widgets = self.discover()
            current = {w["ident"] for w in widgets}
            disabled_now = {w["ident"] for w in widgets if w["disabled"]}
            for ident in list(self.touched):
                if ident not in current or ident in disabled_now:  # gone or off: back later in a new context
                    self.gone_since_touch.add(ident)
            for w in widgets:
                self.seen[w["ident"]] = w
                if not w["disabled"]:
                    self.enabled_once.add(w["ident"])
            pending = [w for w in widgets if self._pending(w)]
            if not pending:
                break
            if step >= self.plan.max_interactions or time.monotonic() - start > self.plan.time_budget_s:
                left = ", ".join(self._describe(w) for w in pending[:8])
                self.report.findings.append(Finding(step, "walk", "walk-incomplete", f"stopped after {step} "
                    f"interactions and {time.monotonic() - start:.0f}s with widgets left: {left}"))  # fmt: skip
                self.budget_hit = True
                break
            w = min(pending, key=self._rank)  # stable: document order within a rank
            self.touched[w["ident"]] = self.touched.get(w["ident"], 0) + 1
            self.gone_since_touch.discard(w["ident"])
            step += 1
            if w["section"] != self.section and self.section:
                self.screenshot(f"{step}-after-{self.section}")
            self.section = w["section"]
            action = self._describe(w)
            t0 = time.monotonic()
            with self.timed("use"):
                note = self._use(w)
            if w["kind"] == "stFormSubmitButton":
                self.unsent.clear()  # the walk has one form open at a time: its edits are sent
            elif w["inForm"]:
                self.unsent.add(w["ident"])
            action = f"{action}: {note}"
            limit_pattern = _matches(self.plan.limits, w["label"] or "")
            limit_s = self.plan.limits[limit_pattern] if limit_pattern else self.plan.click_timeout_s
            with self.timed("settle"):
                quiet = note in NO_CHANGE or note.startswith(("kept ", "only option "))
                settled = True if quiet else settle(self.page, self.plan.settle_max_s)
            took = time.monotonic() - t0
            findings: list[Finding] = []
            if took > limit_s or not settled:
                limit = f"limit {limit_s:.0f}s" + ("" if settled else "; gave up waiting")
                findings.append(Finding(step, action, "blocks-the-page", f"the page stayed busy {took:.0f}s ({limit})"))
            with self.timed("jobs"):
                self.note_toasts()
                job_note = self.wait_for_jobs()
            with self.timed("checks"):
                self.page.mouse.move(1, 1)  # a hovered status shows a chevron, not its state icon
                findings += self.check(step, action)
            shot = self.record(step, action, findings)
            self.report.steps.append(Step(step, action, w["section"], round(took, 1), job_note, shot))
            if not settled:  # the session is stuck in a call: a fresh session continues the walk
                self.page.reload(wait_until="domcontentloaded")
                settle(self.page, 60)
        self.screenshot("walked")
        for ident in self.seen:
            if ident in self.touched or ident in self.report.skipped:
                continue
            if ident not in self.enabled_once:
                why = "disabled whenever seen"
            elif self.budget_hit and ident in current:
                why = "not reached (walk budget)"
            else:
                why = "hidden again before it was reached"
            self.report.untouched[ident] = why
        with self.timed("reload"):
            self.check_reload(step + 1)
        self.report.seconds = round(time.monotonic() - start, 1)
        (self.folder / "walk.md").write_text(self.report.markdown())
        (self.folder / "walk.json").write_text(json.dumps(asdict(self.report), indent=1))
        return self.report

    def _rank(self, w: dict[str, Any]) -> int:
        pattern = _matches(self.plan.order, w["label"] or "")
        return self.plan.order[pattern] if pattern else LATER.get(w["kind"], 0)

    def _pending(self, w: dict[str, Any]) -> bool:
        ident = w["ident"]
        reason = _matches(self.plan.skip, w["label"] or "") or (w["key"] and _matches(self.plan.skip, w["key"]))
        if reason:
            self.report.skipped[ident] = self.plan.skip[reason]
            return False
        if w["disabled"]:
            return False
        if w["kind"] == "stTabs" and w["value"] and ident not in self.touched:
            self.touched[ident] = 1  # the open tab is in use already
            return False
        uses = self.touched.get(ident, 0)
        return uses == 0 or (uses == 1 and ident in self.gone_since_touch)  # back in a new context: once more

    def _wait_for_a_steady_url(self, seconds: float = 20.0) -> None:
        """Until no rerun is running and the address bar has not changed for 2.5 s: the browser writes bound
        inputs into it after a rerun, and on a busy machine a reload could otherwise read the URL of the step
        before (seen once in CI while other test runs shared the machine: a rules choice lost on reload)."""
        settle(self.page, seconds)
        deadline = time.time() + seconds
        last, steady_since = self.page.url, time.time()
        while time.time() < deadline and time.time() - steady_since < 2.5:
            time.sleep(0.25)
            if self.page.url != last:
                last, steady_since = self.page.url, time.time()

    def check_reload(self, step: int) -> None:
        """Reload the browser tab (a new session) and record which job panels and input values it lost."""
        self._wait_for_a_steady_url()
        before = {w["ident"]: w for w in self.discover(hidden_too=True)}
        jobs_before = self._panel_ids()
        self.report.reload_notes.append(f"reloaded {self.page.url}")  # the page's state as its URL keeps it
        self.page.reload(wait_until="domcontentloaded")
        self.page.get_by_role("heading", name=self.plan.heading, exact=True, level=1).wait_for(timeout=60_000)
        settle(self.page, 60)
        after = {w["ident"]: w for w in self.discover(hidden_too=True)}
        jobs_after = self._panel_ids()
        followed = jobs_before | ({max(self.jobs_seen)} if self.jobs_seen else set())
        if jobs_before and not jobs_after & followed:  # showing the newest job instead is fine
            shown = ", ".join(f"Job {j}" for j in sorted(jobs_after)) or "no job panel"
            self.report.reload_losses.append(
                f"the job panel: Job {', '.join(map(str, sorted(jobs_before)))} before, {shown} after"
            )
        for ident, w in before.items():
            if w["kind"] in ("stTabs", "stExpander"):
                if ident in after and after[ident]["value"] != w["value"]:
                    self.report.reload_notes.append(f"{self._describe(w)} back to its default")
                continue
            if w["kind"] not in VALUE_KINDS or _matches(self.plan.skip, w["label"] or ""):
                continue
            if ident in self.unsent:  # like any web form, an edit never submitted is not the page's state
                if ident not in after or after[ident]["value"] != w["value"]:
                    self.report.reload_notes.append(f"{self._describe(w)}: unsubmitted {w['value']!r} not kept")
                continue
            if ident not in after:
                self.report.reload_losses.append(f"{self._describe(w)} (was {w['value']!r}) is gone")
            elif after[ident]["value"] != w["value"]:
                self.report.reload_losses.append(
                    f"{self._describe(w)}: {w['value']!r} became {after[ident]['value']!r}"
                )
        shot = self.screenshot("after-reload")
        self.report.steps.append(Step(step, "reloaded the browser tab", "top", 0.0,
                                      f"{len(self.report.reload_losses)} things lost", shot))  # fmt: skip
        found = self.check(step, "reload")
        for f in found:
            f.screenshot = shot
        self.report.findings.extend(found)

    def _panel_ids(self) -> set[int]:
        return {p["id"] for p in self.page.evaluate(CHECK_JS, RAW_OBJECT_PATTERNS)["panels"]}


def walk(page: Page, plan: PagePlan, artifacts: Path) -> WalkReport:
    """Walk the page the browser is on (see the module docstring); the report is also written as walk.md."""
    return Walker(page, plan, artifacts).walk()

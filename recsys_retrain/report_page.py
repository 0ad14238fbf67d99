"""The report's HTML page: interactive plotly figures, the PNG figures as data URIs, and tables.

The page reads at a glance, top to bottom:

* served quality: NDCG@10 of the serving model per week beside two fresh baselines
  refit on each week's history (recent popularity, EASE) and scored on the same users
  (``served.json``, from ``recsys_retrain.timeline.score_served``), and the weekly numbers;
* training curves: one figure per trained model (loss and both learning rates per
  step); every scheduler event is a point on the loss curve whose hover text holds its
  detail (action, trigger, value against threshold, old -> new, reason), and a table of
  the events under it. Nothing is written on the plot, so events a few steps apart
  cannot hide each other;
* the PNG figures of ``recsys_retrain.report`` (drift, quality, profile), the table of
  windows and the alias history.

It is one file that opens offline: plotly.js is embedded inline once (with the first
interactive figure), the PNGs are data URIs, and nothing is fetched.
"""

from __future__ import annotations

import base64
import html
import textwrap
from collections import Counter
from pathlib import Path
from typing import Any

MAX_TRAINING_RUNS = 12
EVENTS_TRACE = "scheduler events"
SERVED_SERIES = (  # served.json key, legend name, colour
    ("ndcg", "served model", "#1f77b4"),
    ("recent_pop_ndcg", "recent popularity (28 days, refit weekly)", "#ff7f0e"),
    ("ease_ndcg", "EASE (refit weekly)", "#2ca02c"),
)
PLOTLY_CONFIG = {"displaylogo": False, "responsive": True}
STYLE = """body{font-family:sans-serif;margin:2em;max-width:1200px}img{max-width:100%;border:1px solid #ddd}
figure{margin:1.5em 0}figcaption{color:#555;font-size:.9em}table{border-collapse:collapse;font-size:.85em}
td,th{border:1px solid #ccc;padding:2px 6px;text-align:left}.events{max-height:16em;overflow:auto;margin-bottom:2em}
.plotly-graph-div{border:1px solid #ddd}"""


def _number(x: Any) -> str:
    """A changed value, short: ``0.005``, ``1024`` (a whole number in full), ``True``."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return str(x)
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e9 else f"{x:.3g}"


def changes_text(event: dict[str, Any]) -> str:
    """``"dense_lr 0.01->0.005, batch_size 256->512"``: every value the event changed, old -> new."""
    return ", ".join(f"{name} {_number(old)}->{_number(new)}" for name, (old, new) in (event.get("changes") or {}).items())


def event_label(event: dict[str, Any]) -> str:
    """``"lr_down (plateau): dense_lr 0.01->0.005"``: the action, its trigger and each changed value."""
    head = event.get("action", "event") if event.get("action") != "stage" else f"stage {event.get('stage')}"
    trigger = f" ({event['trigger']})" if event.get("trigger") else ""
    changes = changes_text(event)
    return head + trigger + (f": {changes}" if changes else "")


def signal_text(event: dict[str, Any]) -> str:
    """``"0.01 vs threshold 0.02"``: the trigger's value against the threshold it crossed ('' when not numeric)."""
    value, threshold = event.get("value"), event.get("threshold")
    if value is None:
        return ""
    return _number(value) + (f" vs threshold {_number(threshold)}" if threshold is not None else "")


def event_hover(event: dict[str, Any]) -> str:
    """An event's hover text (plotly's HTML subset): where, what, why, each line escaped; the reason in three lines at most.

    Plotly drops a hover label taller than the plot, so the text stays short.
    """
    lines = [f"<b>{html.escape(event.get('action', 'event'))}</b>"
             + (f" ({html.escape(event['trigger'])})" if event.get("trigger") else "")
             + f" at step {event['step']}, epoch {event.get('epoch')}, stage {html.escape(str(event.get('stage')))}"]
    if signal_text(event):
        lines.append("value " + html.escape(signal_text(event)))
    if changes_text(event):
        lines.append(html.escape(changes_text(event)))
    if event.get("reason"):
        reason = textwrap.shorten("reason: " + event["reason"], 210, placeholder=" … (the table has it all)")
        lines += [html.escape(line) for line in textwrap.wrap(reason, 70)]
    return "<br>".join(lines)


def event_hovers(events: list[dict[str, Any]]) -> list[str]:
    """Each event's hover text; events on one step share a point, so each names the others of its step (the table has them)."""
    texts = []
    for i, event in enumerate(events):
        others = Counter(o.get("action", "event") for j, o in enumerate(events) if j != i and o["step"] == event["step"])
        more = ", ".join(a if n == 1 else f"{a} ×{n}" for a, n in others.items())
        texts.append(event_hover(event) + (f"<br><i>also at this step: {html.escape(more)}</i>" if more else ""))
    return texts


def event_rows(events: list[dict[str, Any]]) -> list[list[Any]]:
    """One table row per event: step, epoch, stage, action, trigger (with its value), changes, reason."""
    return [[e["step"], e.get("epoch"), e.get("stage"), e.get("action"),
             (e.get("trigger") or "") + (f" ({signal_text(e)})" if signal_text(e) else ""), changes_text(e), e.get("reason", "")]
            for e in events]


def training_runs(cycles: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The cycles that trained a model with a recorded curve, the newest ``MAX_TRAINING_RUNS``."""
    return [c for c in cycles if c["trace"] and c["trace"]["steps"]["step"]][-MAX_TRAINING_RUNS:]


def event_colour(action: str) -> str:
    """The action's colour, as in the PNGs (``recsys_retrain.schedule.plot``), in hex."""
    from matplotlib.colors import to_hex

    from recsys_retrain.schedule.plot import EVENT_COLOURS, OTHER_COLOUR

    return to_hex(EVENT_COLOURS.get(action, OTHER_COLOUR))


def colour_key(events: list[dict[str, Any]]) -> str:
    """The actions of ``events`` as coloured dots with their counts: the key to the event points' colours."""
    counts = Counter(e.get("action", "event") for e in events)
    return " ".join(f'<span style="color:{event_colour(a)}">●</span>&nbsp;{html.escape(a)}&nbsp;×{n}' for a, n in counts.items())


def _layout(height: int, **axes: Any) -> dict[str, Any]:
    """No title in the figure (the page's heading holds it); the legend in one row above the plot area."""
    return dict(height=height, template="plotly_white", margin=dict(l=70, r=80, t=40, b=50), hovermode="closest",
                legend=dict(orientation="h", x=0, xanchor="left", y=1.02, yanchor="bottom", font=dict(size=12)), **axes)


def training_plot(cycle: dict[str, Any]):
    """One run's loss (left axis) and learning rates (right, log) per step; its events as points on the loss curve."""
    import plotly.graph_objects as go

    from recsys_retrain.schedule.plot import log_ticks, loss_at

    steps, events = cycle["trace"]["steps"], cycle["trace"]["events"]
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=steps["step"], y=steps["loss"], name="loss", mode="lines", line=dict(color="#7f7f7f", width=1),
                             hovertemplate="step %{x}<br>loss %{y:.4g}<extra></extra>"))
    for key, colour in (("dense_lr", "#1f77b4"), ("sparse_lr", "#ff7f0e")):
        fig.add_trace(go.Scatter(x=steps["step"], y=steps[key], name=key.replace("_", " "), mode="lines", yaxis="y2",
                                 line=dict(color=colour, width=1.5), hovertemplate=f"step %{{x}}<br>{key} %{{y:.3g}}<extra></extra>"))
    ys = [loss_at(steps, e["step"]) for e in events]
    fig.add_trace(go.Scatter(
        x=[e["step"] for e in events], y=[0.0 if y is None else y for y in ys], name=EVENTS_TRACE, mode="markers",
        marker=dict(size=11, color=[event_colour(e.get("action", "")) for e in events], line=dict(color="white", width=1)),
        hovertext=event_hovers(events), hoverinfo="text", hoverlabel=dict(align="left"),
    ))
    ticks = log_ticks(steps["dense_lr"] + steps["sparse_lr"])
    rates = dict(title="learning rate", type="log", overlaying="y", side="right", showgrid=False,
                 tickvals=ticks, ticktext=[f"{t:g}" for t in ticks])
    fig.update_layout(**_layout(380, xaxis=dict(title="step"), yaxis=dict(title="training loss"), yaxis2=rates))
    return fig


def served_points(cycles: list[dict[str, Any]]) -> list[tuple[Any, dict[str, Any]]]:
    """``(week start, served.json)`` of each week with at least one scored series (old files lack the baselines)."""
    return [(c["start"], c["served"]) for c in cycles
            if c["served"] and any(c["served"].get(key) is not None for key, _, _ in SERVED_SERIES)]


def served_plot(cycles: list[dict[str, Any]]):
    """NDCG@10 per week of the served model, recent popularity and EASE, one line each (gaps where not scored)."""
    import plotly.graph_objects as go

    points = served_points(cycles)
    weeks = [f"{start:%Y-%m-%d}" for start, _ in points]
    fig = go.Figure()
    for key, name, colour in SERVED_SERIES:
        fig.add_trace(go.Scatter(x=weeks, y=[s.get(key) for _, s in points], name=name, mode="lines+markers",
                                 line=dict(color=colour, width=2), marker=dict(size=6),
                                 hovertemplate=f"week of %{{x|%Y-%m-%d}}<br>{html.escape(name)}: %{{y:.4f}}<extra></extra>"))
    fig.update_layout(**_layout(380, xaxis=dict(title="week", type="date"), yaxis=dict(title="NDCG@10, same users")))
    return fig


def _fmt(x: Any) -> str:
    return "—" if x is None else f"{x:.4f}" if isinstance(x, float) else str(x)


def served_rows(cycles: list[dict[str, Any]]) -> list[list[Any]]:
    """One row per scored week: version served, users, the three NDCG@10 and served minus the better baseline."""
    rows = []
    for start, s in served_points(cycles):
        baselines = [s[k] for k in ("recent_pop_ndcg", "ease_ndcg") if s.get(k) is not None]
        lead = s["ndcg"] - max(baselines) if s.get("ndcg") is not None and baselines else None
        rows.append([f"{start:%Y-%m-%d}", f"v{s['version']}" if s.get("version") is not None else "none", s.get("users"),
                     *(_fmt(s.get(key)) for key, _, _ in SERVED_SERIES), "—" if lead is None else f"{lead:+.4f}"])
    return rows


def served_summary(cycles: list[dict[str, Any]]) -> str:
    """One sentence: the mean of each series and on how many weeks the served model beat each baseline."""
    points = [s for _, s in served_points(cycles)]
    parts = []
    for key, name, _ in SERVED_SERIES:
        values = [s[key] for s in points if s.get(key) is not None]
        if values:
            parts.append(f"{name} {sum(values) / len(values):.4f}")
    if not parts:
        return "No week was scored."
    wins = []
    for key, name, _ in SERVED_SERIES[1:]:
        pairs = [(s["ndcg"], s[key]) for s in points if s.get("ndcg") is not None and s.get(key) is not None]
        if pairs:
            wins.append(f"{name.split(' (')[0]} on {sum(a > b for a, b in pairs)} of {len(pairs)}")
    return ("Mean NDCG@10 over the scored weeks: " + "; ".join(parts) + "."
            + (" The served model beat " + " and ".join(wins) + " weeks." if wins else ""))


def table(headers: list[str], rows: list[list[Any]]) -> str:
    """An HTML table, every cell escaped."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape('' if v is None else str(v))}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def img(path: Path, caption: str) -> str:
    """A PNG as a data URI in a figure with its caption."""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(caption)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def cycle_rows(cycles: list[dict[str, Any]]) -> list[list[Any]]:
    """One table row per window: rows, drift, served NDCG, the gate's decision, the monitor's."""
    rows = []
    for c in cycles:
        summary, monitor, served = c["summary"] or {}, c["monitor"] or {}, c["served"] or {}
        decision = ("promote" if summary.get("promoted") else "reject") + f" v{summary['version']}" if summary else ""
        rows.append([
            f"{c['start']:%Y-%m-%d}", (c["drift"] or {}).get("current_rows"), (c["drift"] or {}).get("severity"),
            _fmt(served.get("ndcg")), _fmt(summary.get("challenger_ndcg")), decision,
            "revert" if monitor.get("reverted") else "",
        ])
    return rows


WEEK_HEADERS = ["week", "rows", "drift", "drifted signals", "trained", "serving", "challenger NDCG@10", "gate", "monitor"]


def week_rows(weeks: list[dict[str, Any]]) -> list[list[Any]]:
    """One row per week (``timeline.WeekResult.to_dict()`` or ``monitoring.runs.weeks``): drift, training, serving, decisions.

    The demo's weeks (read from the cycle folders) and the production weeks (read
    from the monitoring runs in MLflow) give the same rows for the same weeks.
    """
    rows = []
    for w in weeks:
        served = "—" if w.get("served_ndcg") is None else f"v{w.get('served_version')} {w['served_ndcg']:.4f}"
        decision = "" if w.get("version") is None else f"{'promote' if w.get('promoted') else 'reject'} v{w['version']}"
        if w.get("promoted") and w.get("refit_version"):
            decision += f" (refit v{w['refit_version']} serves)"
        rows.append([w["window"].split("/")[0][:10], w.get("rows"), w.get("drift"), ", ".join(w.get("drifted") or ()),
                     w.get("trained_by") or "", served, _fmt(w.get("challenger_ndcg")), decision,
                     "revert" if w.get("reverted") else ""])
    return rows


class Plots:
    """Plotly figures as HTML fragments; the first carries plotly.js inline, the others use it."""

    def __init__(self) -> None:
        self.count = 0

    def html(self, fig, div_id: str) -> str:
        """``fig`` as a ``<div id=div_id>`` and the script that draws it (plotly.js before it, the first time)."""
        out = fig.to_html(full_html=False, include_plotlyjs=self.count == 0, config=PLOTLY_CONFIG, div_id=div_id,
                          default_height=f"{fig.layout.height}px")
        self.count += 1
        return out


def served_section(cycles: list[dict[str, Any]], plots: Plots) -> list[str]:
    """The served-vs-baselines panel, its one-sentence summary and the weekly table."""
    parts = ["<h2>Served model against fresh baselines</h2>"]
    if not served_points(cycles):
        return parts + ["<p>No week was scored.</p>"]
    parts += [plots.html(served_plot(cycles), "served-panel"),
              f"<p>NDCG@10 on each week's users of the model serving that week, and of two baselines refit on the "
              f"week's history and scored on the same users. {html.escape(served_summary(cycles))}</p>",
              table(["week", "version served", "users", *(name for _, name, _ in SERVED_SERIES), "served − better baseline"],
                    served_rows(cycles))]
    return parts


def training_section(cycles: list[dict[str, Any]], plots: Plots) -> list[str]:
    """Per trained model: a heading, the colour key of its events, its figure and its table of events."""
    parts = ["<h2>Training runs</h2>", "<p>Loss (left axis) and learning rates (right, log) per step; each dot on the loss "
             "curve is a scheduler event: hover it for its trigger, the values it changed (old->new) and why.</p>"]
    runs = training_runs(cycles)
    if not runs:
        return parts + ["<p>No trained models in these cycles.</p>"]
    for c in runs:
        events = c["trace"]["events"]
        parts += [f"<h3>Model of window {c['start']:%Y-%m-%d}: {len(events)} scheduler events</h3>",
                  f"<p>{colour_key(events)}</p>" if events else "",
                  plots.html(training_plot(c), f"training-{c['name']}"),
                  '<div class="events">' + table(["step", "epoch", "stage", "action", "trigger", "changes", "reason"],
                                                 event_rows(events)) + "</div>"]
    return parts


# How to get recommendations from the champion, one copy-paste example per way (README: "Serving the champion").
SERVING = """<h2>Serving the champion</h2>
<p>From the repository root, after <code>make demo</code>:</p>
<pre># in-process, from the command line (features from the Feast online store)
.venv/bin/retrain recommend --user 42 --k 10 --alias champion

# REST (uvicorn on PATH: activate the venv)
source .venv/bin/activate
MLFLOW_TRACKING_URI=sqlite:///.retrain/mlflow.db mlflow models serve -m models:/two_tower@champion \\
  --env-manager local --host 127.0.0.1 --port 5001 &amp;
curl -s -X POST 127.0.0.1:5001/invocations -H 'Content-Type: application/json' \\
  -d '{"dataframe_records": [{"user_id": 42, "k": 10}]}'

# precomputed after each promotion or revert, refreshed weekly: one key lookup per user in the online store
.venv/bin/python -c "from recsys_retrain.data.store import feature_store; \\
from recsys_retrain.serve.online import read_recommendations; \\
from recsys_retrain.serve.publish import published; \\
users = published('features')['user_id'].head(2).tolist(); \\
print(read_recommendations(feature_store('features'), users).to_string())"</pre>
"""


def html_page(title: str, figures: list[tuple[Path, str]], cycles: list[dict[str, Any]], moves: list[dict[str, Any]],
              weeks: list[dict[str, Any]] | None = None) -> str:
    """The whole page as one string: interactive panels, PNG figures as data URIs, the windows and the alias history.

    With ``weeks`` (the monitoring runs' weeks), the windows table is :func:`week_rows`;
    without, one row per cycle folder.
    """
    plots = Plots()
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>"]
    parts += served_section(cycles, plots)
    parts += training_section(cycles, plots)
    parts.append("<h2>Drift, quality and data over time</h2>")
    parts += [img(path, caption) for path, caption in figures]
    parts.append("<h2>Windows</h2>")
    if weeks is not None:
        parts.append(table(WEEK_HEADERS, week_rows(weeks)))
    else:
        parts.append(table(["window", "rows", "drift", "served NDCG@10", "challenger NDCG@10", "gate", "monitor"],
                           cycle_rows(cycles)))
    parts.append("<h2>Alias history</h2>")
    parts.append(table(["#", "alias", "from", "to", "by", "why"],
                       [[m["seq"], m["alias"], m["from_version"], m["to_version"], m["actor"], m["reason"]] for m in moves]))
    parts.append(SERVING)
    parts.append("</body></html>")
    return "".join(parts)

"""A replay report as one self-contained HTML page.

Inline CSS and inline SVG only: no scripts, fonts, images or style sheets from anywhere, so the
file can be attached to a pull request or an audit ticket and opened offline. Every value from
the report (rule ids, claim values, subjects) is escaped: claim values come from IGA exports and
policy documents, and a report must not become a way to run markup in a reviewer's browser.
"""

from __future__ import annotations

import json
from html import escape
from typing import Any

from keycloak_policy_bridge.replay import ReplayedDecision, ReplayReport

_MAX_ROWS = 500  # decisions listed in the table; the JSON report has them all
_MAX_BARS = 25  # rows per chart

_CSS = """
:root { --add: #1a7f37; --rem: #cf222e; --eff: #bf8700; --ink: #1f2328; --mute: #656d76; --line: #d0d7de; --bg: #f6f8fa; }
* { box-sizing: border-box; }
body { font: 14px/1.45 -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: var(--ink); margin: 0; background: #fff; }
main { max-width: 1100px; margin: 0 auto; padding: 28px 24px 60px; }
h1 { font-size: 22px; margin: 0 0 4px; }
h2 { font-size: 16px; margin: 32px 0 10px; padding-bottom: 6px; border-bottom: 1px solid var(--line); }
.meta { color: var(--mute); font-size: 13px; margin: 0; }
.meta code { color: var(--ink); }
.verdict { display: inline-block; margin: 14px 0 4px; padding: 4px 12px; border-radius: 999px; font-weight: 600; font-size: 13px; }
.verdict.ok { background: #dafbe1; color: var(--add); }
.verdict.changed { background: #fff8c5; color: #7d4e00; }
.verdict.errors { background: #ffebe9; color: var(--rem); }
.cards { display: grid; grid-template-columns: repeat(4, 1fr); gap: 12px; margin: 16px 0 8px; }
.card { border: 1px solid var(--line); border-radius: 8px; padding: 12px 14px; background: var(--bg); }
.card .n { font-size: 28px; font-weight: 600; font-variant-numeric: tabular-nums; }
.card .l { color: var(--mute); font-size: 12px; text-transform: uppercase; letter-spacing: .04em; }
.card.changed .n { color: #9a6700; } .card.errors .n { color: var(--rem); } .card.unchanged .n { color: var(--add); }
.legend { font-size: 12px; color: var(--mute); margin: 4px 0 8px; }
.legend span { display: inline-block; width: 10px; height: 10px; border-radius: 2px; margin: 0 4px 0 12px; vertical-align: -1px; }
svg text { font: 12px -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; fill: var(--ink); }
svg .num { fill: var(--mute); font-variant-numeric: tabular-nums; }
table { border-collapse: collapse; width: 100%; font-size: 13px; }
th, td { text-align: left; padding: 6px 8px; border-bottom: 1px solid var(--line); vertical-align: top; }
th { background: var(--bg); font-weight: 600; position: sticky; top: 0; }
td code { font-size: 12px; }
.chip { display: inline-block; padding: 0 6px; margin: 1px 2px; border-radius: 4px;
        font: 12px ui-monospace, SFMono-Regular, Menlo, monospace; }
.chip.add { background: #dafbe1; color: var(--add); } .chip.rem { background: #ffebe9; color: var(--rem); text-decoration: line-through; }
.effect-permit { color: var(--add); font-weight: 600; } .effect-deny { color: var(--rem); font-weight: 600; }
.note { color: var(--mute); font-size: 12px; }
.empty { color: var(--mute); font-style: italic; }
"""


def render_html(report: ReplayReport) -> str:
    """The report as a complete HTML document (a ``str``; the caller writes it)."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(_title(report))}</title><style>{_CSS}</style></head><body><main>",
        _header(report),
        _totals(report),
        "<h2>Changes by rule</h2>",
        _legend(effect=True),
        _bars([(rule, c["added"], c["removed"], c["effect"]) for rule, c in report.by_rule.items()], "rules"),
        "<h2>Changes by claim value</h2>",
        _legend(effect=False),
        _bars(_claim_rows(report), "claim values"),
        f"<h2>Changed decisions ({report.changed})</h2>",
        _changed_table(report.changed_decisions),
    ]
    if report.failed_decisions:
        parts += [f"<h2>Records that could not be replayed ({report.errors})</h2>", _error_table(report.failed_decisions)]
    parts.append("</main></body></html>")
    return "\n".join(parts)


def _e(value: Any) -> str:
    return escape("" if value is None else str(value), quote=True)


def _title(report: ReplayReport) -> str:
    if report.mode == "recorded":
        return "Replay: reproduction with the recorded policies"
    policy = report.policy or {}
    return f"Replay: {policy.get('id', '?')} {policy.get('version', '')}".strip()


def _header(report: ReplayReport) -> str:
    policy = report.policy or {}
    what = (
        "each decision's own recorded policy (reproduction check)"
        if report.mode == "recorded"
        else f"<code>{_e(policy.get('id'))}</code> version <code>{_e(policy.get('version'))}</code> <code>{_e(policy.get('digest'))}</code>"
    )
    if report.errors:
        verdict = '<span class="verdict errors">Some records could not be replayed</span>'
    elif report.changed:
        verdict = '<span class="verdict changed">Decisions would change</span>'
    else:
        verdict = '<span class="verdict ok">No decision changes</span>'
    return (
        f"<h1>{_e(_title(report))}</h1>"
        f'<p class="meta">Policy: {what}</p>'
        f'<p class="meta">Entitlements: <code>{_e(report.entitlements)}</code> · Context feeds: <code>{_e(report.feeds)}</code></p>'
        f"{verdict}"
    )


def _totals(report: ReplayReport) -> str:
    cards = [("replayed", report.replayed), ("unchanged", report.unchanged), ("changed", report.changed), ("errors", report.errors)]
    html = ['<div class="cards">']
    html += [f'<div class="card {name}"><div class="n">{n:,}</div><div class="l">{name}</div></div>' for name, n in cards]
    html.append("</div>")
    total = max(report.replayed, 1)
    x = 0.0
    bar = ['<svg width="100%" height="14" viewBox="0 0 1000 14" preserveAspectRatio="none" role="img" aria-label="share of decisions">']
    for n, colour in ((report.unchanged, "#2da44e"), (report.changed, "#d4a72c"), (report.errors, "#cf222e")):
        width = 1000 * n / total
        if width:
            bar.append(f'<rect x="{x:.2f}" y="0" width="{width:.2f}" height="14" fill="{colour}"/>')
        x += width
    bar.append("</svg>")
    return "".join(html + bar)


def _legend(effect: bool) -> str:
    items = [("var(--rem)", "values removed"), ("var(--add)", "values added")]
    if effect:
        items.append(("var(--eff)", "effect changes (permit ↔ deny)"))
    return '<div class="legend">' + "".join(f'<span style="background:{c}"></span>{label}' for c, label in items) + "</div>"


def _claim_rows(report: ReplayReport) -> list[tuple[str, int, int, int]]:
    rows = []
    for claim, slots in report.by_claim.items():
        for value in set(slots["added"]) | set(slots["removed"]):
            rows.append((f"{claim} = {value}", slots["added"].get(value, 0), slots["removed"].get(value, 0), 0))
    rows.sort(key=lambda r: (-(r[1] + r[2]), r[0]))
    return rows


def _bars(rows: list[tuple[str, int, int, int]], what: str) -> str:
    """A diverging horizontal bar chart: values removed to the left of the axis, values added
    to the right, and effect changes as a thinner amber bar under them."""
    if not rows:
        return '<p class="empty">No changes.</p>'
    shown, hidden = rows[:_MAX_BARS], len(rows) - _MAX_BARS
    label_w, half, row_h, pad, top = 260, 300, 26, 44, 20
    width, height = label_w + 2 * half + 2 * pad, top + len(shown) * row_h + 4
    scale = max(max(a, r, e) for _, a, r, e in shown) or 1
    axis = label_w + pad + half
    out = [
        f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" aria-label="changes by {_e(what)}">',
        f'<line x1="{axis}" y1="{top - 4}" x2="{axis}" y2="{height}" stroke="#d0d7de"/>',
        f'<text class="num" x="{axis - 8}" y="12" text-anchor="end">← removed</text>',
        f'<text class="num" x="{axis + 8}" y="12">added →</text>',
    ]
    for i, (label, added, removed, effect) in enumerate(shown):
        y = top + i * row_h
        short = label if len(label) <= 38 else label[:37] + "…"
        out.append(f'<text x="{label_w - 6}" y="{y + 14}" text-anchor="end"><title>{_e(label)}</title>{_e(short)}</text>')
        bar_h = 10 if effect else 16  # an effect bar shares the row, under the value bars
        if removed:
            w = max(2.0, half * removed / scale)
            out.append(f'<rect x="{axis - w:.1f}" y="{y}" width="{w:.1f}" height="{bar_h}" rx="2" fill="#cf222e"/>')
            out.append(f'<text class="num" x="{axis - w - 4:.1f}" y="{y + bar_h - 1}" text-anchor="end">−{removed:,}</text>')
        if added:
            w = max(2.0, half * added / scale)
            out.append(f'<rect x="{axis}" y="{y}" width="{w:.1f}" height="{bar_h}" rx="2" fill="#1a7f37"/>')
            out.append(f'<text class="num" x="{axis + w + 4:.1f}" y="{y + bar_h - 1}">+{added:,}</text>')
        if effect:
            w = max(2.0, half * effect / scale)
            out.append(f'<rect x="{axis}" y="{y + 12}" width="{w:.1f}" height="8" rx="2" fill="#bf8700"/>')
            out.append(f'<text class="num" x="{axis + w + 4:.1f}" y="{y + 20}">{effect:,} permit↔deny</text>')
    out.append("</svg>")
    if hidden > 0:
        out.append(f'<p class="note">{hidden} more {_e(what)} with fewer changes are in the JSON report.</p>')
    return "".join(out)


def _chips(changes: dict[str, list[Any]], kind: str) -> str:
    return "".join(
        f'<span class="chip {kind}">{_e(claim)}: {_e(v if isinstance(v, str) else _json(v))}</span>'
        for claim, values in changes.items()
        for v in values
    )


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def _effect(effect: str | None) -> str:
    return f'<span class="effect-{_e(effect)}">{_e(effect)}</span>'


def _changed_table(decisions: tuple[ReplayedDecision, ...]) -> str:
    if not decisions:
        return '<p class="empty">Every replayed decision is unchanged.</p>'
    rows = [
        (
            "<table><thead><tr><th>Decision</th><th>Subject</th><th>Client</th><th>Effect</th>"
            "<th>Added</th><th>Removed</th><th>Other</th></tr></thead><tbody>"
        )
    ]
    for d in decisions[:_MAX_ROWS]:
        effect = _effect(d.effect_before)
        if d.effect_before != d.effect_after:
            effect += f" → {_effect(d.effect_after)}"
        other = []
        same_effect = d.effect_before == d.effect_after  # a deny carries no TTL cap or remove_claims
        if d.ttl_before != d.ttl_after and same_effect:
            other.append(f"max TTL {_e(d.ttl_before)} → {_e(d.ttl_after)}")
        if d.remove_claims_before != d.remove_claims_after and same_effect:
            other.append(f"remove_claims {_e(', '.join(d.remove_claims_before))} → {_e(', '.join(d.remove_claims_after))}")
        if not (d.added or d.removed or other) and d.differences:
            other.append("differs in " + _e(", ".join(d.differences)))
        rows.append(
            f'<tr><td><code>{_e(d.decision_id)}</code><br><span class="note">{_e(d.evaluated_at)}</span></td>'
            f"<td>{_e(d.subject_id or '—')}</td><td>{_e(d.client_id)}</td><td>{effect}</td>"
            f"<td>{_chips(d.added, 'add')}</td><td>{_chips(d.removed, 'rem')}</td><td>{'<br>'.join(other)}</td></tr>"
        )
    rows.append("</tbody></table>")
    if len(decisions) > _MAX_ROWS:
        rows.append(f'<p class="note">{len(decisions) - _MAX_ROWS:,} more changed decisions are in the JSON report.</p>')
    return "".join(rows)


def _error_table(decisions: tuple[ReplayedDecision, ...]) -> str:
    rows = ["<table><thead><tr><th>Decision</th><th>Subject</th><th>Client</th><th>Why</th></tr></thead><tbody>"]
    for d in decisions[:_MAX_ROWS]:
        rows.append(
            f"<tr><td><code>{_e(d.decision_id)}</code></td><td>{_e(d.subject_id or '—')}</td>"
            f"<td>{_e(d.client_id)}</td><td>{_e(d.error)}</td></tr>"
        )
    rows.append("</tbody></table>")
    if len(decisions) > _MAX_ROWS:
        rows.append(f'<p class="note">{len(decisions) - _MAX_ROWS:,} more are in the JSON report.</p>')
    return "".join(rows)

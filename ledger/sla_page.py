"""The SLA report as one self-contained HTML page: a chart of availability per terminal and
day (an inline SVG grid, so the page needs no script and no network), then the table."""

from __future__ import annotations

from html import escape

from ledger.sla import COLUMNS, SlaReport

CELL_W, CELL_H, LABEL_W, HEADER_H = 64, 26, 110, 24
# The availability a cell must reach to be green, or amber; below, it is red.
GOOD, FAIR = 0.995, 0.95


def _colour(availability: float | None) -> str:
    if availability is None:
        return "#ddd"
    if availability >= GOOD:
        return "#2e8b57"
    return "#e0a020" if availability >= FAIR else "#c0392b"


def availability_chart(report: SlaReport) -> str:
    terminals = list(dict.fromkeys(row.terminal_id for row in report.rows))
    report_days = list(dict.fromkeys(row.business_date for row in report.rows))
    width = LABEL_W + CELL_W * len(report_days)
    height = HEADER_H + CELL_H * len(terminals)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" width="{width}" height="{height}"'
        f' viewBox="0 0 {width} {height}" aria-label="availability by terminal and day">'
    ]
    for column, day in enumerate(report_days):
        x = LABEL_W + column * CELL_W + CELL_W / 2
        parts.append(f'<text x="{x}" y="16" text-anchor="middle">{day:%m-%d}</text>')
    for line, terminal in enumerate(terminals):
        y = HEADER_H + line * CELL_H
        parts.append(f'<text x="4" y="{y + 17}">{escape(terminal)}</text>')
    for row in report.rows:
        x = LABEL_W + report_days.index(row.business_date) * CELL_W
        y = HEADER_H + terminals.index(row.terminal_id) * CELL_H
        availability = row.availability
        label = "—" if availability is None else f"{100 * availability:.1f}%"
        parts.append(
            f'<rect x="{x + 1}" y="{y + 1}" width="{CELL_W - 2}" height="{CELL_H - 2}"'
            f' fill="{_colour(availability)}"><title>{escape(row.terminal_id)}'
            f" {row.business_date}: {label}</title></rect>"
            f'<text x="{x + CELL_W / 2}" y="{y + 17}" text-anchor="middle"'
            f' class="cell">{label}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def as_html(report: SlaReport) -> str:
    header = "".join(f"<th>{escape(name)}</th>" for name in COLUMNS)
    lines = []
    for row in report.rows:
        cells = "".join(
            f"<td>{'—' if value is None else escape(str(value))}</td>"
            for value in row.as_json().values()
        )
        lines.append(f"<tr>{cells}</tr>")
    hours = "the whole business day" if report.hours is None else f"{report.hours} UTC"
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>SLA report {report.first_day} to {report.last_day}</title>
<style>
  body {{ font: 14px system-ui, sans-serif; margin: 2rem; color: #222; }}
  table {{ border-collapse: collapse; margin-top: 1.5rem; }}
  th, td {{ padding: .3rem .6rem; border-bottom: 1px solid #ddd; text-align: right; }}
  th:nth-child(-n+4), td:nth-child(-n+4) {{ text-align: left; }}
  svg text {{ font: 12px system-ui, sans-serif; }} svg text.cell {{ fill: #fff; }}
</style>
</head>
<body>
<h1>SLA report, {report.first_day} to {report.last_day}</h1>
<p>Business days start at {report.cutover:%H:%M} UTC; scheduled time is {escape(hours)}.
Generated {report.generated_at:%Y-%m-%d %H:%M:%S} UTC. Green: at least {100 * GOOD:g}% available;
amber: at least {100 * FAIR:g}%; grey: not scheduled.</p>
<h2>Availability</h2>
{availability_chart(report)}
<table>
<thead><tr>{header}</tr></thead>
<tbody>
{chr(10).join(lines)}
</tbody>
</table>
</body>
</html>
"""

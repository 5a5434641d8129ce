"""`runs/<name>/report.html`: one self-contained page that shows what a run did.

Why: a run's numbers live in JSON files; people judge self-training by looking at the
curve and at the programs. The page has the held-out accuracy per round (an inline SVG
plot), kept fractions, error kinds, accuracy per question type, and a gallery of
evaluated programs beside their images, with the boxes the program's primitive calls
returned drawn from its trace, its answer and its reward. Images are inlined as base64
PNG and nothing is fetched, so the file reads offline and can be mailed around.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from viprog.executor.result import ERROR_KINDS
from viprog.runs import Run, read_json, read_jsonl, write_text_atomic

CSS = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1200px}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3}td.l{text-align:left}
.gallery{display:flex;flex-wrap:wrap;gap:12px}.card{border:1px solid #ccc;border-radius:6px;padding:8px;width:360px}
.card.ok{border-color:#2a2}.card.bad{border-color:#c33}.card img{display:block;margin:auto;image-rendering:pixelated}
pre{background:#f7f7f7;padding:6px;font-size:11px;overflow-x:auto;white-space:pre-wrap}
.legend span{margin-right:1em}
"""


def svg_plot(series: dict[str, list[tuple[int, float]]], *, width: int = 520, height: int = 260,
             title: str = "") -> str:
    """A line plot of values in [0, 1] against round numbers, as inline SVG."""
    colors = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]
    per_row = max(1, (width - 64) // 170)  # legend entries per line
    rounds = sorted({x for points in series.values() for x, _ in points}) or [0]
    left, right, top, bottom = 48, 16, 28, 36
    span = max(max(rounds) - min(rounds), 1)

    def px(x: float) -> float:
        return left + (x - min(rounds)) / span * (width - left - right)

    def py(y: float) -> float:
        return top + (1 - y) * (height - top - bottom)

    out = [(f'<svg xmlns="http://www.w3.org/2000/svg" id="accuracy-plot" width="{width}" height="{height}" '
            f'role="img" aria-label="{html.escape(title)}">'),
           f'<text x="{width / 2}" y="16" text-anchor="middle" font-size="13">{html.escape(title)}</text>']
    for tick in (0, 0.25, 0.5, 0.75, 1.0):
        out.append(f'<line x1="{left}" x2="{width - right}" y1="{py(tick)}" y2="{py(tick)}" stroke="#ddd"/>'
                   f'<text x="{left - 6}" y="{py(tick) + 4}" text-anchor="end" font-size="11">{tick:.0%}</text>')
    for x in rounds:
        out.append(f'<text x="{px(x)}" y="{height - bottom + 16}" text-anchor="middle" font-size="11">{x}</text>')
    out.append(f'<text x="{(left + width - right) / 2}" y="{height - 4}" text-anchor="middle" font-size="11">round</text>')
    for i, (name, points) in enumerate(series.items()):
        color = colors[i % len(colors)]
        pts = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in sorted(points))
        out.append(f'<polyline class="series" data-name="{html.escape(name)}" fill="none" stroke="{color}" '
                   f'stroke-width="2" points="{pts}"/>')
        for x, y in points:
            out.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3.5" fill="{color}">'
                       f'<title>{html.escape(name)} round {x}: {y:.1%}</title></circle>')
        out.append(f'<text x="{left + 8 + 170 * (i % per_row)}" y="{top + 12 + 13 * (i // per_row)}" font-size="11" '
                   f'fill="{color}">■ {html.escape(name)}</text>')
    out.append("</svg>")
    return "".join(out)


def trace_boxes(trace: Sequence[dict[str, Any]], height: int) -> list[tuple[tuple[float, float, float, float], str]]:
    """Boxes (x0, y0, x1, y1, origin top-left) found by the program's primitive calls, with labels."""
    boxes = []
    for call in trace:
        result = call.get("result")
        if isinstance(result, list) and result and all(isinstance(b, (list, tuple)) and len(b) == 4 for b in result):
            label = " ".join(str(a) for a in call.get("args", ()))[:24]
            for left, lower, right, upper in result:
                boxes.append(((left, height - upper, right, height - lower), label))
    return boxes


def render_image(row: dict[str, Any], size: int = 256) -> str | None:
    """The example's image with the trace's boxes (blue), the answer box (green/red) and the
    gold box (dashed yellow) drawn, as a data URI; None when the image cannot be read."""
    try:
        with Image.open(row["image"]) as img:
            image = img.convert("RGB")
    except (OSError, ValueError, KeyError, TypeError):
        return None
    scale = max(1, size // max(image.size))
    image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    draw = ImageDraw.Draw(image)

    def box(x0: float, y0: float, x1: float, y1: float) -> list[float]:
        """Scaled corners; a box with no width or height is drawn as a line, not refused."""
        x0, x1 = sorted((x0 * scale, x1 * scale - 1))
        y0, y1 = sorted((y0 * scale, y1 * scale - 1))
        return [x0, y0, x1, y1]

    for (x0, y0, x1, y1), label in trace_boxes(row.get("trace") or (), image.height // scale):
        draw.rectangle(box(x0, y0, x1, y1), outline=(30, 100, 230), width=2)
        if label:
            draw.text((x0 * scale + 2, y0 * scale + 1), label, fill=(30, 100, 230))
    answer = row.get("answer")
    if isinstance(answer, dict) and isinstance(answer.get("box"), list):
        x0, y0, x1, y1 = answer["box"]
        color = (20, 160, 40) if row.get("reward", 0) > 0 else (210, 40, 40)
        draw.rectangle(box(x0, y0, x1, y1), outline=color, width=3)
    gold = row.get("gold")
    if isinstance(gold, (list, tuple)) and len(gold) == 4:
        x0, y0, x1, y1 = gold
        draw.rectangle(box(x0, y0, x1, y1), outline=(230, 190, 0), width=1)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _fmt(value: Any, pct: bool = False) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.1%}" if pct else f"{value:.3g}"
    return html.escape(str(value))


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f'<td class="l">{c}</td>' if i == 0 else f"<td>{c}</td>" for i, c in enumerate(r))
                   + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def gallery(rows: Sequence[dict[str, Any]], limit: int) -> str:
    """Cards for up to `limit` evaluated programs, correct ones and failures alternating."""
    good = [r for r in rows if r.get("reward", 0) > 0]
    bad = [r for r in rows if r.get("reward", 0) <= 0]
    chosen: list[dict[str, Any]] = []
    while (good or bad) and len(chosen) < limit:
        for pool in (good, bad):
            if pool and len(chosen) < limit:
                chosen.append(pool.pop(0))
    cards = []
    for r in chosen:
        uri = render_image(r)
        img = f'<img src="{uri}" alt="{html.escape(r.get("question_id", ""))}">' if uri else "<p>(image unavailable)</p>"
        answer = r.get("answer")
        shown = answer.get("box") if isinstance(answer, dict) and "box" in answer else answer
        error = f'<p>error ({html.escape(str(r.get("error_kind")))}): {html.escape(str(r.get("error"))[:200])}</p>' \
            if r.get("error_kind") else ""
        cards.append(
            f'<div class="card {"ok" if r.get("reward", 0) > 0 else "bad"}" data-question="{html.escape(str(r.get("question_id")))}">'
            f'{img}<p><b>{html.escape(str(r.get("query")))}</b></p>'
            f'<p>answer: <code>{html.escape(json.dumps(shown, default=str))}</code> · gold: '
            f'<code>{html.escape(json.dumps(r.get("gold"), default=str))}</code> · reward {float(r.get("reward", 0)):.2f}</p>'
            f'{error}<pre>{html.escape(str(r.get("program", "")))}</pre></div>')
    return f'<div class="gallery" id="gallery">{"".join(cards)}</div>'


def write_report(run_dir: str | Path, *, gallery_size: int = 24) -> Path:
    """Write `report.html` for the run at `run_dir` from its finished rounds; returns its path."""
    run = Run(run_dir)
    config = read_json(run.config_path) if run.config_path.exists() else {}
    rounds = list(run.round_metrics())
    acc = [(m["round"], float(m["eval/accuracy"])) for m in rounds if "eval/accuracy" in m]
    kept = [(m["round"], float(m["filter/kept_frac"])) for m in rounds if "filter/kept_frac" in m]
    reward = [(m["round"], float(m["reward/mean"])) for m in rounds if "reward/mean" in m]
    plot = svg_plot({"held-out accuracy": acc, "kept fraction": kept, "train reward": reward},
                    title="Self-training: held-out accuracy per round")
    summary = _table(
        ["round", "eval accuracy", "train reward", "kept", "kept frac", "unique programs", "train loss (last)",
         "sample s", "train s", "eval s", "peak RSS MB"],
        [[str(m["round"]), _fmt(m.get("eval/accuracy"), True), _fmt(m.get("reward/mean"), True),
          _fmt(m.get("filter/kept")), _fmt(m.get("filter/kept_frac"), True), _fmt(m.get("filter/unique_programs")),
          _fmt(m.get("train/loss_last")), _fmt(m.get("time/sample_s")), _fmt(m.get("time/train_s")),
          _fmt(m.get("time/eval_s")), _fmt(m.get("memory/peak_rss_mb"))] for m in rounds])
    errors = _table(["round"] + [f"eval {k}" for k in ERROR_KINDS] + ["train-sample error rate"],
                    [[str(m["round"])] + [_fmt((m.get("eval/errors") or {}).get(k, 0)) for k in ERROR_KINDS]
                     + [_fmt(m.get("exec/error_rate"), True)] for m in rounds])
    types = sorted({key.split("/", 2)[2] for m in rounds for key in m if key.startswith("eval/accuracy/")})
    by_type = _table(["round"] + types, [[str(m["round"])] + [_fmt(m.get(f"eval/accuracy/{t}"), True) for t in types]
                                         for m in rounds])
    last = rounds[-1]["round"] if rounds else None
    eval_rows = read_jsonl(run.artifact(last, "eval.jsonl")) if last is not None and run.has(last, "eval.jsonl") else []
    shown = {**config, **{f"{group}.{k}": v for group in ("lora", "train", "sampling")
                          for k, v in (config.get(group) or {}).items()}}
    settings = ", ".join(f"{k}={html.escape(str(shown.get(k)))}" for k in
                         ("task", "policy", "model", "profile", "rounds", "questions_per_round", "sampling.n", "sampling.retry",
                          "tau", "lora.r", "train.learning_rate") if k in shown)
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>viprog run {html.escape(run.root.name)}</title>"
            f"<style>{CSS}</style></head><body><h1>Self-training run <code>{html.escape(run.root.name)}</code></h1>"
            f"<p>{settings}</p><h2>Accuracy per round</h2>{plot}<p>Round 0 is the few-shot baseline.</p>{summary}"
            f"<h2>Accuracy per question type</h2>{by_type}<h2>Error kinds</h2>{errors}"
            f"<h2>Gallery: round {last} evaluation</h2><p class='legend'><span style='color:#1e64e6'>■ boxes found by "
            f"the program's calls</span><span style='color:#14a028'>■ answer box</span><span style='color:#e6be00'>"
            f"■ gold box</span></p>{gallery(eval_rows, gallery_size)}</body></html>")
    return write_text_atomic(run.report_path, page)

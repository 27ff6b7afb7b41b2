"""`gptjax inspect report`: one self-contained HTML page (inline CSS, JS and PNGs; no server, no network)."""

from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np

from gptjax.errors import UserError
from gptjax.files import atomic_write
from gptjax.look import figures, heads, hooks

MAX_TOKENS = 128  # every head's T x T weights go into the page: GPT-2's 144 heads at 128 tokens are ~14 MB

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 70em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: .5em 0; } td, th { padding: 2px 8px; text-align: right; }
th { background: #f0f0f0; } td.name { text-align: left; } .note { color: #666; }
img { max-width: 100%; } .bar { display: inline-block; height: .8em; vertical-align: middle; }
#heads button { margin: 1px; font: inherit; } #heads button.on { background: #335; color: white; }
#tokens span { font: 16px monospace; white-space: pre; padding: 2px 1px; border: 1px solid #eee; cursor: default; }
#tokens span.query { outline: 2px solid #d60; }
#matrix td { width: 14px; height: 14px; padding: 0; border: 1px solid #fff; }
#matrix th { font: 11px monospace; padding: 0 2px; background: none; }
"""

# Hover a token to see where it attends, in the head picked above; the first view is drawn
# on load (the last token, layer 0 head 0, unless the address names others) so the page is never blank.
SCRIPT = """
const data = JSON.parse(document.getElementById("attention-data").textContent);
// A view can be linked to: report.html#layer=1&head=3&query=5.
const linked = new URLSearchParams(location.hash.slice(1));
const pick = (key, size, fallback) => {
  const v = parseInt(linked.get(key), 10);
  return v >= 0 && v < size ? v : fallback;
};
let layer = pick("layer", data.attn.length, 0), head = pick("head", data.attn[0].length, 0);
let query = pick("query", data.tokens.length, data.tokens.length - 1);
const spans = [], buttons = [];
const caption = document.getElementById("caption");
function draw() {
  const row = data.attn[layer][head][query];
  spans.forEach((s, i) => {
    const w = i <= query ? row[i] : 0;
    s.style.background = `rgba(40, 90, 200, ${w.toFixed(3)})`;
    s.style.color = w > 0.5 ? "white" : "black";
    s.title = `position ${i}: attention ${w.toFixed(3)}`;
    s.className = i === query ? "query" : "";
  });
  matrix.forEach((cells, t) => cells.forEach((c, i) => {
    const w = data.attn[layer][head][t][i];
    c.style.background = `rgba(40, 90, 200, ${w.toFixed(3)})`;
    c.style.outline = t === query ? "1px solid #d60" : "";
    c.title = `query ${t} ${JSON.stringify(data.tokens[t])} -> key ${i} ${JSON.stringify(data.tokens[i])}: ` +
      w.toFixed(3);
  }));
  buttons.forEach(b => b.className = (+b.dataset.layer === layer && +b.dataset.head === head) ? "on" : "");
  caption.textContent = `layer ${layer}, head ${head}: where position ${query} ` +
    `(${JSON.stringify(data.tokens[query])}) attends`;
}
const picker = document.getElementById("heads");
data.attn.forEach((heads, l) => {
  const line = picker.appendChild(document.createElement("div"));
  line.append(`layer ${l}: `);
  heads.forEach((_, h) => {
    const b = line.appendChild(document.createElement("button"));
    b.textContent = `head ${h}`; b.dataset.layer = l; b.dataset.head = h;
    b.onclick = () => { layer = l; head = h; draw(); };
    buttons.push(b);
  });
});
const box = document.getElementById("tokens");
data.tokens.forEach((t, i) => {
  const s = box.appendChild(document.createElement("span"));
  s.textContent = t.replace(/\\n/g, "⏎");
  s.onmouseenter = () => { query = i; draw(); };
  spans.push(s);
});
// The whole map of the picked head: rows are queries, columns the keys they attend to.
const show = t => t.replace(/\\n/g, "⏎").replace(/ /g, "␣");
const table = document.getElementById("matrix");
const header = table.appendChild(document.createElement("tr"));
header.appendChild(document.createElement("th"));
data.tokens.forEach(t => { header.appendChild(document.createElement("th")).textContent = show(t); });
const matrix = data.tokens.map((t, q) => {
  const tr = table.appendChild(document.createElement("tr"));
  tr.appendChild(document.createElement("th")).textContent = show(t);
  return data.tokens.slice(0, q + 1).map((k, i) => {
    const c = tr.appendChild(document.createElement("td"));
    c.onmouseenter = () => { query = q; draw(); };
    return c;
  });
});
draw();
document.body.dataset.ready = "yes";
"""


class ReportError(UserError):
    """A report that cannot be written where asked."""


def check_out(path: str) -> Path:
    out = Path(path)
    if out.suffix.lower() not in (".html", ".htm"):
        raise ReportError(f"--out {path}: give a file name ending in .html")
    if not out.parent.is_dir():
        raise ReportError(f"--out {path}: folder {out.parent} does not exist; create it or write elsewhere")
    return out


def cell(v: float, peak: float, diverging: bool) -> str:
    """A table cell shaded by its value: red for a loss that rises, blue for one that falls; or by a score."""
    a = min(abs(v) / peak, 1.0) if peak else 0.0
    rgb = ("214, 96, 77" if v > 0 else "67, 147, 195") if diverging else "80, 160, 90"
    text = f"{v:+.4f}" if diverging else f"{v:.3f}"
    return f'<td style="background: rgba({rgb}, {a:.2f})">{text}</td>'


def grid_table(rows: list[tuple[str, list[float]]], columns: list[str], diverging: bool) -> str:
    peak = max((abs(v) for _, vs in rows for v in vs), default=0.0)
    head = "".join(f"<th>{html.escape(c)}</th>" for c in ["", *columns])
    body = "".join(f'<tr><td class="name">{html.escape(name)}</td>{"".join(cell(v, peak, diverging) for v in vs)}'
                   f"</tr>" for name, vs in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def knockout_section(k: heads.Knockouts) -> str:
    L, H = k.heads_lh.shape
    rows = [(f"layer {l}", [*k.heads_lh[l], k.attn_l[l], k.mlp_l[l]]) for l in range(L)]
    what = "zero" if k.ablation == "zero" else "its mean over the same batches"
    return (f'<section id="knockouts"><h2>Which heads matter: knock-outs</h2>'
            f"<p>Val loss {k.base:.4f} with nothing knocked out; each cell is the change when that one part's "
            f"output is replaced by {what} ({k.ablation} ablation).</p>"
            f"{grid_table(rows, [*(f'head {h}' for h in range(H)), 'attention', 'MLP'], True)}"
            f'<img alt="knock-out heatmap" src="{figures.data_uri(figures.knockout_figure(k))}"></section>')


def roles_section(scores: dict[str, np.ndarray]) -> str:
    L, H = next(iter(scores.values())).shape
    rows = [(f"layer {l} head {h}", [scores[r][l, h] for r in heads.ROLES]) for l in range(L) for h in range(H)]
    return ('<section id="roles"><h2>What heads do: role scores</h2>'
            "<p>On random tokens repeated twice: the share of each head's attention on the previous token, on "
            "earlier copies of its own token (duplicate), and on the token after an earlier copy (induction).</p>"
            f"{grid_table(rows, list(heads.ROLES), False)}"
            f'<img alt="role heatmap" src="{figures.data_uri(figures.roles_figure(scores))}"></section>')


def attribution_section(a, token: str) -> str:
    peak = max(abs(v) for _, v in a.rows()) or 1.0
    bar = lambda v: (f'<span class="bar" style="width: {12 * abs(v) / peak:.2f}em; '
                     f'background: {"#d6604d" if v > 0 else "#4393c3"}"></span>')
    body = "".join(f'<tr><td class="name">{html.escape(part)}</td><td>{v:+.4f}</td><td class="name">{bar(v)}</td>'
                   f"</tr>" for part, v in a.rows())
    return (f'<section id="attribution"><h2>Direct logit attribution of {html.escape(token)}</h2>'
            f"<p>The logit of {html.escape(token)} after the prompt is {a.logit:.4f}{figures.before_cap(a)}; the "
            f"parts below sum to {a.total():.4f} ({html.escape(a.note())}): the frozen norm is linear, so each "
            f"part's contribution is exact and they add up.</p>"
            f"<table><tr><th>part</th><th>contribution</th><th></th></tr>{body}</table></section>")


def attention_section(model, ids: list[int], tokens: list[str]) -> str:
    _, cache = hooks.run_with_cache(model, ids)
    attn_lhts = np.round(np.asarray(cache.probs_lbhts[:, 0], np.float64), 3).tolist()
    payload = json.dumps({"tokens": tokens, "attn": attn_lhts}).replace("</", "<\\/")
    return ('<section id="attention"><h2>Attention over the prompt</h2>'
            '<p class="note">Pick a head, then hover over a token: the tokens it attends to light up.</p>'
            '<div id="heads"></div><p id="caption"></p><div id="tokens"></div>'
            '<p class="note">The picked head\'s whole map (rows: queries, columns: keys; hover for the weight):</p>'
            '<table id="matrix"></table>'
            f'<script type="application/json" id="attention-data">{payload}</script></section>')


def build(title: str, run, model, ids: list[int], knock: heads.Knockouts, scores, attribution, token: str) -> str:
    """The whole page as one string."""
    cfg, title = run.cfg.model, html.escape(title)
    tokens = [run.tokenizer.decode([i]) for i in ids]
    prompt = html.escape("".join(tokens))
    return (f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>gptjax report: {title}</title>'
            f"<style>{STYLE}</style></head><body><h1>Inside {title}</h1>"
            f'<p class="note">Step {run.step}: {cfg.n_layer} layers, {cfg.n_head} heads of size {cfg.head_dim}, '
            f"n_embd {cfg.n_embd}, n_ctx {cfg.n_ctx}. Prompt: <code>{prompt}</code></p>"
            f"{knockout_section(knock)}{roles_section(scores)}{attribution_section(attribution, token)}"
            f"{attention_section(model, ids, tokens)}<script>{SCRIPT}</script></body></html>")


def write(page: str, out: Path) -> None:
    try:
        atomic_write(out, page)  # a half-written page never replaces a whole one
    except OSError as e:
        raise ReportError(f"cannot write {out}: {e.strerror or e}") from None

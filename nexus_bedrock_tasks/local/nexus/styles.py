"""The web page's stylesheet, inlined into every page (no external asset, works offline)."""

from __future__ import annotations

from typing import Final

STYLESHEET: Final = """
:root { --ok:#1a7f37; --err:#cf222e; --run:#0969da; --line:#d0d7de; --muted:#57606a;
        --bg:#f6f8fa; font-family: system-ui, -apple-system, "Segoe UI", sans-serif; }
body { margin:0; color:#1f2328; background:#fff; }
header { display:flex; gap:1rem; align-items:baseline; padding:.75rem 1.5rem;
         border-bottom:1px solid var(--line); background:var(--bg); }
header .home { font-weight:700; color:inherit; text-decoration:none; font-size:1.1rem; }
main { padding:1rem 1.5rem 3rem; max-width:1200px; }
h1 { font-size:1.4rem; margin:.5rem 0; word-break:break-word; }
h2 { font-size:1.1rem; margin:1.5rem 0 .5rem; }
a { color:var(--run); }
.muted { color:var(--muted); }
.num { text-align:right; font-variant-numeric:tabular-nums; }
.filters { display:flex; gap:1rem; align-items:center; margin:.5rem 0 1rem; }
.filters select, .filters button { font:inherit; padding:.2rem .4rem; }
table.traces { border-collapse:collapse; width:100%; font-size:.9rem; }
table.traces th, table.traces td { padding:.4rem .6rem; border-bottom:1px solid var(--line);
                                   text-align:left; vertical-align:top; }
table.traces th.num, table.traces td.num { text-align:right; }
table.traces tbody tr:hover { background:var(--bg); }
td.name { max-width:28rem; word-break:break-word; }
td.tokens .inout { display:block; font-size:.75rem; }
td.empty { text-align:center; padding:2rem; color:var(--muted); }
.badge { display:inline-block; padding:0 .45rem; border-radius:1rem; font-size:.75rem;
         line-height:1.4rem; color:#fff; background:var(--muted); }
.badge.ok, .badge.success { background:var(--ok); }
.badge.error, .badge.timeout { background:var(--err); }
.badge.running { background:var(--run); }
dl.facts { display:flex; flex-wrap:wrap; gap:.5rem 2rem; margin:.5rem 0; }
dl.facts .fact { min-width:7rem; }
dl.facts dt { font-size:.75rem; color:var(--muted); }
dl.facts dd { margin:0; font-weight:600; font-variant-numeric:tabular-nums; }
.timeline { border:1px solid var(--line); border-radius:6px; font-size:.85rem; }
.timeline .axis { display:flex; justify-content:space-between; padding:.3rem .6rem;
                  margin-left:40%; color:var(--muted); border-bottom:1px solid var(--line); }
.span-row { display:grid; grid-template-columns:40% 60%; border-bottom:1px solid var(--line); }
.span-row:last-child { border-bottom:0; }
.span-row .label { padding:.35rem .6rem; overflow-wrap:anywhere; }
.span-row .track { position:relative; margin:.45rem .6rem; min-height:1rem;
                   background:repeating-linear-gradient(90deg, transparent 0 24.8%,
                   var(--line) 24.8% 25%); }
.span-row .bar { position:absolute; top:0; bottom:0; border-radius:3px; background:var(--ok); }
.span-row.error .bar { background:var(--err); }
.span-row .bar.open { opacity:.45; background-image:repeating-linear-gradient(45deg,
                      transparent 0 4px, rgba(255,255,255,.6) 4px 8px); }
.span-row .payloads { grid-column:1 / span 2; padding:0 .6rem .4rem; }
details { margin:.2rem 0; }
details summary { cursor:pointer; color:var(--muted); font-size:.8rem; }
details.error summary { color:var(--err); }
pre { margin:.25rem 0; padding:.5rem; background:var(--bg); border-radius:4px;
      white-space:pre-wrap; word-break:break-word; max-height:24rem; overflow:auto; }
"""

/**
 * The dashboard's stylesheet, inlined into the page by `dashboard.ts`.
 *
 * @module
 */

/** CSS of the dashboard page (light and dark, by the browser's preference). */
export const DASHBOARD_CSS = `
:root {
  color-scheme: light dark;
  --bg: #f7f7f5; --fg: #1d1d1b; --muted: #5d5d58; --card: #ffffff; --line: #d9d9d3;
  --s1: #1f5fbf; --s2: #b4461e; --good: #1d6b35; --bad: #a3221a; --warn: #8a5a00;
}
@media (prefers-color-scheme: dark) {
  :root {
    --bg: #161615; --fg: #ecece8; --muted: #a8a8a0; --card: #20201e; --line: #3a3a36;
    --s1: #79a8f2; --s2: #f0946c; --good: #6fcf8a; --bad: #ff8a80; --warn: #f2c35b;
  }
}
* { box-sizing: border-box; }
body {
  margin: 0; background: var(--bg); color: var(--fg);
  font: 15px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
}
header, main { max-width: 1200px; margin: 0 auto; padding: 0.75rem 1rem; }
header { display: flex; flex-wrap: wrap; align-items: baseline; gap: 0.5rem 1.5rem; }
h1 { font-size: 1.4rem; margin: 0; }
h2 { font-size: 1.05rem; margin: 0 0 0.5rem; }
.meta { color: var(--muted); margin: 0; }
#status { margin: 0; padding: 0.15rem 0.6rem; border: 1px solid var(--line); border-radius: 1rem; }
#status[data-state="live"] { color: var(--good); }
#status[data-state="reconnecting"], #status[data-state="stale"], #status[data-state="refused"] {
  color: var(--warn);
}
#status[data-state="unreachable"] { color: var(--bad); font-weight: 600; }
body[data-state="unreachable"] main { opacity: 0.6; }
.grid { display: grid; gap: 1rem; grid-template-columns: repeat(auto-fit, minmax(260px, 1fr)); }
.wide { grid-column: 1 / -1; }
@media (min-width: 600px) { .span2 { grid-column: span 2; } }
section, figure {
  background: var(--card); border: 1px solid var(--line); border-radius: 6px;
  padding: 0.75rem 1rem; margin: 0;
}
dl { margin: 0; }
dl div {
  display: flex; justify-content: space-between; gap: 1rem; padding: 0.1rem 0;
  break-inside: avoid;
}
.wide dl { columns: 17rem; column-gap: 2rem; }
dt { color: var(--muted); }
dd {
  margin: 0; text-align: right; font-variant-numeric: tabular-nums; font-weight: 600;
  white-space: nowrap;
}
.charts { display: grid; gap: 1rem; grid-template-columns: repeat(auto-fit, minmax(300px, 1fr)); }
table { border-collapse: collapse; width: 100%; font-variant-numeric: tabular-nums; }
th, td { text-align: left; padding: 0.2rem 0.6rem; border-bottom: 1px solid var(--line); }
th:first-child, td:first-child { padding-left: 0; }
td.n, th.n { text-align: right; }
#workers td { white-space: nowrap; }
tbody th { font-weight: normal; color: var(--muted); }
caption { text-align: left; color: var(--muted); padding-bottom: 0.3rem; }
.state-up { color: var(--good); }
.state-down, .state-ejected { color: var(--bad); font-weight: 600; }
.state-draining { color: var(--warn); }
canvas { width: 100%; height: 170px; display: block; }
figcaption { color: var(--muted); margin-top: 0.4rem; }
figcaption ul { margin: 0.2rem 0 0; padding-left: 1.1rem; }
.key-solid, .key-dashed {
  display: inline-block; width: 1.8em; vertical-align: middle; margin-right: 0.3em;
  border-top: 3px solid var(--s1);
}
.key-dashed { border-top: 3px dashed var(--s2); }
.nonzero { color: var(--bad); }
`;

/**
 * The dashboard's script, inlined into the page by `dashboard.ts`: it follows `GET /events`
 * (EventSource, which reconnects by itself), writes every value into the elements that name it
 * (`data-field`), fills the upstream, worker and close-reason tables, and draws the 5-minute
 * charts on `<canvas>` with its own code. Plain ES2017 in a string: no modules, no libraries, no
 * network access beyond the page's own origin, and no `innerHTML` (upstream names and errors are
 * text).
 *
 * @module
 */

/** JavaScript of the dashboard page. */
export const DASHBOARD_SCRIPT = String.raw`
(function () {
  "use strict";
  var WINDOW_S = 300;
  var TROUBLE_MS = 5000;
  var history = [];
  // The previous snapshot's upstream counters, for per-upstream rates (the proxy keeps only
  // totals per upstream: a rate is the difference of two snapshots over the time between them).
  var upstreamsBefore = null;
  var source = null;
  var retryTimer = 0;
  var lastData = 0;
  var lastUptime = -1;
  var troubleSince = 0;
  var lastUpdate = "";
  var nf = new Intl.NumberFormat("en-US");

  function $(id) { return document.getElementById(id); }

  function fmt(kind, v) {
    if (typeof v !== "number" || !isFinite(v)) return "–";
    switch (kind) {
      case "rate": return v >= 1000 ? nf.format(Math.round(v)) : v.toFixed(1);
      case "seconds":
        if (v === 0) return "0";
        if (v < 0.001) return nf.format(Math.round(v * 1e6)) + " µs";
        if (v < 1) return (v * 1000).toFixed(v < 0.01 ? 2 : 1) + " ms";
        return v.toFixed(2) + " s";
      case "bytes": {
        var units = ["B", "KiB", "MiB", "GiB", "TiB"];
        var i = 0, x = v;
        while (x >= 1024 && i < units.length - 1) { x /= 1024; i++; }
        return (i === 0 ? String(x) : x.toFixed(1)) + " " + units[i];
      }
      case "duration": {
        var s = Math.floor(v), d = Math.floor(s / 86400), h = Math.floor(s / 3600) % 24;
        var m = Math.floor(s / 60) % 60;
        return (d ? d + " d " : "") + (d || h ? h + " h " : "") + (d || h || m ? m + " min " : "") +
          (s % 60) + " s";
      }
      default: return nf.format(v);
    }
  }

  function pick(obj, path) {
    var parts = path.split(".");
    for (var i = 0; i < parts.length; i++) {
      if (obj === null || typeof obj !== "object") return undefined;
      obj = obj[parts[i]];
    }
    return obj;
  }

  function setValue(el, v, kind) {
    el.setAttribute("data-value", String(v));
    el.textContent = fmt(kind || el.getAttribute("data-format"), v);
    if (el.hasAttribute("data-alert")) el.classList.toggle("nonzero", v > 0);
    if (kind === "bytes" || el.getAttribute("data-format") === "bytes") {
      el.title = nf.format(v) + " bytes";
    }
  }

  function fill(s) {
    var els = document.querySelectorAll("[data-field]");
    for (var i = 0; i < els.length; i++) {
      var v = pick(s, els[i].getAttribute("data-field"));
      if (v === undefined && els[i].hasAttribute("data-zero")) v = 0;
      if (typeof v === "number") setValue(els[i], v);
    }
  }

  function cell(tag, text, cls) {
    var c = document.createElement(tag);
    c.textContent = text;
    if (cls) c.className = cls;
    return c;
  }

  function fillReasons(closed) {
    var body = $("close-reasons");
    var known = {};
    var rows = body.querySelectorAll("[data-reason]");
    for (var i = 0; i < rows.length; i++) known[rows[i].getAttribute("data-reason")] = true;
    Object.keys(closed || {}).forEach(function (reason) {
      if (known[reason]) return;
      var tr = document.createElement("tr");
      tr.setAttribute("data-reason", reason);
      tr.appendChild(cell("th", reason.replace(/_/g, " ")));
      var td = cell("td", "", "n");
      td.setAttribute("data-field", "connections_closed." + reason);
      tr.appendChild(td);
      body.appendChild(tr);
    });
  }

  // Per second between two snapshots; null when there is no earlier one, no time passed, or the
  // counter went back (the proxy restarted, the upstream was removed and added again).
  function perSecond(now, before, dt) {
    if (before === undefined || !(dt > 0) || typeof now !== "number" || now < before) return null;
    return (now - before) / dt;
  }

  function fillUpstreams(list, uptime) {
    var before = upstreamsBefore;
    upstreamsBefore = { uptime: uptime, byName: {} };
    (list || []).forEach(function (u) {
      upstreamsBefore.byName[u.name] = { address: u.address, requests: u.requests, replies: u.replies };
    });
    var body = $("upstreams");
    while (body.firstChild) body.removeChild(body.firstChild);
    if (!list || list.length === 0) {
      var tr0 = document.createElement("tr");
      var td0 = cell("td", "No upstream figures reported.");
      td0.colSpan = 11;
      tr0.appendChild(td0);
      body.appendChild(tr0);
      return;
    }
    list.forEach(function (u) {
      var tr = document.createElement("tr");
      var name = cell("th", u.name);
      name.scope = "row";
      tr.appendChild(name);
      tr.appendChild(cell("td", u.address));
      tr.appendChild(cell("td", u.state, "state-" + u.state));
      tr.appendChild(cell("td", nf.format(u.connections_active) + " / " + nf.format(u.connections_total), "n"));
      tr.appendChild(cell("td", nf.format(u.requests), "n"));
      tr.appendChild(cell("td", nf.format(u.replies), "n"));
      var was = before && before.byName[u.name];
      if (was && was.address !== u.address) was = undefined; // another upstream of that name
      var dt = before ? uptime - before.uptime : 0;
      tr.appendChild(cell("td", fmt("rate", perSecond(u.requests, was && was.requests, dt)), "n"));
      tr.appendChild(cell("td", fmt("rate", perSecond(u.replies, was && was.replies, dt)), "n"));
      tr.appendChild(cell("td", nf.format(u.connect_failures) + " / " + nf.format(u.stream_errors), "n"));
      tr.appendChild(cell("td", nf.format(u.ejections), "n"));
      var c = u.last_check;
      var check = c === null || c === undefined ? "not yet" :
        (c.ok ? "ok" : "failed" + (c.error ? " (" + c.error + ")" : "")) + ", " +
          fmt("seconds", c.latency_ms / 1000) + ", " + Math.round(c.age_s) + " s ago";
      tr.appendChild(cell("td", check, c && !c.ok ? "state-down" : ""));
      body.appendChild(tr);
    });
  }

  // " (42 %)": a worker's part of the total, the balance at a glance; nothing when the total is 0.
  function share(v, total) {
    return total > 0 ? " (" + Math.round(100 * v / total) + " %)" : "";
  }

  function fillWorkers(list) {
    list = list || [];
    var body = $("workers");
    while (body.firstChild) body.removeChild(body.firstChild);
    body.closest("section").hidden = list.length === 0;
    $("workers-caption").textContent = list.length === 1 ?
      "One data-plane worker: nothing to balance (--workers runs more)." :
      "One row per data-plane worker: how the kernel spreads connections and load across them.";
    var connections = 0, replies = 0, restarted = false;
    list.forEach(function (w) {
      connections += w.connections_active;
      replies += w.replies_per_second;
      if (w.restarts > 0) restarted = true;
    });
    $("workers-restarts").hidden = !restarted;
    list.forEach(function (w) {
      var tr = document.createElement("tr");
      tr.setAttribute("data-worker", String(w.worker));
      var name = cell("th", String(w.worker));
      name.scope = "row";
      tr.appendChild(name);
      tr.appendChild(cell("td", nf.format(w.connections_active) + share(w.connections_active, connections), "n"));
      tr.appendChild(cell("td", fmt("rate", w.replies_per_second) + share(w.replies_per_second, replies), "n"));
      if (restarted) tr.appendChild(cell("td", nf.format(w.restarts), w.restarts > 0 ? "n nonzero" : "n"));
      body.appendChild(tr);
    });
  }

  var CHARTS = [
    {
      id: "chart-rates", kind: "rate", floor: 1, series: [
        { label: "requests/s", get: function (s) { return s.request_rate_1s; } },
        { label: "responses/s", get: function (s) { return s.response_rate_1s; } },
      ],
    },
    {
      id: "chart-latency", kind: "seconds", floor: 0.001, series: [
        { label: "p50", get: function (s) { return s.latency_p50_seconds; } },
        { label: "p99", get: function (s) { return s.latency_p99_seconds; } },
      ],
    },
    {
      id: "chart-connections", kind: "int", floor: 1, series: [
        { label: "active connections", get: function (s) { return s.connections_active; } },
      ],
    },
  ];

  function niceCeil(v) {
    var p = Math.pow(10, Math.floor(Math.log10(v)));
    var steps = [1, 2, 2.5, 5, 10];
    for (var i = 0; i < steps.length; i++) if (steps[i] * p >= v) return steps[i] * p;
    return 10 * p;
  }

  function drawChart(chart, now) {
    var canvas = $(chart.id);
    var css = getComputedStyle(document.documentElement);
    var dpr = window.devicePixelRatio || 1;
    var w = canvas.clientWidth, h = canvas.clientHeight;
    if (w === 0 || h === 0) return;
    canvas.width = Math.round(w * dpr);
    canvas.height = Math.round(h * dpr);
    var g = canvas.getContext("2d");
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    g.clearRect(0, 0, w, h);
    var left = 64, right = 8, top = 8, bottom = 20;
    var max = chart.floor;
    history.forEach(function (p) {
      chart.series.forEach(function (s) { var v = s.get(p); if (v > max) max = v; });
    });
    max = niceCeil(max);
    /* Until 5 minutes have been seen, the axis spans what has (at least 30 s). */
    var span = history.length ? Math.min(WINDOW_S, Math.max(30, now - history[0].uptime_seconds)) : WINDOW_S;
    var x = function (t) { return left + (w - left - right) * (1 - (now - t) / span); };
    var y = function (v) { return top + (h - top - bottom) * (1 - v / max); };
    g.font = "11px system-ui, sans-serif";
    g.fillStyle = css.getPropertyValue("--muted");
    g.strokeStyle = css.getPropertyValue("--line");
    g.lineWidth = 1;
    g.textBaseline = "middle";
    g.textAlign = "right";
    for (var i = 0; i <= 4; i++) {
      var v = max * i / 4, yy = Math.round(y(v)) + 0.5;
      g.beginPath(); g.moveTo(left, yy); g.lineTo(w - right, yy); g.stroke();
      g.fillText(fmt(chart.kind, v), left - 6, yy);
    }
    g.textBaseline = "alphabetic";
    g.textAlign = "left";
    g.fillText(span >= WINDOW_S ? "−5 min" : "−" + Math.round(span) + " s", left, h - 4);
    g.textAlign = "right";
    g.fillText("now", w - right, h - 4);
    chart.series.forEach(function (s, k) {
      g.strokeStyle = css.getPropertyValue(k === 0 ? "--s1" : "--s2");
      g.lineWidth = 2;
      g.setLineDash(k === 0 ? [] : [6, 4]);
      g.beginPath();
      var started = false;
      history.forEach(function (p) {
        var px = x(p.uptime_seconds), py = y(s.get(p));
        if (started) g.lineTo(px, py); else g.moveTo(px, py);
        started = true;
      });
      g.stroke();
    });
    g.setLineDash([]);
  }

  function describeChart(chart) {
    var parts = chart.series.map(function (s, k) {
      var now = history.length ? s.get(history[history.length - 1]) : NaN;
      var max = 0;
      history.forEach(function (p) { var v = s.get(p); if (v > max) max = v; });
      var text = s.label + ": now " + fmt(chart.kind, now) + ", 5-minute max " + fmt(chart.kind, max);
      var li = $(chart.id + "-" + k);
      if (li) li.lastChild.textContent = text;
      return text;
    });
    $(chart.id).setAttribute("aria-label", parts.join("; "));
  }

  function record(s) {
    if (s.uptime_seconds < lastUptime) history = []; /* the proxy restarted */
    lastUptime = s.uptime_seconds;
    history.push({
      uptime_seconds: s.uptime_seconds,
      request_rate_1s: s.request_rate_1s,
      response_rate_1s: s.response_rate_1s,
      latency_p50_seconds: s.latency_p50_seconds,
      latency_p99_seconds: s.latency_p99_seconds,
      connections_active: s.connections_active,
    });
    while (history.length && history[0].uptime_seconds < s.uptime_seconds - WINDOW_S) history.shift();
  }

  function redraw() {
    var now = history.length ? history[history.length - 1].uptime_seconds : 0;
    CHARTS.forEach(function (c) { drawChart(c, now); describeChart(c); });
  }

  function update(s) {
    fillReasons(s.connections_closed);
    fill(s);
    fillUpstreams(s.upstreams, s.uptime_seconds);
    fillWorkers(s.workers);
    record(s);
    redraw();
    lastUpdate = new Date().toLocaleTimeString();
    $("updated").textContent = lastUpdate;
  }

  function status(state, text) {
    var el = $("status");
    if (el.getAttribute("data-state") === state && el.textContent === text) return;
    el.setAttribute("data-state", state);
    el.textContent = text;
    document.body.setAttribute("data-state", state);
  }

  function showTrouble() {
    var since = lastUpdate ? " Showing the values of " + lastUpdate + "." : "";
    if (Date.now() - troubleSince >= TROUBLE_MS) {
      status("unreachable", "Proxy unreachable: it stopped or the network is down; retrying." + since);
    } else {
      status("reconnecting", "Reconnecting…" + since);
    }
  }

  function connect() {
    clearTimeout(retryTimer);
    var es = new EventSource("events");
    source = es;
    es.onopen = function () {
      troubleSince = 0;
      status("live", "Live: updated every second.");
    };
    es.onmessage = function (e) {
      var s;
      try { s = JSON.parse(e.data); } catch (_) { return; }
      lastData = Date.now();
      troubleSince = 0;
      update(s);
      status("live", "Live: updated every second.");
    };
    es.onerror = function () {
      if (source !== es) return;
      if (!troubleSince) troubleSince = Date.now();
      if (es.readyState === EventSource.CLOSED) {
        /* Refused (503: too many viewers) or not an event stream: EventSource gives up, we do not. */
        es.close();
        source = null;
        status("refused", "The proxy refused the live stream (too many viewers?); retrying in 5 s.");
        retryTimer = setTimeout(connect, 5000);
      } else {
        showTrouble();
      }
    };
  }

  setInterval(function () {
    if (!source) return; /* refused: a retry is scheduled and the status says so */
    if (troubleSince) showTrouble();
    else if (lastData && Date.now() - lastData > TROUBLE_MS) {
      status("stale", "No update for " + Math.round((Date.now() - lastData) / 1000) + " s.");
    }
  }, 1000);
  window.addEventListener("resize", redraw);
  fillUpstreams([]);
  fillWorkers([]);
  connect();
})();
`;

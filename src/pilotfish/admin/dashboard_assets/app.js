// The dashboard: hash routes, one view each, redrawn from the admin API every 2 s while the
// tab is visible. A view builds its whole content off-page and swaps it in at once.

import { getJson, listOf } from "./api.js";
import { lineChart } from "./chart.js";
import {
  el,
  formatClock,
  formatCount,
  formatDateTime,
  formatMicros,
  formatMs,
  formatPercent,
  formatRate,
  formatSpan,
  isNumber,
  notice,
  shortHost,
  successClass,
  table,
} from "./dom.js";
import { renderGraph, serviceHostname } from "./graph.js";
import { renderWaterfall, traceSummary } from "./waterfall.js";

const POLL_MS = 2000;
const STAT_WINDOW = 60;
const SERIES_MINUTES = 15;
const TRACE_LOOKBACK_MS = 15 * 60 * 1000;

/** One redraw's reads: remembers whether the control plane answered at all. */
class Reads {
  constructor() {
    this.down = false;
  }

  async get(path) {
    const result = await getJson(path);
    if (!result.ok && result.down) this.down = true;
    return result;
  }
}

// --- pieces shared by the views ------------------------------------------------------------

function heading(title, subtitle) {
  return el(
    "div",
    { class: "heading" },
    el("h1", {}, title),
    subtitle ? el("p", { class: "subtitle" }, subtitle) : null,
  );
}

function successCell(rate) {
  return el("td", { class: ["num", "success", successClass(rate)] }, formatPercent(rate));
}

function badge(text, tone) {
  return el("span", { class: ["badge", tone] }, text);
}

const STATUS_TONES = { SYNCED: "good", STALE: "warn", NACKED: "bad", NOT_SENT: "none" };

function tile(metric, label, value, tone) {
  // "12.5 req/s": the number large, its unit small beside it.
  const [number, ...unit] = value.split(" ");
  return el(
    "div",
    { class: ["tile", tone], "data-metric": metric },
    el(
      "span",
      { class: "tile-value" },
      number,
      unit.length ? el("span", { class: "unit" }, ` ${unit.join(" ")}`) : null,
    ),
    el("span", { class: "tile-label" }, label),
  );
}

function statRowFor(rows, host) {
  return rows.find((r) => r.name === host);
}

// --- views ---------------------------------------------------------------------------------

async function graphView(reads) {
  const [graph, services] = await Promise.all([
    reads.get(`/api/graph?window=${STAT_WINDOW}`),
    reads.get("/api/services"),
  ]);
  const head = heading(
    "Service graph",
    `Who calls whom over the last ${STAT_WINDOW} s; a dashed line joins a service to the workloads that serve it.`,
  );
  if (!graph.ok)
    return [head, notice(`The service graph is not available. ${graph.message}`, "warn")];
  const nodes = listOf(graph.data, "nodes").filter((n) => n && n.id !== undefined);
  const ids = new Set(nodes.map((n) => n.id));
  const edges = listOf(graph.data, "edges").filter(
    (e) => e && ids.has(e.source) && ids.has(e.target),
  );
  if (!nodes.length) {
    return [
      head,
      notice(
        "No traffic in the last minute. Send requests through the gateway and the graph draws itself.",
        "info",
      ),
    ];
  }
  const names = new Map(
    nodes.map((n) => [n.id, n.kind === "service" ? shortHost(serviceHostname(n)) : String(n.name)]),
  );
  const rows = [...edges]
    .sort((a, b) => (Number(b.rps) || 0) - (Number(a.rps) || 0))
    .map((e) =>
      el(
        "tr",
        { "data-source": e.source, "data-target": e.target },
        el("td", {}, names.get(e.source)),
        el("td", {}, names.get(e.target)),
        el("td", { class: "num" }, formatRate(e.rps)),
        successCell(e.success_rate),
        el("td", { class: "num" }, formatMs(e.p99_ms)),
        el("td", { class: "num" }, formatCount(e.requests)),
      ),
    );
  return [
    head,
    el(
      "div",
      { class: "graph-frame" },
      renderGraph(nodes, edges, services.ok ? listOf(services.data, "services") : []),
    ),
    edges.length
      ? table(
          [
            "From",
            "To",
            { label: "Requests/s", num: true },
            { label: "Success", num: true },
            { label: "p99", num: true },
            { label: `Requests (${STAT_WINDOW} s)`, num: true },
          ],
          rows,
          { class: "edges" },
        )
      : notice("No calls between these yet.", "info"),
  ];
}

async function servicesView(reads) {
  const [services, stat] = await Promise.all([
    reads.get("/api/services"),
    reads.get(`/api/stat?by=service&window=${STAT_WINDOW}`),
  ]);
  const head = heading("Services", `The registry, with the traffic of the last ${STAT_WINDOW} s.`);
  if (!services.ok)
    return [head, notice(`The service registry is not available. ${services.message}`, "warn")];
  const list = listOf(services.data, "services");
  if (!list.length) return [head, notice("No services are registered yet.", "info")];
  const rows = stat.ok ? listOf(stat.data, "rows") : [];
  return [
    head,
    stat.ok ? null : notice(`Traffic numbers are not available. ${stat.message}`, "warn"),
    table(
      [
        "Service",
        "Ports",
        { label: "Endpoints", num: true },
        { label: "Requests/s", num: true },
        { label: "Success", num: true },
        { label: "p99", num: true },
      ],
      list.map((s) => {
        const row = statRowFor(rows, s.hostname) || {};
        const ports = listOf(s, "ports").map(
          (p) => `${p.number}/${String(p.protocol ?? "").toLowerCase()}`,
        );
        return el(
          "tr",
          { "data-service": s.hostname },
          el(
            "td",
            {},
            el("a", { href: `#/service/${encodeURIComponent(s.hostname)}` }, shortHost(s.hostname)),
            el("span", { class: "muted host" }, String(s.hostname)),
          ),
          el("td", {}, ports.join(", ")),
          el("td", { class: "num" }, String(listOf(s, "endpoints").length)),
          el("td", { class: "num" }, formatRate(row.rps)),
          successCell(row.success_rate),
          el("td", { class: "num" }, formatMs(row.p99_ms)),
        );
      }),
      { class: "services" },
    ),
  ];
}

function seriesCharts(series) {
  const points = listOf(series, "points").filter((p) => p && isNumber(p.t));
  const step = isNumber(series.step_seconds) ? series.step_seconds : 10;
  const end = Date.now() / 1000;
  const start = end - SERIES_MINUTES * 60;
  const pick = (key) =>
    points.map((p) => ({
      t: p.t,
      value: isNumber(p.requests) && p.requests === 0 && key !== "rps" ? null : p[key],
    }));
  const empty = !points.some((p) => Number(p.requests) > 0);
  const chart = (title, key, format, extra = {}) =>
    el(
      "figure",
      { class: "chart-box", "data-chart": key },
      el("figcaption", {}, title),
      lineChart(pick(key), { label: title, format, start, end, step, empty, ...extra }),
    );
  // Axis labels are short: the caption names the unit where the label does not.
  return el(
    "div",
    { class: "charts" },
    chart("Requests per second", "rps", (v) => String(Number(v.toFixed(2)))),
    chart("Success rate", "success_rate", (v) => `${Math.round(v * 100)}%`, { max: 1 }),
    chart("Latency p99", "p99_ms", (v) => (v === 0 ? "0" : formatMs(v))),
  );
}

function callersTable(graph, host) {
  const nodes = new Map(listOf(graph, "nodes").map((n) => [n.id, n]));
  const callers = listOf(graph, "edges").filter((e) => {
    const target = nodes.get(e.target);
    return target && target.kind === "service" && serviceHostname(target) === host;
  });
  if (!callers.length)
    return notice(`Nobody called this service in the last ${STAT_WINDOW} s.`, "info");
  return table(
    [
      "Caller",
      { label: "Requests/s", num: true },
      { label: "Success", num: true },
      { label: "p99", num: true },
    ],
    callers.map((e) =>
      el(
        "tr",
        { "data-source": e.source },
        el("td", {}, String(nodes.get(e.source)?.name ?? e.source)),
        el("td", { class: "num" }, formatRate(e.rps)),
        successCell(e.success_rate),
        el("td", { class: "num" }, formatMs(e.p99_ms)),
      ),
    ),
    { class: "callers" },
  );
}

async function serviceView(reads, host) {
  const [services, stat, series, graph] = await Promise.all([
    reads.get("/api/services"),
    reads.get(`/api/stat?by=service&window=${STAT_WINDOW}`),
    reads.get(`/api/series?service=${encodeURIComponent(host)}&minutes=${SERIES_MINUTES}`),
    reads.get(`/api/graph?window=${STAT_WINDOW}`),
  ]);
  const parts = [heading(shortHost(host), host)];

  if (stat.ok) {
    const row = statRowFor(listOf(stat.data, "rows"), host) || {};
    parts.push(
      el(
        "div",
        { class: "tiles", "data-window": STAT_WINDOW },
        tile("rps", "requests/s", formatRate(row.rps)),
        tile(
          "success_rate",
          "success rate",
          formatPercent(row.success_rate),
          successClass(row.success_rate),
        ),
        tile("p50_ms", "p50 latency", formatMs(row.p50_ms)),
        tile("p95_ms", "p95 latency", formatMs(row.p95_ms)),
        tile("p99_ms", "p99 latency", formatMs(row.p99_ms)),
        tile("requests", `requests in ${STAT_WINDOW} s`, formatCount(row.requests ?? 0)),
      ),
    );
  } else {
    parts.push(notice(`Current numbers are not available. ${stat.message}`, "warn"));
  }

  parts.push(el("h2", {}, `The last ${SERIES_MINUTES} minutes`));
  parts.push(
    series.ok
      ? seriesCharts(series.data)
      : notice(`Metrics over time are not available. ${series.message}`, "warn"),
  );

  parts.push(el("h2", {}, "Callers"));
  parts.push(
    graph.ok
      ? callersTable(graph.data, host)
      : notice(`Callers are not available. ${graph.message}`, "warn"),
  );

  parts.push(el("h2", {}, "Endpoints"));
  if (!services.ok) {
    parts.push(notice(`The service registry is not available. ${services.message}`, "warn"));
  } else {
    const service = listOf(services.data, "services").find((s) => s.hostname === host);
    const endpoints = service ? listOf(service, "endpoints") : [];
    if (!service) parts.push(notice(`No service ${host} is registered.`, "warn"));
    else if (!endpoints.length) parts.push(notice("This service has no live endpoints.", "warn"));
    else {
      parts.push(
        table(
          ["Endpoint", "Address", "Ports", "Labels"],
          endpoints.map((e) =>
            el(
              "tr",
              {},
              el("td", {}, String(e.name ?? "")),
              el("td", { class: "mono" }, String(e.address ?? "")),
              el(
                "td",
                { class: "mono" },
                Object.entries(e.ports || {})
                  .map(([k, v]) => `${k}\u2192${v}`)
                  .join(", "),
              ),
              el(
                "td",
                {},
                Object.entries(e.labels || {}).map(([k, v]) =>
                  el("span", { class: "label" }, `${k}=${v}`),
                ),
              ),
            ),
          ),
          { class: "endpoints" },
        ),
      );
    }
  }
  return parts;
}

function expiryCell(notAfter) {
  if (!notAfter) return el("td", { class: "muted" }, "no certificate");
  const when = Date.parse(notAfter);
  if (!Number.isFinite(when)) return el("td", {}, String(notAfter));
  const left = (when - Date.now()) / 1000;
  const tone = left <= 0 ? "bad" : left < 3600 ? "warn" : "good";
  const text = left <= 0 ? `expired ${formatSpan(-left)} ago` : `in ${formatSpan(left)}`;
  return el("td", { class: ["expiry", tone], title: formatDateTime(when / 1000) }, text);
}

async function proxiesView(reads) {
  const proxies = await reads.get("/api/proxies");
  const head = heading(
    "Proxies",
    "Every connected proxy, how far it has got with the config, and its workload certificate.",
  );
  if (!proxies.ok)
    return [head, notice(`The proxy list is not available. ${proxies.message}`, "warn")];
  const list = listOf(proxies.data, "proxies");
  if (!list.length) return [head, notice("No proxy is connected to this control plane.", "info")];
  const counts = {};
  for (const p of list) counts[p.status] = (counts[p.status] || 0) + 1;
  const summary = el(
    "p",
    { class: "summary" },
    Object.entries(counts)
      .sort()
      .map(([status, n]) => [badge(status, STATUS_TONES[status] || "none"), ` ${n} `]),
  );
  const rows = [];
  for (const p of list) {
    const types = Object.entries(p.types || {}).sort();
    rows.push(
      el(
        "tr",
        { "data-node": p.node_id, class: "proxy" },
        el("td", { class: "mono" }, String(p.node_id ?? "")),
        el("td", {}, String(p.kind ?? "")),
        el("td", {}, p.service ? shortHost(p.service) : el("span", { class: "muted" }, "\u2013")),
        el(
          "td",
          { class: "sync" },
          badge(String(p.status ?? "unknown"), STATUS_TONES[p.status] || "none"),
        ),
        el(
          "td",
          { class: "types" },
          types.map(([name, t]) =>
            el(
              "span",
              {
                class: ["type", STATUS_TONES[t.status] || "none"],
                title: `${name}: ${t.status}, acked ${t.acked_version ?? "nothing"}`,
              },
              name,
            ),
          ),
        ),
        el(
          "td",
          { class: "mono identity" },
          p.identity ? String(p.identity) : el("span", { class: "muted" }, "\u2013"),
        ),
        expiryCell(p.cert_not_after),
        el(
          "td",
          { class: "num", title: formatDateTime(p.connected_since) },
          isNumber(p.connected_since)
            ? `${formatSpan(Date.now() / 1000 - p.connected_since)} ago`
            : "\u2013",
        ),
      ),
    );
    for (const [name, t] of types) {
      if (t.nack)
        rows.push(
          el("tr", { class: "nack" }, el("td", { colspan: 8 }, `${name} rejected: ${t.nack}`)),
        );
    }
  }
  return [
    head,
    summary,
    table(
      [
        "Proxy",
        "Kind",
        "Service",
        "Sync",
        "Types",
        "Identity",
        "Certificate expires",
        { label: "Connected", num: true },
      ],
      rows,
      { class: "proxies" },
    ),
  ];
}

async function configView(reads) {
  const config = await reads.get("/api/config");
  const head = heading(
    "Config",
    "The mesh's YAML as the control plane last read it, and every problem found in it.",
  );
  if (!config.ok)
    return [head, notice(`The config status is not available. ${config.message}`, "warn")];
  const c = config.data;
  const parts = [head];
  const rejectedLast =
    isNumber(c.rejected_at) && (!isNumber(c.applied_at) || c.rejected_at > c.applied_at);
  if (rejectedLast) {
    parts.push(
      notice(
        isNumber(c.applied_at)
          ? `The last edit was rejected at ${formatClock(c.rejected_at)}; the mesh keeps running the config applied at ${formatClock(c.applied_at)}.`
          : `The config was rejected at ${formatClock(c.rejected_at)}; no config is applied yet.`,
        "bad",
      ),
    );
  }
  parts.push(
    el(
      "dl",
      { class: "facts" },
      el("dt", {}, "generation"),
      el("dd", { class: "num" }, String(c.generation ?? "\u2013")),
      el("dt", {}, "applied"),
      el("dd", {}, formatDateTime(c.applied_at)),
      el("dt", {}, "rejected"),
      el("dd", {}, formatDateTime(c.rejected_at)),
    ),
  );
  const diagnostics = listOf(c, "diagnostics");
  const problems = listOf(c, "snapshot_problems");
  if (!diagnostics.length && !problems.length) {
    parts.push(notice("No problems: the config applied cleanly.", "good"));
    return parts;
  }
  if (diagnostics.length) {
    parts.push(el("h2", {}, "Diagnostics"));
    parts.push(
      table(
        ["", "Where", "Field", "Problem"],
        diagnostics.map((d) =>
          el(
            "tr",
            { class: ["diagnostic", d.severity] },
            el(
              "td",
              {},
              badge(String(d.severity ?? "error"), d.severity === "warning" ? "warn" : "bad"),
            ),
            el("td", { class: "mono" }, `${d.file}:${d.line}:${d.col}`),
            el("td", { class: "mono" }, String(d.field ?? "")),
            el("td", {}, String(d.message ?? "")),
          ),
        ),
        { class: "diagnostics" },
      ),
    );
  }
  if (problems.length) {
    parts.push(el("h2", {}, "Snapshot problems"));
    parts.push(
      el(
        "ul",
        { class: "problems" },
        problems.map((p) => el("li", {}, String(p))),
      ),
    );
  }
  return parts;
}

async function tracesView(reads, params) {
  const service = params.get("service") || "";
  const query = new URLSearchParams({
    limit: "30",
    lookback: String(TRACE_LOOKBACK_MS),
    endTs: String(Date.now()),
  });
  if (service) query.set("serviceName", service);
  const [services, traces] = await Promise.all([
    reads.get("/api/v2/services"),
    reads.get(`/api/v2/traces?${query}`),
  ]);
  const head = heading(
    "Traces",
    "Recent traces kept by the control plane (Zipkin's v2 API on this port).",
  );
  if (!traces.ok) return [head, notice(`Traces are not available. ${traces.message}`, "warn")];
  const names = services.ok && Array.isArray(services.data) ? services.data.map(String) : [];
  const filter = el(
    "p",
    { class: "filter" },
    "Service: ",
    [["", "all"], ...names.map((n) => [n, n])].map(([value, label]) =>
      el(
        "a",
        {
          href: value ? `#/traces?service=${encodeURIComponent(value)}` : "#/traces",
          class: value === service ? "active" : null,
        },
        label,
      ),
    ),
  );
  const list = Array.isArray(traces.data)
    ? traces.data.filter((t) => Array.isArray(t) && t.length)
    : [];
  if (!list.length) {
    return [
      head,
      filter,
      notice(
        `No traces in the last ${SERIES_MINUTES} minutes${service ? ` for ${service}` : ""}. Requests through the mesh are traced as they happen.`,
        "info",
      ),
    ];
  }
  const summaries = list.map(traceSummary).sort((a, b) => b.start - a.start);
  return [
    head,
    filter,
    table(
      [
        "Started",
        "Root span",
        { label: "Duration", num: true },
        { label: "Spans", num: true },
        "Services",
        "",
      ],
      summaries.map((s) =>
        el(
          "tr",
          { class: "trace", "data-trace": s.traceId },
          el("td", { class: "num" }, formatClock(s.start / 1e6)),
          el(
            "td",
            {},
            el(
              "a",
              { href: `#/trace/${encodeURIComponent(s.traceId)}` },
              s.root
                ? `${s.root.localEndpoint?.serviceName ?? "?"}: ${s.root.name ?? ""}`
                : s.traceId,
            ),
          ),
          el("td", { class: "num" }, formatMicros(s.duration)),
          el("td", { class: "num" }, String(s.count)),
          el("td", {}, s.services.join(", ")),
          el("td", {}, s.failed ? badge("error", "bad") : badge("ok", "good")),
        ),
      ),
      { class: "traces" },
    ),
  ];
}

async function traceView(reads, id) {
  const trace = await reads.get(`/api/v2/trace/${encodeURIComponent(id)}`);
  const head = heading("Trace", id);
  const back = el("p", {}, el("a", { href: "#/traces" }, "\u2190 all traces"));
  if (!trace.ok && trace.status === 404) {
    return [
      head,
      back,
      notice("The control plane keeps no trace with this id: it keeps recent traces only.", "warn"),
    ];
  }
  if (!trace.ok)
    return [head, back, notice(`This trace is not available. ${trace.message}`, "warn")];
  const spans = Array.isArray(trace.data)
    ? trace.data.filter((s) => s && typeof s === "object")
    : [];
  if (!spans.length) return [head, back, notice("This trace has no spans.", "info")];
  return [head, back, renderWaterfall(spans)];
}

// --- routing and the live loop ---------------------------------------------------------------

function parseRoute() {
  const raw = location.hash.replace(/^#\/?/, "");
  const [path, search = ""] = raw.split("?");
  const [name, ...rest] = path.split("/");
  const arg = rest.length ? decodeURIComponent(rest.join("/")) : "";
  return { name: name || "graph", arg, params: new URLSearchParams(search) };
}

const VIEWS = {
  graph: { nav: "graph", title: "Graph", draw: (reads) => graphView(reads) },
  services: { nav: "services", title: "Services", draw: (reads) => servicesView(reads) },
  service: {
    nav: "services",
    title: "Service",
    draw: (reads, route) => serviceView(reads, route.arg),
  },
  proxies: { nav: "proxies", title: "Proxies", draw: (reads) => proxiesView(reads) },
  config: { nav: "config", title: "Config", draw: (reads) => configView(reads) },
  traces: {
    nav: "traces",
    title: "Traces",
    draw: (reads, route) => tracesView(reads, route.params),
  },
  trace: { nav: "traces", title: "Trace", draw: (reads, route) => traceView(reads, route.arg) },
};

class Dashboard {
  constructor(root, status, nav) {
    this.root = root;
    this.status = status;
    this.nav = nav;
    this.timer = null;
    this.drawing = 0;
  }

  start() {
    window.addEventListener("hashchange", () => this.redraw());
    document.addEventListener("visibilitychange", () => {
      if (document.visibilityState === "visible") this.redraw();
      else this.pause();
    });
    this.redraw();
  }

  pause() {
    clearTimeout(this.timer);
    this.timer = null;
    this.setStatus("paused", "paused while the tab is hidden");
  }

  setStatus(tone, text) {
    this.status.className = `status ${tone}`;
    this.status.textContent = text;
  }

  async redraw() {
    clearTimeout(this.timer);
    this.timer = null;
    if (document.visibilityState === "hidden") return this.pause();
    const ticket = ++this.drawing;
    const route = parseRoute();
    const view = VIEWS[route.name];
    const reads = new Reads();
    let content;
    if (!view) {
      content = notice(`There is no page "${route.name}" here.`, "warn");
    } else {
      content = await view.draw(reads, route);
    }
    if (ticket !== this.drawing) return; // a newer redraw (another route) took over
    const open = new Set(
      [...this.root.querySelectorAll("details[open][data-span-id]")].map((d) => d.dataset.spanId),
    );
    const fragment = el("div", { class: "page", "data-view": route.name }, content);
    for (const details of fragment.querySelectorAll("details[data-span-id]")) {
      if (open.has(details.dataset.spanId)) details.open = true;
    }
    this.root.replaceChildren(fragment);
    document.title = `${view ? view.title : "Not found"} \u00b7 Pilotfish`;
    for (const link of this.nav.querySelectorAll("a[data-route]")) {
      link.classList.toggle("active", view !== undefined && link.dataset.route === view.nav);
    }
    if (reads.down) this.setStatus("bad", "control plane not answering");
    else this.setStatus("live", `live \u00b7 ${formatClock(Date.now() / 1000)}`);
    this.timer = setTimeout(() => this.redraw(), POLL_MS);
  }
}

new Dashboard(
  document.getElementById("view"),
  document.getElementById("status"),
  document.getElementById("nav"),
).start();

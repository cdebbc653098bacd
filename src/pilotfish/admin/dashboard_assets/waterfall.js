// One trace (Zipkin v2 spans) as a waterfall: a row per span, nested under its parent, with a
// bar from its start to its end on the trace's time axis.

import { el, formatDateTime, formatMicros, isNumber, svg } from "./dom.js";

export function spanFailed(span) {
  const tags = span.tags || {};
  const status = Number(tags["http.status_code"]);
  return "error" in tags || (Number.isFinite(status) && status >= 500);
}

function serviceOf(span) {
  return String(span.localEndpoint?.serviceName ?? "unknown");
}

/**
 * The spans in display order with their depth. The mesh's Envoys give the callee's SERVER span
 * its own id, its parent the caller's CLIENT span; a tracer with Zipkin's "shared" spans (as
 * Envoy's default) reports both halves of a call under one id: then the SERVER half goes under
 * the CLIENT half, and a child goes under the SERVER half of its parent.
 */
export function orderSpans(spans) {
  const entries = spans.map((span, index) => ({ span, index, children: [] }));
  const byId = new Map();
  for (const entry of entries) {
    const list = byId.get(entry.span.id) || [];
    list.push(entry);
    byId.set(entry.span.id, list);
  }
  const roots = [];
  for (const entry of entries) {
    const { span } = entry;
    let parent;
    if (span.kind === "SERVER") {
      parent = (byId.get(span.id) || []).find((e) => e !== entry && e.span.kind === "CLIENT");
    }
    if (!parent && span.parentId) {
      const candidates = (byId.get(span.parentId) || []).filter((e) => e !== entry);
      parent = candidates.find((e) => e.span.kind === "SERVER") || candidates[0];
    }
    (parent ? parent.children : roots).push(entry);
  }
  const byStart = (a, b) => (a.span.timestamp ?? 0) - (b.span.timestamp ?? 0) || a.index - b.index;
  const ordered = [];
  const seen = new Set();
  const walk = (entry, depth) => {
    if (seen.has(entry)) return;
    seen.add(entry);
    ordered.push({ span: entry.span, depth });
    for (const child of [...entry.children].sort(byStart)) walk(child, depth + 1);
  };
  for (const root of [...roots].sort(byStart)) walk(root, 0);
  // A parent cycle would leave spans unreached: show them anyway, at the top level.
  for (const entry of entries) walk(entry, 0);
  return ordered;
}

export function traceSummary(spans) {
  const starts = spans.map((s) => s.timestamp).filter(isNumber);
  const ends = spans
    .filter((s) => isNumber(s.timestamp))
    .map((s) => s.timestamp + (isNumber(s.duration) ? s.duration : 0));
  const start = starts.length ? Math.min(...starts) : 0;
  const end = ends.length ? Math.max(...ends) : start;
  const ordered = orderSpans(spans);
  const root = ordered.length ? ordered[0].span : null;
  return {
    traceId: spans.length ? String(spans[0].traceId) : "",
    start,
    duration: end - start,
    services: [...new Set(spans.map(serviceOf))].sort(),
    root,
    failed: spans.some(spanFailed),
    count: spans.length,
  };
}

export function renderWaterfall(spans) {
  const summary = traceSummary(spans);
  const total = Math.max(summary.duration, 1);
  const ticks = [0, 0.25, 0.5, 0.75, 1].map((f) =>
    el("span", { class: "tick" }, formatMicros(total * f)),
  );
  const rows = orderSpans(spans).map(({ span, depth }) => {
    const offset = isNumber(span.timestamp) ? span.timestamp - summary.start : 0;
    const duration = isNumber(span.duration) ? span.duration : 0;
    const left = (offset / total) * 1000;
    const width = Math.max(2, (duration / total) * 1000);
    const failed = spanFailed(span);
    const tags = Object.entries(span.tags || {}).sort(([a], [b]) => a.localeCompare(b));
    return el(
      "details",
      {
        class: ["span-row", failed ? "bad" : null],
        "data-span-id": `${span.id}-${span.kind ?? ""}`,
      },
      el(
        "summary",
        {},
        el(
          "span",
          { class: "span-name", "data-depth": Math.min(depth, 12) },
          el("span", { class: "span-service" }, serviceOf(span)),
          " ",
          el("span", { class: "span-op" }, String(span.name ?? "")),
          span.kind ? el("span", { class: "span-kind" }, String(span.kind).toLowerCase()) : null,
        ),
        el(
          "span",
          { class: "span-track" },
          svg(
            "svg",
            {
              viewBox: "0 0 1000 10",
              preserveAspectRatio: "none",
              class: "span-bar",
              "aria-hidden": "true",
            },
            svg("rect", {
              x: Math.min(left, 998).toFixed(1),
              y: 0,
              width: width.toFixed(1),
              height: 10,
              rx: 2,
            }),
          ),
        ),
        el("span", { class: "span-duration num" }, formatMicros(duration)),
      ),
      el(
        "dl",
        { class: "tags" },
        el("dt", {}, "span id"),
        el("dd", {}, String(span.id ?? "")),
        span.parentId ? [el("dt", {}, "parent"), el("dd", {}, String(span.parentId))] : null,
        span.remoteEndpoint
          ? [el("dt", {}, "remote"), el("dd", {}, endpointText(span.remoteEndpoint))]
          : null,
        tags.map(([key, value]) => [el("dt", {}, key), el("dd", {}, String(value))]),
      ),
    );
  });
  return el(
    "section",
    { class: "waterfall" },
    el(
      "dl",
      { class: "facts" },
      el("dt", {}, "started"),
      el("dd", {}, formatDateTime(summary.start / 1e6)),
      el("dt", {}, "duration"),
      el("dd", { class: "num" }, formatMicros(summary.duration)),
      el("dt", {}, "spans"),
      el("dd", { class: "num" }, String(summary.count)),
      el("dt", {}, "services"),
      el("dd", {}, summary.services.join(", ")),
    ),
    el(
      "div",
      { class: "span-axis" },
      el("span", {}),
      el("span", { class: "ticks" }, ticks),
      el("span", {}),
    ),
    el("div", { class: "span-rows" }, rows),
  );
}

function endpointText(endpoint) {
  const name = endpoint.serviceName ? `${endpoint.serviceName} ` : "";
  const address = endpoint.ipv4 || endpoint.ipv6 || "";
  const port = endpoint.port ? `:${endpoint.port}` : "";
  return `${name}${address}${port}`.trim();
}

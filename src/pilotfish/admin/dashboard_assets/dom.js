// Building the page. Every string from the API enters the DOM as a text node or an attribute
// value, never as markup: there is no innerHTML anywhere in the dashboard.

const SVG_NS = "http://www.w3.org/2000/svg";

function fill(node, attrs, children) {
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class")
      node.setAttribute("class", Array.isArray(value) ? value.filter(Boolean).join(" ") : value);
    else if (key === "text") node.textContent = String(value);
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/** An HTML element: el("td", {class: "num"}, "12 ms"). */
export function el(tag, attrs, ...children) {
  return fill(document.createElement(tag), attrs, children);
}

/** An SVG element, same calling convention as el(). */
export function svg(tag, attrs, ...children) {
  return fill(document.createElementNS(SVG_NS, tag), attrs, children);
}

/** A message in place of content that could not be shown. */
export function notice(message, kind = "info") {
  return el("p", { class: ["notice", kind] }, message);
}

export function table(headers, rows, attrs = {}) {
  return el(
    "table",
    attrs,
    el(
      "thead",
      {},
      el(
        "tr",
        {},
        headers.map((h) => el("th", { class: h.num ? "num" : null }, h.label ?? h)),
      ),
    ),
    el("tbody", {}, rows),
  );
}

// --- numbers with their units ------------------------------------------------------------

const DASH = "\u2013";

export function isNumber(value) {
  return typeof value === "number" && Number.isFinite(value);
}

export function formatRate(rps) {
  if (!isNumber(rps)) return DASH;
  const digits = rps < 10 ? 2 : rps < 100 ? 1 : 0;
  return `${rps.toFixed(digits)} req/s`;
}

export function formatPercent(rate) {
  if (!isNumber(rate)) return DASH;
  // Floor, not round: 99.96% must not read as a perfect 100.0%.
  return `${(Math.floor(rate * 1000) / 10).toFixed(1)}%`;
}

export function formatMs(ms) {
  if (!isNumber(ms)) return DASH;
  if (ms >= 1000) return `${(ms / 1000).toFixed(2)} s`;
  const digits = ms < 1 ? 2 : ms < 10 ? 1 : 0;
  return `${ms.toFixed(digits)} ms`;
}

export function formatCount(n) {
  return isNumber(n) ? Math.round(n).toLocaleString("en-US") : DASH;
}

/** Microseconds (Zipkin's unit) as a duration. */
export function formatMicros(us) {
  return isNumber(us) ? formatMs(us / 1000) : DASH;
}

export function formatSpan(seconds) {
  if (!isNumber(seconds)) return DASH;
  const s = Math.abs(seconds);
  if (s < 90) return `${Math.round(s)} s`;
  if (s < 90 * 60) return `${Math.round(s / 60)} min`;
  if (s < 48 * 3600) return `${Math.round(s / 3600)} h`;
  return `${Math.round(s / 86400)} d`;
}

/** Unix seconds as local wall-clock time. */
export function formatClock(unixSeconds, withSeconds = true) {
  if (!isNumber(unixSeconds)) return DASH;
  const options = { hour: "2-digit", minute: "2-digit", hour12: false };
  if (withSeconds) options.second = "2-digit";
  return new Date(unixSeconds * 1000).toLocaleTimeString("en-GB", options);
}

export function formatDateTime(unixSeconds) {
  if (!isNumber(unixSeconds)) return DASH;
  const d = new Date(unixSeconds * 1000);
  return `${d.toLocaleDateString("en-CA")} ${formatClock(unixSeconds)}`;
}

/** good / warn / bad, the colour classes of a success rate. */
export function successClass(rate) {
  if (!isNumber(rate)) return "none";
  if (rate >= 0.99) return "good";
  if (rate >= 0.95) return "warn";
  return "bad";
}

/** The short name of a service hostname: reviews.default.svc.cluster.local -> reviews. */
export function shortHost(hostname) {
  const text = String(hostname ?? "");
  return text.endsWith(".svc.cluster.local") ? text.split(".")[0] : text;
}

// The service graph: a layered layout of our own, drawn as SVG.
//
// /api/graph has edges workload -> service only (who calls whom). To read the graph left to
// right as traffic flows, each service is also joined to the workloads that serve it (found in
// /api/services by endpoint name), drawn as a dashed "serves" link without numbers.

import { formatMs, formatPercent, formatRate, shortHost, successClass, svg } from "./dom.js";

const NODE_WIDTH = 156;
const NODE_HEIGHT = 46;
// Room for an edge's numbers between a caller and the service it calls; a "serves" link has
// none, so its gap is narrow.
const LABELLED_GAP = 150;
const PLAIN_GAP = 40;
const ROW_GAP = 42;
const MARGIN = 24;

/** The hostname a graph service node stands for. */
export function serviceHostname(node) {
  const name = String(node.name ?? "");
  if (name.includes(".")) return name;
  return `${name}.${node.namespace || "default"}.svc.cluster.local`;
}

/** [serviceNodeId, workloadNodeId] pairs: which workload nodes serve which service nodes. */
export function servingLinks(nodes, services) {
  const endpointsByHost = new Map();
  for (const service of services) {
    const names = Array.isArray(service.endpoints)
      ? service.endpoints.map((e) => String(e.name ?? ""))
      : [];
    endpointsByHost.set(String(service.hostname), names);
  }
  const workloads = nodes.filter((n) => n.kind === "workload");
  const links = [];
  for (const node of nodes) {
    if (node.kind !== "service") continue;
    const endpoints = endpointsByHost.get(serviceHostname(node)) || [];
    for (const workload of workloads) {
      const name = String(workload.name ?? "");
      // Replicas of Workload "backend-v1" are endpoints "backend-v1-0", "backend-v1-1"...
      const serves = endpoints.some(
        (e) => e === name || (e.startsWith(`${name}-`) && /^\d+$/.test(e.slice(name.length + 1))),
      );
      if (serves) links.push([node.id, workload.id]);
    }
  }
  return links;
}

/**
 * Columns by longest path from the callers that nobody calls, rows ordered by the rows of
 * their predecessors (fewer crossings). `labelled` are the links that carry numbers: the gaps
 * they cross are wide. Returns Map id -> {x, y, column} and the size.
 */
export function layoutGraph(nodes, links, labelled = links) {
  const ids = nodes.map((n) => n.id);
  const known = new Set(ids);
  const outgoing = new Map(ids.map((id) => [id, []]));
  for (const [from, to] of links) {
    if (known.has(from) && known.has(to) && from !== to) outgoing.get(from).push(to);
  }
  // Drop the edges that close a cycle (A calls B calls A), found by depth-first search, so
  // that the longest path is defined.
  const state = new Map();
  const forward = [];
  const byName = [...nodes].sort((a, b) => String(a.name).localeCompare(String(b.name)));
  const visit = (id) => {
    state.set(id, "open");
    for (const to of outgoing.get(id)) {
      if (state.get(to) === "open") continue;
      forward.push([id, to]);
      if (!state.has(to)) visit(to);
    }
    state.set(id, "done");
  };
  const hasIncoming = new Set(links.map(([, to]) => to));
  for (const node of byName.filter((n) => !hasIncoming.has(n.id)))
    if (!state.has(node.id)) visit(node.id);
  for (const node of byName) if (!state.has(node.id)) visit(node.id);

  const column = new Map(ids.map((id) => [id, 0]));
  for (let round = 0; round < ids.length; round++) {
    let moved = false;
    for (const [from, to] of forward) {
      if (column.get(to) < column.get(from) + 1) {
        column.set(to, column.get(from) + 1);
        moved = true;
      }
    }
    if (!moved) break;
  }

  const predecessors = new Map(ids.map((id) => [id, []]));
  for (const [from, to] of forward) predecessors.get(to).push(from);
  const columns = [];
  for (const node of byName) {
    const c = column.get(node.id);
    (columns[c] ||= []).push(node.id);
  }
  const row = new Map();
  columns.forEach((members = [], c) => {
    const weight = (id) => {
      const rows = predecessors
        .get(id)
        .map((p) => row.get(p))
        .filter((r) => r !== undefined);
      return rows.length ? rows.reduce((a, b) => a + b, 0) / rows.length : Infinity;
    };
    const ordered = c === 0 ? members : [...members].sort((a, b) => weight(a) - weight(b));
    ordered.forEach((id, r) => row.set(id, r));
    columns[c] = ordered;
  });

  const left = [MARGIN];
  for (let c = 0; c + 1 < columns.length; c++) {
    const wide = labelled.some(([from, to]) => {
      const a = column.get(from);
      const b = column.get(to);
      return a !== undefined && b !== undefined && Math.min(a, b) <= c && c < Math.max(a, b);
    });
    left.push(left[c] + NODE_WIDTH + (wide ? LABELLED_GAP : PLAIN_GAP));
  }
  const tallest = Math.max(1, ...columns.map((m) => (m ? m.length : 0)));
  const height = MARGIN * 2 + tallest * NODE_HEIGHT + (tallest - 1) * ROW_GAP;
  const positions = new Map();
  columns.forEach((members = [], c) => {
    const used = members.length * NODE_HEIGHT + (members.length - 1) * ROW_GAP;
    const top = (height - used) / 2;
    members.forEach((id, r) => {
      positions.set(id, {
        x: left[c],
        y: top + r * (NODE_HEIGHT + ROW_GAP),
        column: c,
      });
    });
  });
  const width = left[left.length - 1] + NODE_WIDTH + MARGIN;
  return { positions, width, height };
}

function curve(from, to) {
  const start = { x: from.x + NODE_WIDTH, y: from.y + NODE_HEIGHT / 2 };
  const end = { x: to.x, y: to.y + NODE_HEIGHT / 2 };
  let c1;
  let c2;
  if (to.column > from.column) {
    const bend = (end.x - start.x) / 2;
    c1 = { x: start.x + bend, y: start.y };
    c2 = { x: end.x - bend, y: end.y };
  } else {
    // A call back to an earlier column loops around below both boxes.
    const below = Math.max(from.y, to.y) + NODE_HEIGHT * 2.2;
    c1 = { x: start.x + 80, y: below };
    c2 = { x: end.x - 80, y: below };
  }
  const middle = {
    x: (start.x + 3 * c1.x + 3 * c2.x + end.x) / 8,
    y: (start.y + 3 * c1.y + 3 * c2.y + end.y) / 8,
  };
  const d = `M${start.x},${start.y} C${c1.x},${c1.y} ${c2.x},${c2.y} ${end.x},${end.y}`;
  return { d, middle };
}

function nodeLabel(node) {
  return node.kind === "service" ? shortHost(serviceHostname(node)) : String(node.name ?? node.id);
}

/** The graph as an <svg>; edges carry their numbers as text the tests read. */
export function renderGraph(nodes, edges, services) {
  const serving = servingLinks(nodes, services);
  const calls = edges.map((e) => [e.source, e.target]);
  const { positions, width, height } = layoutGraph(nodes, [...calls, ...serving], calls);
  const extra = edges.some((e) => {
    const a = positions.get(e.source);
    const b = positions.get(e.target);
    return a && b && b.column <= a.column;
  });
  const fullHeight = height + (extra ? NODE_HEIGHT * 2 : 0);

  const defs = svg(
    "defs",
    {},
    svg(
      "marker",
      {
        id: "arrow",
        viewBox: "0 0 10 10",
        refX: 9,
        refY: 5,
        markerWidth: 7,
        markerHeight: 7,
        orient: "auto-start-reverse",
      },
      svg("path", { d: "M0,0 L10,5 L0,10 z", class: "arrowhead" }),
    ),
  );

  const servingLayer = serving.map(([service, workload]) => {
    const a = positions.get(service);
    const b = positions.get(workload);
    return svg("path", { class: "serves", d: curve(a, b).d });
  });

  const edgeLayer = [];
  const labelLayer = [];
  for (const edge of edges) {
    const a = positions.get(edge.source);
    const b = positions.get(edge.target);
    if (!a || !b) continue;
    const { d, middle } = curve(a, b);
    const tone = successClass(edge.success_rate);
    const thickness = 1.5 + Math.min(4, Math.log10(1 + (Number(edge.rps) || 0)) * 2);
    edgeLayer.push(
      svg("path", {
        class: ["call", tone],
        d,
        "stroke-width": thickness.toFixed(1),
        "marker-end": "url(#arrow)",
      }),
    );
    labelLayer.push(
      svg(
        "g",
        { class: ["edge", tone], "data-source": edge.source, "data-target": edge.target },
        svg(
          "title",
          {},
          `${edge.source} \u2192 ${edge.target}: ${edge.requests ?? 0} requests in the window`,
        ),
        svg(
          "text",
          { x: middle.x, y: middle.y - 7, class: "edge-rps", "text-anchor": "middle" },
          formatRate(edge.rps),
        ),
        svg(
          "text",
          { x: middle.x, y: middle.y + 13, class: "edge-detail", "text-anchor": "middle" },
          svg("tspan", { class: ["edge-success", tone] }, formatPercent(edge.success_rate)),
          " \u00b7 p99 ",
          svg("tspan", { class: "edge-p99" }, formatMs(edge.p99_ms)),
        ),
      ),
    );
  }

  const nodeLayer = nodes.map((node) => {
    const p = positions.get(node.id);
    const label = nodeLabel(node);
    const box = svg(
      "g",
      {
        class: ["node", node.kind === "service" ? "service" : "workload"],
        "data-id": node.id,
        "data-name": label,
      },
      svg("title", {}, `${node.kind} ${node.name} (namespace ${node.namespace})`),
      svg("rect", {
        x: p.x,
        y: p.y,
        width: NODE_WIDTH,
        height: NODE_HEIGHT,
        rx: node.kind === "service" ? 23 : 6,
      }),
      svg(
        "text",
        {
          x: p.x + NODE_WIDTH / 2,
          y: p.y + 20,
          class: ["node-name", label.length > 17 ? "long" : null],
          "text-anchor": "middle",
        },
        clip(label, 24),
      ),
      svg(
        "text",
        { x: p.x + NODE_WIDTH / 2, y: p.y + 36, class: "node-kind", "text-anchor": "middle" },
        `${node.kind} \u00b7 ${clip(String(node.namespace ?? ""), 14)}`,
      ),
    );
    if (node.kind !== "service") return box;
    return svg("a", { href: `#/service/${encodeURIComponent(serviceHostname(node))}` }, box);
  });

  return svg(
    "svg",
    {
      class: "graph",
      viewBox: `0 0 ${width} ${fullHeight}`,
      width,
      height: fullHeight,
      role: "img",
      "aria-label": "service graph",
    },
    defs,
    svg("g", {}, servingLayer),
    svg("g", {}, edgeLayer),
    svg("g", {}, nodeLayer),
    svg("g", {}, labelLayer),
  );
}

function clip(text, length) {
  return text.length > length ? `${text.slice(0, length - 1)}\u2026` : text;
}

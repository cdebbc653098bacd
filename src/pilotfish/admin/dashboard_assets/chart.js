// Line charts of one metric over time, drawn as SVG.

import { formatClock, isNumber, svg } from "./dom.js";

const WIDTH = 400;
const HEIGHT = 150;
const PAD = { left: 48, right: 12, top: 10, bottom: 24 };

/** A round upper bound for the y axis: 0.37 -> 0.4, 7 -> 8, 130 -> 200. */
export function niceCeiling(value) {
  if (!(value > 0)) return 1;
  const magnitude = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 2.5, 4, 5, 8, 10]) {
    if (step * magnitude >= value) return step * magnitude;
  }
  return 10 * magnitude;
}

/**
 * points: [{t, value}] oldest first, value null where there is nothing to show (the line
 * breaks there). options: {label, format (value -> text), max (fixed top), start, end, step,
 * empty (say "no requests" over the axes)}.
 */
export function lineChart(points, options) {
  const { label, format } = options;
  const start = options.start;
  const end = Math.max(options.end, start + 1);
  const values = points.map((p) => p.value).filter(isNumber);
  const top = options.max ?? niceCeiling(Math.max(0, ...values));
  const bottom = options.min ?? 0;
  const plotWidth = WIDTH - PAD.left - PAD.right;
  const plotHeight = HEIGHT - PAD.top - PAD.bottom;
  const x = (t) => PAD.left + ((t - start) / (end - start)) * plotWidth;
  const y = (v) => PAD.top + (1 - (v - bottom) / (top - bottom || 1)) * plotHeight;

  const grid = [];
  for (const fraction of [0, 0.5, 1]) {
    const v = bottom + (top - bottom) * fraction;
    grid.push(
      svg("line", { class: "grid", x1: PAD.left, x2: WIDTH - PAD.right, y1: y(v), y2: y(v) }),
    );
    grid.push(
      svg("text", { class: "axis", x: PAD.left - 8, y: y(v) + 4, "text-anchor": "end" }, format(v)),
    );
  }
  for (const fraction of [0, 0.5, 1]) {
    const t = start + (end - start) * fraction;
    const anchor = fraction === 0 ? "start" : fraction === 1 ? "end" : "middle";
    grid.push(
      svg(
        "text",
        { class: "axis", x: x(t), y: HEIGHT - 8, "text-anchor": anchor },
        formatClock(t, false),
      ),
    );
  }

  // A point stands for its bucket; it is drawn at the bucket's middle.
  const half = (options.step || 0) / 2;
  const runs = [];
  let run = [];
  for (const point of points) {
    if (isNumber(point.value)) {
      run.push([x(point.t + half), y(Math.min(top, Math.max(bottom, point.value)))]);
    } else if (run.length) {
      runs.push(run);
      run = [];
    }
  }
  if (run.length) runs.push(run);
  const lines = runs.map((r) =>
    r.length === 1
      ? svg("circle", { class: "dot", cx: r[0][0], cy: r[0][1], r: 2.5 })
      : svg("polyline", {
          class: "line",
          points: r.map(([px, py]) => `${px.toFixed(1)},${py.toFixed(1)}`).join(" "),
        }),
  );

  return svg(
    "svg",
    { class: "chart", viewBox: `0 0 ${WIDTH} ${HEIGHT}`, role: "img", "aria-label": label },
    grid,
    lines,
    values.length && !options.empty
      ? null
      : svg(
          "text",
          { class: "empty", x: WIDTH / 2, y: HEIGHT / 2, "text-anchor": "middle" },
          "no requests in this period",
        ),
  );
}

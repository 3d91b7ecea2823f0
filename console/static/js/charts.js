// Small SVG charts: a time-series line chart with alert markers, and horizontal bar charts.
import { fmtTime } from "./i18n.js";
import { h, s } from "./util.js";

const COLORS = ["#4fc3f7", "#ffb74d", "#81c784", "#e57373", "#ba68c8", "#fff176", "#4db6ac", "#f06292"];

function niceTicks(min, max, n) {
  if (!(max > min)) { max = min + 1; }
  const span = max - min;
  const step0 = Math.pow(10, Math.floor(Math.log10(span / n)));
  const step = [1, 2, 5, 10].map((m) => m * step0).find((st) => span / st <= n) || step0 * 10;
  const out = [];
  for (let v = Math.ceil(min / step) * step; v <= max + 1e-9; v += step) out.push(Number(v.toFixed(10)));
  return out;
}

// points: [{ts, values:{metric: number}}]; metrics: names to draw; marks: [{ts, label, color}]
export function lineChart(points, metrics, { width = 760, height = 240, marks = [], band = null } = {}) {
  const pad = { l: 52, r: 12, t: 12, b: 28 };
  const svg = s("svg", { viewBox: `0 0 ${width} ${height}`, class: "chart line-chart", role: "img" });
  const series = metrics.map((m) => points.filter((p) => typeof p.values[m] === "number").map((p) => [p.ts, p.values[m]]));
  const all = series.flat();
  if (!all.length) {
    svg.append(s("text", { x: width / 2, y: height / 2, "text-anchor": "middle", class: "chart-empty" }, "—"));
    return svg;
  }
  let t0 = Math.min(...all.map((p) => p[0]), ...marks.map((m) => m.ts));
  let t1 = Math.max(...all.map((p) => p[0]), ...marks.map((m) => m.ts));
  if (t1 <= t0) t1 = t0 + 1;
  let v0 = Math.min(...all.map((p) => p[1])), v1 = Math.max(...all.map((p) => p[1]));
  if (band) { v0 = Math.min(v0, band); v1 = Math.max(v1, band); }
  if (v1 === v0) { v0 -= 1; v1 += 1; }
  const padV = (v1 - v0) * 0.08; v0 -= padV; v1 += padV;
  const x = (tt) => pad.l + (tt - t0) / (t1 - t0) * (width - pad.l - pad.r);
  const y = (v) => height - pad.b - (v - v0) / (v1 - v0) * (height - pad.t - pad.b);
  const g = s("g", { class: "axes" });
  for (const v of niceTicks(v0, v1, 5)) {
    g.append(s("line", { x1: pad.l, x2: width - pad.r, y1: y(v), y2: y(v), class: "grid-line" }));
    g.append(s("text", { x: pad.l - 6, y: y(v) + 4, "text-anchor": "end" }, String(v)));
  }
  const tn = 5;
  for (let i = 0; i <= tn; i++) {
    const tt = t0 + (t1 - t0) * i / tn;
    g.append(s("text", { x: x(tt), y: height - 8, "text-anchor": i === 0 ? "start" : i === tn ? "end" : "middle" }, fmtTime(tt, false)));
  }
  svg.append(g);
  for (const m of marks) {
    svg.append(s("line", { x1: x(m.ts), x2: x(m.ts), y1: pad.t, y2: height - pad.b, stroke: m.color || "#e53935", "stroke-dasharray": "4 3", class: "mark" }));
    svg.append(s("text", { x: x(m.ts) + 3, y: pad.t + 10, fill: m.color || "#e53935", class: "mark-label" }, m.label));
  }
  if (band !== null) svg.append(s("line", { x1: pad.l, x2: width - pad.r, y1: y(band), y2: y(band), class: "band" }));
  series.forEach((pts, i) => {
    if (!pts.length) return;
    const d = pts.map((p, j) => `${j ? "L" : "M"}${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join("");
    svg.append(s("path", { d, fill: "none", stroke: COLORS[i % COLORS.length], "stroke-width": 1.8, class: "series" }));
    if (pts.length < 80) for (const p of pts) svg.append(s("circle", { cx: x(p[0]), cy: y(p[1]), r: 2, fill: COLORS[i % COLORS.length] }));
  });
  return svg;
}

export function legend(metrics) {
  return h("div", { class: "legend" }, metrics.map((m, i) => h("span", {}, h("i", { style: `background:${COLORS[i % COLORS.length]}` }), m)));
}

// rows: [[label, value, extraText]]
export function barChart(rows, { width = 420, barH = 22, color = "#4fc3f7" } = {}) {
  const max = Math.max(1, ...rows.map((r) => r[1]));
  const labelW = 130;
  const height = Math.max(barH, rows.length * (barH + 6));
  const svg = s("svg", { viewBox: `0 0 ${width} ${height}`, class: "chart bar-chart", role: "img" });
  rows.forEach(([label, value, extra], i) => {
    const y0 = i * (barH + 6);
    const w = (width - labelW - 70) * value / max;
    svg.append(s("text", { x: labelW - 6, y: y0 + barH * 0.7, "text-anchor": "end" }, String(label).slice(0, 18)));
    svg.append(s("rect", { x: labelW, y: y0, width: Math.max(1, w), height: barH, fill: color, rx: 2 }));
    svg.append(s("text", { x: labelW + w + 6, y: y0 + barH * 0.7 }, `${value}${extra ? " " + extra : ""}`));
  });
  return svg;
}

// A column chart of a daily series [{date, count}]
export function columnChart(rows, { width = 760, height = 200, color = "#ffb74d" } = {}) {
  const pad = { l: 36, r: 8, t: 10, b: 26 };
  const max = Math.max(1, ...rows.map((r) => r.count));
  const svg = s("svg", { viewBox: `0 0 ${width} ${height}`, class: "chart column-chart", role: "img" });
  const bw = (width - pad.l - pad.r) / Math.max(1, rows.length);
  for (const v of niceTicks(0, max, 4).filter((x) => Number.isInteger(x))) {
    const yy = height - pad.b - v / max * (height - pad.t - pad.b);
    svg.append(s("line", { x1: pad.l, x2: width - pad.r, y1: yy, y2: yy, class: "grid-line" }));
    svg.append(s("text", { x: pad.l - 4, y: yy + 4, "text-anchor": "end" }, String(v)));
  }
  rows.forEach((r, i) => {
    const hh = r.count / max * (height - pad.t - pad.b);
    svg.append(s("rect", { x: pad.l + i * bw + 2, y: height - pad.b - hh, width: Math.max(1, bw - 4), height: hh, fill: color }));
    if (rows.length <= 31 && (rows.length <= 10 || i % Math.ceil(rows.length / 10) === 0)) {
      svg.append(s("text", { x: pad.l + i * bw + bw / 2, y: height - 8, "text-anchor": "middle" }, r.date.slice(5)));
    }
  });
  return svg;
}

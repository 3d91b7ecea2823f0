// The offline map: vector layers of the configured area, sites, devices, vehicle tracks, geofences,
// routes and alert markers, drawn in SVG with a Web-Mercator projection; drag to pan, wheel to zoom.
import { fmtTime, kindLabel, sev, summaryOf, t } from "./i18n.js";
import { api, debounce, h, s, session } from "./util.js";

const W = 1000;
const KIND_STYLE = { water: "#1e3a5f", park: "#1f3b2a", road: "#5a5a5a", district: "#2a2a3a", building: "#3a3030", area: "#262a33" };
const SEV_COLOR = { critical: "#ff1744", major: "#ff9100", warning: "#ffd600", info: "#40c4ff" };
const show = { layers: true, sites: true, devices: true, tracks: true, geofences: true, routes: true, alerts: true };
let root = null, svg = null, data = null, view = null, info = null;

function mercY(lat) { const r = lat * Math.PI / 180; return Math.log(Math.tan(Math.PI / 4 + r / 2)); }
export function projection(bounds, width = W) {
  const [w, so, e, n] = bounds;
  const k = width / (e - w) * 180 / Math.PI; // px per radian of longitude
  const top = mercY(n);
  const height = Math.max(200, (top - mercY(so)) * k);
  return { width, height, x: (lon) => (lon - w) * Math.PI / 180 * k, y: (lat) => (top - mercY(lat)) * k };
}

export function drawMap(d, opts = {}) {
  const p = projection(d.bounds);
  const g = s("svg", { viewBox: `0 0 ${p.width} ${p.height}`, class: "map-svg", preserveAspectRatio: "xMidYMid meet" });
  const pt = (c) => `${p.x(c[0]).toFixed(1)},${p.y(c[1]).toFixed(1)}`;
  const scale = opts.scale || 1;
  g.append(s("rect", { x: 0, y: 0, width: p.width, height: p.height, class: "map-bg" }));
  // A graticule so the map reads as a map even without configured layers.
  const [w, so, e, n] = d.bounds;
  const step = Math.pow(10, Math.floor(Math.log10(Math.max(e - w, n - so) / 4)));
  const grid = s("g", { class: "graticule" });
  for (let lon = Math.ceil(w / step) * step; lon < e; lon += step) grid.append(s("line", { x1: p.x(lon), x2: p.x(lon), y1: 0, y2: p.height }));
  for (let lat = Math.ceil(so / step) * step; lat < n; lat += step) grid.append(s("line", { x1: 0, x2: p.width, y1: p.y(lat), y2: p.y(lat) }));
  g.append(grid);
  if (show.layers) {
    const lg = s("g", { class: "layers" });
    for (const f of d.layers) {
      const line = f.kind === "road";
      lg.append(s(line ? "polyline" : "polygon", { points: f.coordinates.map(pt).join(" "), class: "feat feat-" + f.kind,
        fill: line ? "none" : (f.color || KIND_STYLE[f.kind] || KIND_STYLE.area), stroke: line ? (f.color || KIND_STYLE.road) : "#3b4252" },
      s("title", {}, f.name)));
    }
    g.append(lg);
  }
  // Work-order grids (网格) with their open cases; red when one of them is past a deadline.
  if (show.layers) for (const gr of d.grids || []) {
    g.append(s("polygon", { points: gr.coordinates.map(pt).join(" "), class: "grid-area" + (gr.overdue_cases ? " overdue" : ""),
      fill: "none", stroke: gr.overdue_cases ? "#ff5252" : "#8ab4f8", "stroke-dasharray": "6 4", "data-grid": gr.id },
    s("title", {}, `${gr.name} (${gr.id})`)));
    const north = Math.max(...gr.coordinates.map((c) => c[1]));  // the label sits above the outline, clear of sites
    g.append(s("text", { x: p.x(gr.centre[0]), y: p.y(north) - 5 * scale, class: "grid-label", "text-anchor": "middle",
      fill: gr.overdue_cases ? "#ff8a80" : "#8ab4f8", "font-size": 12 * scale }, `${gr.name} · ${gr.open_cases}`));
  }
  if (show.geofences) for (const f of d.geofences) g.append(s("polygon", { points: f.coordinates.map(pt).join(" "), class: "geofence", stroke: f.color || "#ff5252" }, s("title", {}, f.name)));
  if (show.routes) for (const f of d.routes) g.append(s("polyline", { points: f.coordinates.map(pt).join(" "), class: "route", stroke: f.color || "#69f0ae" }, s("title", {}, f.name)));
  if (show.tracks) for (const [id, tr] of Object.entries(d.tracks)) g.append(s("polyline", { points: tr.map(pt).join(" "), class: "track", "data-id": id }));
  if (show.sites) for (const site of d.sites) {
    const [x, y] = [p.x(site.position[0]), p.y(site.position[1])];
    g.append(s("g", { class: "site", transform: `translate(${x},${y}) scale(${scale})` },
      s("rect", { x: -7, y: -7, width: 14, height: 14, rx: 2 }), s("text", { x: 10, y: 4 }, site.name || site.id), s("title", {}, site.name)));
  }
  if (show.devices) for (const dev of d.devices) {
    const [x, y] = [p.x(dev.position[0]), p.y(dev.position[1])];
    const cls = `device ${dev.online ? "on" : "off"} ${dev.worst_severity ? "sev-" + dev.worst_severity : ""} ${opts.focus === dev.id ? "focus" : ""}`;
    // Vehicles point along their heading; safety sensors (gas detectors, tanks, stores) are diamonds.
    const shape = dev.kind === "vehicle"
      ? s("path", { d: "M0,-8 L6,7 L0,3 L-6,7 Z", transform: `rotate(${dev.heading_deg || 0})` })
      : dev.kind === "sensor" ? s("path", { d: "M0,-6 L6,0 L0,6 L-6,0 Z" }) : s("circle", { r: 5 });
    const node = s("g", { class: cls, transform: `translate(${x},${y}) scale(${scale})`, "data-id": dev.id,
      onclick: (ev) => { ev.stopPropagation(); if (opts.onDevice) opts.onDevice(dev); } }, shape, s("title", {}, `${dev.id} ${dev.name || ""}`));
    g.append(node);
  }
  if (show.alerts) for (const m of d.markers) {
    const [x, y] = [p.x(m.position[0]), p.y(m.position[1])];
    g.append(s("g", { class: "marker " + m.status, transform: `translate(${x},${y}) scale(${scale})`, onclick: () => { location.hash = "#/alert/" + encodeURIComponent(m.alert_id); } },
      s("circle", { r: 14, fill: "none", stroke: SEV_COLOR[m.severity] || "#fff", class: "pulse" }),
      s("text", { x: 0, y: -16, "text-anchor": "middle", fill: SEV_COLOR[m.severity] }, m.count > 1 ? `${m.count}` : "!"),
      s("title", {}, `${sev(m.severity)} ${summaryOf(m)}`)));
  }
  g.dataset.width = p.width; g.dataset.height = p.height;
  return g;
}

function applyView() { if (svg && view) svg.setAttribute("viewBox", `${view.x} ${view.y} ${view.w} ${view.h}`); }

function enablePanZoom(el) {
  let drag = null;
  el.addEventListener("wheel", (ev) => {
    ev.preventDefault();
    const r = el.getBoundingClientRect();
    const fx = (ev.clientX - r.left) / r.width, fy = (ev.clientY - r.top) / r.height;
    const z = ev.deltaY > 0 ? 1.2 : 1 / 1.2;
    const nw = view.w * z, nh = view.h * z;
    view = { x: view.x + (view.w - nw) * fx, y: view.y + (view.h - nh) * fy, w: nw, h: nh };
    applyView();
  }, { passive: false });
  el.addEventListener("pointerdown", (ev) => { drag = { x: ev.clientX, y: ev.clientY, v: { ...view } }; });
  window.addEventListener("pointerup", () => { drag = null; });
  el.addEventListener("pointermove", (ev) => {
    if (!drag) return;
    const r = el.getBoundingClientRect();
    view = { ...drag.v, x: drag.v.x - (ev.clientX - drag.x) * view.w / r.width, y: drag.v.y - (ev.clientY - drag.y) * view.h / r.height };
    applyView();
  });
}

function redraw() {
  if (!root || !data) return;
  const holder = root.querySelector(".map-holder");
  const next = drawMap(data, { onDevice: showInfo });
  if (!view) view = { x: 0, y: 0, w: Number(next.dataset.width), h: Number(next.dataset.height) };
  holder.replaceChildren(next);
  svg = next;
  applyView();
  enablePanZoom(next);
}

function showInfo(dev) {
  info.hidden = false;
  info.replaceChildren(
    h("strong", {}, h("a", { href: "#/device/" + encodeURIComponent(dev.id) }, dev.id), " ", dev.name || ""),
    h("div", {}, kindLabel(dev.kind)),
    h("div", {}, `${dev.online ? t("online") : t("offline")} · ${t("last_seen")}: ${fmtTime(dev.last_seen)}`),
    dev.speed_kmh !== undefined && dev.speed_kmh !== null ? h("div", {}, `${dev.speed_kmh} km/h`) : null,
    dev.open_alerts ? h("div", { class: "sev-" + dev.worst_severity }, `${t("open_alerts")}: ${dev.open_alerts}`) : null);
}

export async function render(el) {
  root = el;
  view = null;
  const toggles = h("div", { class: "map-toggles" }, h("strong", {}, t("layers") + ": "),
    Object.keys(show).map((k) => h("label", {}, h("input", { type: "checkbox", checked: show[k], onchange: (e) => { show[k] = e.target.checked; redraw(); } }),
      t({ layers: "layers", sites: "sites", devices: "devices_layer", tracks: "tracks", geofences: "geofences", routes: "routes", alerts: "alerts_layer" }[k]))),
    h("button", { onclick: () => { view = null; redraw(); } }, t("fit")),
    session.config.gcj02 ? h("span", { class: "hint" }, "GCJ-02") : null);
  info = h("div", { class: "map-info", hidden: true });
  root.append(toggles, h("div", { class: "map-wrap" }, h("div", { class: "map-holder", id: "map" }), info));
  data = await api("GET", "/api/map");
  redraw();
}
const reload = debounce(async () => {
  if (!root || !root.isConnected) return;
  try { data = await api("GET", "/api/map"); redraw(); } catch { /* next push retries */ }
}, 500, 2000);
export function onDevices() { reload(); }
export function onAlert() { reload(); }
export function resync() { reload(); }
export function leave() { root = null; }

// Devices: the registry with live state; one device's values, chart and alert history.
import { fmtTime, kindLabel, label, sev, st, summaryOf, t } from "./i18n.js";
import { api, debounce, h, qs, session, sevBadge } from "./util.js";
import { legend, lineChart } from "./charts.js";

const filt = { kind: "", site: "", online: "", q: "" };
let root = null, body = null, summary = null;

export function num(v) {
  return typeof v === "number" && !Number.isInteger(v) ? String(Number(v.toFixed(6))) : String(v);
}
function valuesText(values) {
  return Object.entries(values || {}).slice(0, 6).map(([k, v]) => `${k}=${typeof v === "number" && !Number.isInteger(v) ? v.toFixed(2) : v}`).join("  ");
}
function row(d) {
  return h("tr", { dataset: { id: d.id }, class: d.online ? "on" : "off" },
    h("td", {}, h("span", { class: "dot " + (d.online ? "on" : "off"), title: d.online ? t("online") : t("offline") }), " ", d.online ? t("online") : t("offline")),
    h("td", {}, h("a", { href: "#/device/" + encodeURIComponent(d.id) }, d.id)),
    h("td", {}, d.name), h("td", { title: d.kind }, kindLabel(d.kind)), h("td", {}, d.site_name || d.site || ""),
    h("td", { class: "time" }, fmtTime(d.last_seen)),
    h("td", { class: "values" }, valuesText(d.values)),
    h("td", {}, d.open_alerts ? sevBadge(d.worst_severity, `${d.open_alerts}`) : ""));
}
async function load() {
  const data = await api("GET", "/api/devices?" + qs(filt));
  if (!body || !body.isConnected) return;
  summary.textContent = `${t("devices_total")}: ${data.total} · ${t("online")}: ${data.online} · ${t("offline")}: ${data.total - data.online}`;
  body.replaceChildren(...data.devices.map(row));
}
export async function render(el) {
  root = el;
  const sel = (name, options) => h("select", { onchange: (e) => { filt[name] = e.target.value; load(); } },
    h("option", { value: "" }, `${t(name === "online" ? "status" : name)}: ${t("all")}`), options.map(([v, l]) => h("option", { value: v, selected: filt[name] === v }, l)));
  summary = h("div", { class: "summary-line", id: "devices-summary" });
  body = h("tbody", { id: "device-rows" });
  root.append(h("div", { class: "toolbar" },
    sel("kind", ["elevator", "vehicle", "emission", "camera", "sensor", "vigil"].map((k) => [k, kindLabel(k)])),
    sel("site", session.sites.map((s) => [s.id, s.name || s.id])),
    sel("online", [["true", t("online")], ["false", t("offline")]]),
    h("input", { type: "search", placeholder: t("search"), value: filt.q, oninput: debounce((e) => { filt.q = e.target.value; load(); }, 300) })),
  summary,
  h("table", { class: "grid" }, h("thead", {}, h("tr", {}, [t("status"), "ID", t("device"), t("kind"), t("site"), t("last_seen"), t("values"), t("open_alerts")].map((c) => h("th", {}, c)))), body));
  await load();
}
const reloadList = debounce(load, 1000, 3000);
export function onDevices() { if (body && body.isConnected) reloadList(); }
export function resync() { if (body && body.isConnected) load(); }
export function leave() { root = null; }

// ------------------------------------------------------------------ one device
let dRoot = null, dId = null, windowS = 3600, metric = null;
async function loadDetail() {
  const d = await api("GET", `/api/devices/${encodeURIComponent(dId)}`);
  if (!dRoot) return;
  const dev = d.device;
  const values = h("table", { class: "kv" }, Object.entries(dev.values).map(([k, v]) => h("tr", {}, h("th", {}, k),
    h("td", {}, num(v), d.quality && d.quality[k.split(".")[0]] ? ` [${label("q", d.quality[k.split(".")[0]])}]` : ""))));
  const chart = h("div", { class: "chart-holder" });
  const windows = [[900, "15 min"], [3600, "1 h"], [6 * 3600, "6 h"], [86400, "24 h"], [7 * 86400, "7 d"]];
  const history = h("table", { class: "grid" }, h("thead", {}, h("tr", {}, [t("severity"), t("status"), t("started"), t("summary")].map((c) => h("th", {}, c)))),
    h("tbody", {}, d.alerts.length ? [] : h("tr", {}, h("td", { colspan: 4, class: "empty" }, t("no_data"))), d.alerts.map((a) => h("tr", {}, h("td", {}, sevBadge(a.severity, sev(a.severity))), h("td", {}, st(a.status)),
      h("td", {}, fmtTime(a.starts_at)), h("td", {}, h("a", { href: "#/alert/" + encodeURIComponent(a.id) }, summaryOf(a)))))));
  dRoot.replaceChildren(
    h("div", { class: "detail-head" }, h("h2", {}, `${dev.id} ${dev.name}`),
      h("div", { class: "meta" }, `${kindLabel(dev.kind)} · ${dev.site_name || dev.site || ""} · ${dev.online ? t("online") : t("offline")} · ${t("last_seen")}: ${fmtTime(dev.last_seen)}`)),
    h("div", { class: "detail-grid" },
      h("section", { class: "card" }, h("h3", {}, t("values")), values),
      h("section", { class: "card wide" }, h("h3", {}, t("chart")), h("div", { class: "chart-tools" }, `${t("window")}: `,
        windows.map(([s, l]) => h("button", { class: s === windowS ? "tab active" : "tab", onclick: () => { windowS = s; loadDetail(); } }, l))), chart),
      h("section", { class: "card wide" }, h("h3", {}, t("history")), history)));
  const now = Date.now() / 1000;
  const series = await api("GET", `/api/devices/${encodeURIComponent(dId)}/series?` + qs({ since: now - windowS, until: now }));
  const names = new Set();
  for (const p of series.points) for (const k of Object.keys(p.values)) names.add(k);
  const list = [...names].sort();
  if (!list.length) { chart.replaceChildren(h("p", { class: "hint" }, t("no_data"))); return; }
  if (!metric || !names.has(metric)) {
    // Default to a metric that moves (a flat heading or a fixed floor says little), positions last.
    const varies = (m) => new Set(series.points.map((p) => p.values[m]).filter((v) => v !== undefined)).size > 1;
    const plain = list.filter((m) => !["lat", "lon", "seq", "heading_deg"].includes(m));
    metric = plain.find(varies) || plain[0] || list[0];
  }
  const sel = h("select", { onchange: (e) => { metric = e.target.value; paint(); } }, list.map((m) => h("option", { value: m, selected: m === metric }, m)));
  const paint = () => chart.replaceChildren(h("div", { class: "chart-tools" }, `${t("metric")}: `, sel, ` · ${series.points.length} pts · ${label("src", series.source)}`),
    lineChart(series.points, [metric], { width: Math.max(480, chart.clientWidth), height: 240 }), legend([metric]));
  paint();
}
export const detail = {
  async render(el, [id]) { dRoot = el; dId = id; await loadDetail(); },
  leave() { dRoot = null; },
  onDevices: debounce((ids) => { if (dRoot && ids.includes(dId)) loadDetail(); }, 2000, 5000),
  resync() { if (dRoot) loadDetail(); },
};

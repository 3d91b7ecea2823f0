// One alert: actions, the rule and the values that crossed, evidence, telemetry chart, place, timeline.
import { channelLabel, fmtDur, fmtTime, has, kindLabel, label, sev, st, summaryOf, t, toEpoch } from "./i18n.js";
import { api, h, session, sevBadge } from "./util.js";
import { actionButtons } from "./board.js";
import { legend, lineChart } from "./charts.js";
import { drawMap } from "./map.js";

let root = null, alertId = null;

export async function render(el, [id]) {
  root = el;
  alertId = id;
  await load();
}
export function leave() { root = null; alertId = null; }

function kv(rows) {
  return h("table", { class: "kv" }, rows.filter((r) => r).map(([k, v]) => h("tr", {}, h("th", {}, k), h("td", {}, v))));
}
// Label values that are keys of a known set (kind, severity, category, industry) are shown translated.
const LABEL_SETS = { kind: "kind", severity: "sev", status: "st", category: "cat", industry: "ind" };
function labelValue(k, v) { return LABEL_SETS[k] && has(`${LABEL_SETS[k]}_${v}`) ? `${t(`${LABEL_SETS[k]}_${v}`)} (${v})` : v; }
function detailValue(k, v) {
  if (k === "severity" || k === "from" || k === "to") return has("sev_" + v) ? sev(v) : v;
  if (v === "true" || v === "false") return t(v === "true" ? "yes" : "no");
  if (v === "rule cleared") return t("rule_cleared");
  return v;
}
function valueText(v) { return typeof v === "number" ? (Number.isInteger(v) ? String(v) : v.toFixed(3)) : String(v); }

async function load() {
  const d = await api("GET", `/api/alerts/${encodeURIComponent(alertId)}`);
  if (!root) return;
  const a = d.alert;
  const head = h("div", { class: "detail-head sev-row-" + a.severity },
    h("div", {}, sevBadge(a.severity, sev(a.severity)), " ", h("span", { class: "st st-" + a.status, id: "detail-status" }, st(a.status)),
      a.muted ? h("span", { class: "muted-tag", id: "detail-muted" }, ` ${t("muted")}: ${label("mute", a.muted.kind)} ${a.muted.id}`) : null),
    h("h2", {}, summaryOf(a)),
    h("div", { class: "meta" }, `${fmtTime(a.starts_at)} · ${kindLabel(a.kind)} ${a.device_id} · ${d.device.name || ""} · ${d.device.site_name || a.site || ""} · ${a.unit || ""}`),
    h("div", { class: "actions" }, actionButtons(a, () => load())));
  const rule = h("section", { class: "card" }, h("h3", {}, t("rule")),
    kv([[t("rule"), d.rule.name], [t("why"), kv(Object.entries(d.rule.values || {}).map(([k, v]) => [k, valueText(v)]))],
      d.rule.description ? ["", d.rule.description] : null,
      [t("labels"), Object.entries(d.rule.labels || {}).map(([k, v]) => `${k}=${labelValue(k, v)}`).join(", ")],
      [t("ack_by"), a.ack_by ? `${fmtTime(a.ack_by)}${a.ack_overdue ? " (" + t("overdue") + ")" : ""}` : "–"],
      [t("resolve_by"), a.resolve_by ? `${fmtTime(a.resolve_by)}${a.resolve_overdue ? " (" + t("overdue") + ")" : ""}` : "–"],
      [t("assignee"), a.assignee || a.acknowledged_by || "–"],
      a.work_order ? [t("work_order"), h("span", { id: "work-order" }, `${t("wo_" + a.work_order.stage)} · ${a.work_order.grid || "–"}` +
        `${a.work_order.assignee ? " · " + a.work_order.assignee : ""} `,
        h("a", { href: `/h5/#case/${encodeURIComponent(a.id)}` }, t("wo_open_page")))] : null]));
  const snap = d.snapshot;
  const evidence = h("section", { class: "card", id: "evidence" }, h("h3", {}, t("evidence")),
    d.snapshot_image ? h("img", { src: d.snapshot_image, class: "snapshot", alt: t("evidence") }) : h("p", { class: "hint" }, t("no_snapshot")),
    snap && snap.device_values ? [h("h4", {}, `${t("values_at_alert")} (${fmtTime(snap.values_ts)})`),
      kv(Object.entries(snap.device_values).map(([k, v]) => [k, valueText(v)]))] : null);
  const chartBox = h("section", { class: "card wide", id: "chart" }, h("h3", {}, t("chart")), h("div", { class: "chart-holder" }, t("no_data")));
  const place = h("section", { class: "card", id: "place" }, h("h3", {}, t("place")), h("div", { class: "mini-map" }));
  const timeline = h("section", { class: "card wide", id: "timeline" }, h("h3", {}, t("timeline")), timelineList(d));
  root.replaceChildren(head, h("div", { class: "detail-grid" }, rule, evidence, chartBox, place, timeline));
  drawChart(a, chartBox.querySelector(".chart-holder"));
  drawPlace(d, place.querySelector(".mini-map"));
}

function timelineList(d) {
  const items = d.timeline.map((e) => ({ ts: e.ts, kind: "event", e }));
  for (const n of d.notifications) items.push({ ts: n.handed_at || n.created_at, kind: "note", n });
  items.sort((x, y) => x.ts - y.ts);
  return h("ol", { class: "timeline" }, items.map((it) => {
    if (it.kind === "event") {
      const e = it.e;
      const detail = Object.entries(e.detail || {}).filter(([, v]) => v).map(([k, v]) => `${label("dk", k)}: ${detailValue(k, v)}`).join(" · ");
      return h("li", { class: "ev ev-" + e.action }, h("time", {}, fmtTime(e.ts)), h("b", {}, label("act", e.action)), ` ${label("actor", e.actor)} `,
        detail ? h("span", { class: "detail" }, detail) : null);
    }
    const n = it.n;
    const tries = (n.attempts_log || []).map((x) => `${channelLabel(x.channel)} #${x.attempt} ${x.ok ? "✓" : "✗ " + (x.error || "")}`).join("; ");
    return h("li", { class: "note note-" + n.status }, h("time", {}, fmtTime(it.ts)), h("b", {}, `${t("notified")} (${label("nk", n.kind)})`),
      ` → ${n.recipient_name || n.recipient} · ${t("channel")}: ${channelLabel(n.channel)} · ${t("outcome")}: ${label("n", n.status)}`,
      n.error ? h("span", { class: "error" }, ` ${n.error}`) : null, tries ? h("div", { class: "detail" }, `${t("attempts")}: ${tries}`) : null);
  }));
}

async function drawChart(a, holder) {
  const data = await api("GET", `/api/alerts/${encodeURIComponent(a.id)}/series?before=600&after=600`);
  const metricsAll = new Set();
  for (const p of data.points) for (const k of Object.keys(p.values)) metricsAll.add(k);
  const numericAlert = Object.entries(a.values || {}).filter(([, v]) => typeof v === "number").map(([k]) => k);
  let chosen = numericAlert.filter((m) => metricsAll.has(m));
  if (!chosen.length) chosen = [...metricsAll].filter((m) => !["lat", "lon", "heading_deg", "mileage_km", "status_flags", "alarm_flags", "seq"].includes(m)).slice(0, 1);
  const marks = [{ ts: toEpoch(a.starts_at), label: t("started"), color: "#ff5252" }];
  if (a.acknowledged_at) marks.push({ ts: toEpoch(a.acknowledged_at), label: t("ack"), color: "#ffd740" });
  if (a.ends_at) marks.push({ ts: toEpoch(a.ends_at), label: t("resolve"), color: "#69f0ae" });
  const select = h("select", { class: "metric-select", onchange: () => { chosen = [select.value]; paint(); } },
    [...metricsAll].sort().map((m) => h("option", { value: m, selected: chosen[0] === m }, m)));
  const paint = () => holder.replaceChildren(h("div", { class: "chart-tools" }, `${t("metric")}: `, select, ` · ${data.points.length} pts · ${label("src", data.source)}`),
    lineChart(data.points, chosen, { marks, width: Math.max(480, holder.clientWidth), height: 260 }), legend(chosen));
  if (!data.points.length) { holder.replaceChildren(h("p", { class: "hint" }, t("no_data"))); return; }
  paint();
}

async function drawPlace(d, holder) {
  const pos = d.device.position;
  if (!pos) { holder.replaceChildren(h("p", { class: "hint" }, t("no_data"))); return; }
  const m = await api("GET", "/api/map");
  const span = 0.02;
  const local = { ...m, bounds: [pos[0] - span, pos[1] - span * 0.8, pos[0] + span, pos[1] + span * 0.8] };
  holder.replaceChildren(drawMap(local, { focus: d.device.id, scale: 3 }),
    h("div", { class: "hint" }, `${pos[0].toFixed(5)}, ${pos[1].toFixed(5)}${session.config.gcj02 ? " (GCJ-02)" : ""}`));
}

export function onAlert(a) { if (root && a.id === alertId) load(); }
export function resync() { if (root) load(); }
export { fmtDur };

// Figures: today's and the period's alerts by industry and site, MTTA/MTTR, closure and on-time rates.
import { fmtDur, fmtPct, industryLabel, kindLabel, label as keyLabel, t } from "./i18n.js";
import { api, h, session } from "./util.js";
import { barChart, columnChart } from "./charts.js";

let root = null, days = 7;
function card(label, value, id) { return h("div", { class: "figure", id }, h("div", { class: "fig-value" }, value), h("div", { class: "fig-label" }, label)); }
function cards(f, prefix) {
  return h("div", { class: "figures-row" }, card(t("total"), String(f.total), prefix + "-total"), card(t("closed"), String(f.closed)),
    card(t("closure_rate"), fmtPct(f.closure_rate)), card(t("on_time_rate"), fmtPct(f.on_time_rate)),
    card(t("mtta"), fmtDur(f.mtta_s)), card(t("mttr"), fmtDur(f.mttr_s)));
}
// name: how a group's key is shown (site names, industry and kind labels; never a raw key when a label exists).
function table(groups, label, name = (k) => k, id = null) {
  return h("table", { class: "grid", id }, h("thead", {}, h("tr", {}, [label, t("total"), t("closure_rate"), t("on_time_rate"), t("mtta"), t("mttr")].map((c) => h("th", {}, c)))),
    h("tbody", {}, Object.entries(groups).sort((a, b) => b[1].total - a[1].total).map(([k, f]) => h("tr", { "data-key": k }, h("td", {}, name(k)),
      h("td", {}, String(f.total)), h("td", {}, fmtPct(f.closure_rate)), h("td", {}, fmtPct(f.on_time_rate)), h("td", {}, fmtDur(f.mtta_s)), h("td", {}, fmtDur(f.mttr_s))))));
}
// Work orders (grids): response, arrival, on-time per milestone, closure and satisfaction, per grid.
function woTable(wf) {
  const cols = [t("wo_grid"), t("total"), t("closure_rate"), t("wo_response"), t("wo_arrival"), t("wo_on_time_accept"),
    t("wo_on_time_on_site"), t("wo_on_time_closed"), t("wo_satisfaction")];
  const row = (k, f) => h("tr", { "data-grid": k }, h("td", {}, k), h("td", {}, String(f.total)), h("td", {}, fmtPct(f.closure_rate)),
    h("td", {}, fmtDur(f.mean_response_s)), h("td", {}, fmtDur(f.mean_arrival_s)), h("td", {}, fmtPct(f.on_time_rate.accepted)),
    h("td", {}, fmtPct(f.on_time_rate.on_site)), h("td", {}, fmtPct(f.on_time_rate.closed)), h("td", {}, fmtPct(f.satisfaction_rate)));
  return h("table", { class: "grid", id: "wo-figures" }, h("thead", {}, h("tr", {}, cols.map((c) => h("th", {}, c)))),
    h("tbody", {}, row(t("all"), wf), Object.entries(wf.by.grid).map(([k, f]) => row(k, f))));
}
async function load() {
  const f = await api("GET", `/api/figures?days=${days}`);
  const wf = session.workorders && session.workorders.centre
    ? await api("GET", `/api/wo/figures?since=${Math.floor(Date.now() / 1000) - days * 86400}`) : null;
  if (!root) return;
  const siteName = (id) => (session.sites.find((s) => s.id === id) || {}).name || id;
  const full = Math.max(600, root.clientWidth - 60);
  const half = Math.max(360, Math.floor(root.clientWidth / 2) - 60);
  const periodBtns = [1, 7, 30, 90].map((d) => h("button", { class: d === days ? "tab active" : "tab", onclick: () => { days = d; load(); } }, `${d} ${t("days")}`));
  root.replaceChildren(
    h("h3", {}, t("today")), cards(f.today, "today"),
    h("div", { class: "toolbar" }, h("strong", {}, t("period") + ": "), periodBtns), cards(f.period, "period"),
    h("div", { class: "detail-grid" },
      h("section", { class: "card" }, h("h3", {}, t("by_industry")), barChart(Object.entries(f.period.by.industry).map(([k, v]) => [industryLabel(k), v]), { width: half }), table(f.by_industry, t("industry"), industryLabel, "fig-industry")),
      h("section", { class: "card" }, h("h3", {}, t("by_site")), barChart(Object.entries(f.period.by.site).sort((a, b) => b[1] - a[1]).slice(0, 15).map(([k, v]) => [siteName(k), v]), { color: "#81c784", width: half }), table(f.by_site, t("site"), (k) => (k === "-" ? keyLabel("site", k) : siteName(k)), "fig-site")),
      h("section", { class: "card", id: "fig-kind" }, h("h3", {}, t("by_kind")), barChart(Object.entries(f.period.by.kind || {}).sort((a, b) => b[1] - a[1]).map(([k, v]) => [kindLabel(k), v]), { color: "#ba68c8", width: half })),
      h("section", { class: "card", id: "fig-severity" }, h("h3", {}, t("by_severity")), barChart(["critical", "major", "warning", "info"].filter((k) => (f.period.by.severity || {})[k]).map((k) => [t("sev_" + k), f.period.by.severity[k]]), { color: "#e57373", width: half })),
      h("section", { class: "card wide" }, h("h3", {}, t("daily")), columnChart(f.daily, { width: full, height: 220 })),
      h("section", { class: "card wide" }, h("h3", {}, t("by_unit")), table(f.by_unit, t("unit"), (k) => (k === "-" ? keyLabel("unit", k) : k), "fig-unit")),
      wf ? h("section", { class: "card wide" }, h("h3", {}, t("wo_figures")), woTable(wf)) : null));
}
export async function render(el) { root = el; await load(); }
export function leave() { root = null; }
export function resync() { if (root) load(); }

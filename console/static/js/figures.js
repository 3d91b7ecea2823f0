// Figures: today's and the period's alerts by industry and site, MTTA/MTTR, closure and on-time rates.
import { fmtDur, fmtPct, t } from "./i18n.js";
import { api, h, session } from "./util.js";
import { barChart, columnChart } from "./charts.js";

let root = null, days = 7;
function card(label, value, id) { return h("div", { class: "figure", id }, h("div", { class: "fig-value" }, value), h("div", { class: "fig-label" }, label)); }
function cards(f, prefix) {
  return h("div", { class: "figures-row" }, card(t("total"), String(f.total), prefix + "-total"), card(t("closed"), String(f.closed)),
    card(t("closure_rate"), fmtPct(f.closure_rate)), card(t("on_time_rate"), fmtPct(f.on_time_rate)),
    card(t("mtta"), fmtDur(f.mtta_s)), card(t("mttr"), fmtDur(f.mttr_s)));
}
function table(groups, label) {
  const siteName = (id) => (session.sites.find((s) => s.id === id) || {}).name || id;
  return h("table", { class: "grid" }, h("thead", {}, h("tr", {}, [label, t("total"), t("closure_rate"), t("on_time_rate"), t("mtta"), t("mttr")].map((c) => h("th", {}, c)))),
    h("tbody", {}, Object.entries(groups).sort((a, b) => b[1].total - a[1].total).map(([k, f]) => h("tr", {}, h("td", {}, label === t("site") ? siteName(k) : k),
      h("td", {}, String(f.total)), h("td", {}, fmtPct(f.closure_rate)), h("td", {}, fmtPct(f.on_time_rate)), h("td", {}, fmtDur(f.mtta_s)), h("td", {}, fmtDur(f.mttr_s))))));
}
async function load() {
  const f = await api("GET", `/api/figures?days=${days}`);
  if (!root) return;
  const siteName = (id) => (session.sites.find((s) => s.id === id) || {}).name || id;
  const full = Math.max(600, root.clientWidth - 60);
  const half = Math.max(360, Math.floor(root.clientWidth / 2) - 60);
  const periodBtns = [1, 7, 30, 90].map((d) => h("button", { class: d === days ? "tab active" : "tab", onclick: () => { days = d; load(); } }, `${d} ${t("days")}`));
  root.replaceChildren(
    h("h3", {}, t("today")), cards(f.today, "today"),
    h("div", { class: "toolbar" }, h("strong", {}, t("period") + ": "), periodBtns), cards(f.period, "period"),
    h("div", { class: "detail-grid" },
      h("section", { class: "card" }, h("h3", {}, t("by_industry")), barChart(Object.entries(f.period.by.industry).map(([k, v]) => [k, v]), { width: half }), table(f.by_industry, t("industry"))),
      h("section", { class: "card" }, h("h3", {}, t("by_site")), barChart(Object.entries(f.period.by.site).sort((a, b) => b[1] - a[1]).slice(0, 15).map(([k, v]) => [siteName(k), v]), { color: "#81c784", width: half }), table(f.by_site, t("site"))),
      h("section", { class: "card wide" }, h("h3", {}, t("daily")), columnChart(f.daily, { width: full, height: 220 })),
      h("section", { class: "card wide" }, h("h3", {}, t("by_unit")), table(f.by_unit, t("unit")))));
}
export async function render(el) { root = el; await load(); }
export function leave() { root = null; }
export function resync() { if (root) load(); }

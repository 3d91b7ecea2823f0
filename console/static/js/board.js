// The live alert board: server-side filtering and paging, live updates, actions from the list.
import { fmtDur, fmtTime, industryLabel, kindLabel, label, sev, st, summaryOf, t, toEpoch } from "./i18n.js";
import { api, ask, debounce, h, qs, session, sevBadge, toast } from "./util.js";

const state = { status: "open", industry: "", site: "", severity: "", unit: "", kind: "", q: "", sort: "newest", offset: 0,
  limit: 50 };
let root = null;
let tableBody = null;
let pager = null;
let facets = null;
let fresh = new Set();
let tick = null;

export async function render(el) {
  root = el;
  const tabs = h("div", { class: "tabs" }, ["open", "firing", "acknowledged", "resolved", "all"].map((s) =>
    h("button", { class: s === state.status ? "tab active" : "tab", dataset: { status: s },
      onclick: () => { state.status = s; state.offset = 0; render(root.replaceChildren() || root); } }, t("tab_" + s))));
  const filters = h("div", { class: "filters", id: "board-filters" });
  tableBody = h("tbody", { id: "board-rows" });
  pager = h("div", { class: "pager" });
  const table = h("table", { class: "grid board" },
    h("thead", {}, h("tr", {}, [t("severity"), t("status"), t("started"), t("summary"), t("device"), t("site"),
      t("unit"), t("assignee"), t("deadline"), t("actions")].map((c) => h("th", {}, c)))), tableBody);
  root.append(h("div", { class: "toolbar" }, tabs, filters), table, pager);
  await load(true);
  clearInterval(tick);
  tick = setInterval(() => { if (tableBody && tableBody.isConnected) updateDeadlines(); }, 1000);
}

export function leave() { clearInterval(tick); tick = null; }

function select(name, options) {
  return h("select", { name, dataset: { filter: name }, onchange: (e) => { state[name] = e.target.value; state.offset = 0; load(false); } },
    h("option", { value: "" }, `${t(name)}: ${t("all")}`),
    options.map(([v, l]) => h("option", { value: v, selected: state[name] === v }, l)));
}

function renderFilters() {
  const f = facets || {};
  const opts = (key, label) => Object.entries(f[key] || {}).filter(([v]) => v).sort()
    .map(([v, n]) => [v, `${label ? label(v) : v} (${n})`]);
  const siteName = (id) => (session.sites.find((s) => s.id === id) || {}).name || id;
  const el = root.querySelector("#board-filters");
  // Keep the search box across facet refreshes so typing is never interrupted.
  const search = el.querySelector("input[name=q]") || h("input", { type: "search", placeholder: t("search"), value: state.q,
    name: "q", oninput: debounce((e) => { state.q = e.target.value; state.offset = 0; load(false); }, 300) });
  el.replaceChildren(
    select("severity", ["critical", "major", "warning", "info"].map((s) => [s, sev(s) + (f.severity && f.severity[s] ? ` (${f.severity[s]})` : "")])),
    select("industry", opts("industry", industryLabel)),
    select("site", opts("site", siteName)),
    select("unit", opts("unit")),
    select("kind", opts("kind", kindLabel)),
    search,
    h("select", { name: "sort", onchange: (e) => { state.sort = e.target.value; load(false); } },
      ["newest", "oldest", "severity", "deadline"].map((s) => h("option", { value: s, selected: state.sort === s }, t("sort_" + s)))),
  );
}

let loading = null;
async function load(withFacets) {
  const params = { ...state, facets: withFacets || !facets ? "1" : "" };
  const my = (loading = Symbol());
  const data = await api("GET", "/api/board?" + qs(params));
  if (my !== loading || !tableBody || !tableBody.isConnected) return;
  if (data.facets) { facets = data.facets; renderFilters(); }
  tableBody.replaceChildren(...data.alerts.map(row));
  if (!data.alerts.length) tableBody.append(h("tr", {}, h("td", { colspan: 10, class: "empty" }, t("no_data"))));
  const end = Math.min(data.offset + data.limit, data.total);
  pager.replaceChildren(
    h("button", { disabled: data.offset === 0, onclick: () => { state.offset = Math.max(0, state.offset - state.limit); load(false); } }, t("prev")),
    h("span", { id: "board-count" }, `${data.total ? data.offset + 1 : 0}–${end} ${t("of")} ${data.total} ${t("rows")}`),
    h("button", { disabled: end >= data.total, onclick: () => { state.offset += state.limit; load(false); } }, t("next")),
  );
  fresh.clear();
}

function deadlineCell(a) {
  const by = a.status === "firing" ? toEpoch(a.ack_by) : a.status === "acknowledged" ? toEpoch(a.resolve_by) : null;
  return h("td", { class: "deadline", dataset: { by: by || "" } }, deadlineText(by));
}
function deadlineText(by) {
  if (!by) return "";
  const left = by - Date.now() / 1000;
  return left < 0 ? `${t("overdue")} ${fmtDur(-left)}` : `${t("due_in")} ${fmtDur(left)}`;
}
function updateDeadlines() {
  for (const td of tableBody.querySelectorAll("td.deadline")) {
    const by = parseFloat(td.dataset.by);
    if (by) { td.textContent = deadlineText(by); td.classList.toggle("late", by < Date.now() / 1000); }
  }
}

export function actionButtons(a, after) {
  const can = session.permissions["alert.handle"];
  if (!can) return [];
  const id = encodeURIComponent(a.id);
  const run = async (action, body) => {
    try {
      const r = await api("POST", `/api/alerts/${id}/${action}`, body);
      toast(t("saved"), "ok");
      if (after) after(r);
    } catch (e) { toast(`${t("failed")}: ${e.message}`, "error"); }
  };
  const people = [["", "—"], ...session.people.map((p) => [p.id, `${p.name || p.id}${p.unit ? " · " + p.unit : ""}`]),
    ...session.users.filter((u) => !session.people.some((p) => p.id === u)).map((u) => [u, u])];
  const units = [["", "—"], ...session.units.map((u) => [u, u])];
  const out = [];
  if (a.status === "firing") out.push(h("button", { class: "primary act-ack", onclick: () => run("ack", {}) }, t("ack")));
  if (a.status !== "resolved") {
    out.push(h("button", { class: "act-assign", onclick: async () => {
      const v = await ask(t("assign"), [{ name: "assignee", label: t("person"), type: "select", options: people },
        { name: "unit", label: t("unit"), type: "select", options: units }, { name: "note", label: t("note") }]);
      if (v) run("assign", v);
    } }, t("assign")));
    out.push(h("button", { class: "act-resolve", onclick: async () => {
      const v = await ask(t("confirm_resolve"), [{ name: "reason", label: t("reason"), type: "textarea", required: true }]);
      if (v && v.reason.trim()) run("resolve", v);
    } }, t("resolve")));
    out.push(h("button", { class: "act-silence", onclick: async () => {
      const v = await ask(t("silence"), [
        { name: "scope", label: t("scope"), type: "select", options: [["rule_device", t("scope_rule_device")], ["device", t("scope_device")], ["rule", t("scope_rule")]] },
        { name: "duration_min", label: `${t("duration")} (${t("minutes")})`, type: "number", value: 60 },
        { name: "comment", label: t("note") }]);
      if (v) run("silence", { ...v, duration_min: Number(v.duration_min) });
    } }, t("silence")));
  }
  if (a.kind === "vehicle" && a.status !== "resolved") {
    out.push(h("button", { class: "act-driver-text", onclick: async () => {
      const v = await ask(t("driver_text"), [{ name: "text", label: t("text"), type: "textarea", required: true }]);
      if (v && v.text.trim()) run("driver_text", v);
    } }, t("driver_text")));
  }
  out.push(h("button", { class: "act-comment", onclick: async () => {
    const v = await ask(t("comment"), [{ name: "text", label: t("text"), type: "textarea", required: true }]);
    if (v && v.text.trim()) run("comment", v);
  } }, t("comment")));
  return out;
}

function row(a) {
  const siteName = (session.sites.find((s) => s.id === a.site) || {}).name || a.site || "";
  const tr = h("tr", { class: `sev-row-${a.severity} st-${a.status}${fresh.has(a.id) ? " fresh" : ""}`, dataset: { id: a.id } },
    h("td", {}, sevBadge(a.severity, sev(a.severity))),
    h("td", {}, h("span", { class: "st st-" + a.status }, st(a.status)), a.muted ? h("span", { class: "muted-tag", title: `${t("muted")}: ${label("mute", a.muted.kind)} ${a.muted.id}` }, " " + label("mute", a.muted.kind)) : null),
    h("td", { class: "time" }, fmtTime(a.starts_at)),
    h("td", { class: "summary" }, h("a", { href: "#/alert/" + encodeURIComponent(a.id) }, summaryOf(a))),
    h("td", {}, h("a", { href: "#/device/" + encodeURIComponent(a.device_id) }, a.device_id)),
    h("td", {}, siteName),
    h("td", {}, a.unit || ""),
    h("td", {}, a.assignee || a.acknowledged_by || ""),
    deadlineCell(a),
    h("td", { class: "actions" }, actionButtons(a, () => load(false))),
  );
  return tr;
}

const refresh = debounce(() => load(false), 150, 600);
const refreshFacets = debounce(() => load(true), 2000, 5000);
export function onAlert(a) {
  if (!tableBody || !tableBody.isConnected) return;
  fresh.add(a.id);
  refresh();
  refreshFacets();
}
export function resync() { if (tableBody && tableBody.isConnected) load(true); }

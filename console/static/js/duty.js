// Duty: who is on duty now, the rosters' next shifts, cover (overrides), escalations in progress.
import { fmtTime, roleLabel, sev, summaryOf, t } from "./i18n.js";
import { api, ask, h, session, sevBadge, toast } from "./util.js";

let root = null;
const local = (ts) => fmtTime(ts);

async function load() {
  const d = await api("GET", "/api/duty");
  if (!root) return;
  const person = (id) => (d.people.find((p) => p.id === id) || {}).name || id;
  const onDuty = h("section", { class: "card", id: "on-duty" }, h("h3", {}, t("on_duty_now")),
    d.on_duty.length ? h("table", { class: "grid" }, h("thead", {}, h("tr", {}, [t("unit"), t("role"), t("person"), t("from"), t("to")].map((c) => h("th", {}, c)))),
      h("tbody", {}, d.on_duty.map((s) => h("tr", {}, h("td", {}, s.unit || "—"), h("td", {}, roleLabel(s.role)), h("td", {}, h("b", {}, s.name), s.override ? " *" : ""),
        h("td", {}, local(s.starts_at)), h("td", {}, local(s.ends_at))))))
      : h("p", { class: "hint" }, t("no_data")));
  const rosters = h("section", { class: "card wide" }, h("h3", {}, t("rosters")),
    h("table", { class: "grid" }, h("thead", {}, h("tr", {}, [t("roster"), t("unit"), t("role"), t("members"), t("upcoming")].map((c) => h("th", {}, c)))),
      h("tbody", {}, d.rosters.map((r) => h("tr", {}, h("td", {}, r.name), h("td", {}, r.unit || "—"), h("td", {}, roleLabel(r.role)),
        h("td", {}, r.members.map(person).join(", ")),
        h("td", {}, h("ol", { class: "shifts" }, r.upcoming.map((u) => h("li", {}, `${local(u.starts_at)} – ${local(u.ends_at)}: `, h("b", {}, u.name), u.override ? " *" : "")))))))));
  const canEdit = session.permissions["roster.edit"];
  const overrides = h("section", { class: "card" }, h("h3", {}, t("overrides")),
    h("ul", {}, d.overrides.map((o) => h("li", {}, `${o.roster}: ${person(o.person)} ${local(o.starts_at)} – ${local(o.ends_at)} ${o.reason || ""} (${o.author})`,
      canEdit ? h("button", { class: "link", onclick: async () => { await run("DELETE", `/api/duty/overrides/${encodeURIComponent(o.id)}`); } }, "✕") : null))),
    canEdit && d.rosters.length ? h("button", { id: "add-override", onclick: async () => {
      const now = new Date(); const later = new Date(now.getTime() + 8 * 3600e3);
      const v = await ask(t("add_override"), [
        { name: "roster", label: t("roster"), type: "select", options: d.rosters.map((r) => [r.name, r.name]) },
        { name: "person", label: t("person"), type: "select", options: d.people.map((p) => [p.id, p.name || p.id]) },
        { name: "starts_at", label: t("from"), value: now.toISOString() }, { name: "ends_at", label: t("to"), value: later.toISOString() },
        { name: "reason", label: t("note") }]);
      if (v) await run("POST", "/api/duty/overrides", v);
    } }, t("add_override")) : h("p", { class: "hint" }, canEdit ? "" : t("no_permission")));
  const esc = h("section", { class: "card wide", id: "escalations" }, h("h3", {}, t("escalations")),
    d.escalations.length ? h("table", { class: "grid" }, h("tbody", {}, d.escalations.map((e) => h("tr", {},
      h("td", {}, sevBadge(e.alert.severity, sev(e.alert.severity))),
      h("td", {}, h("a", { href: "#/alert/" + encodeURIComponent(e.alert.id) }, summaryOf(e.alert))),
      h("td", {}, e.policy),
      h("td", {}, h("ol", { class: "ladder" }, e.steps.map((s) => h("li", { class: s.done ? "done" : "" }, `${local(s.at)} ${s.targets.join(", ")}`))))))))
      : h("p", { class: "hint" }, t("no_data")));
  root.replaceChildren(h("div", { class: "detail-grid" }, onDuty, overrides, esc, rosters));
}
async function run(method, path, body) {
  try { await api(method, path, body); toast(t("saved"), "ok"); await load(); } catch (e) { toast(`${t("failed")}: ${e.message}`, "error"); }
}
export async function render(el) { root = el; await load(); }
export function leave() { root = null; }
export function onAlert() { /* escalations change with alerts, but a reload every alert would be noisy */ }
export function resync() { if (root) load(); }

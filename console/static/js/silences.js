// Silences and maintenance windows: list, create, expire.
import { fmtTime, t } from "./i18n.js";
import { api, ask, h, session, toast } from "./util.js";

let root = null;
async function load() {
  const d = await api("GET", "/api/silences");
  if (!root) return;
  const canCreate = session.permissions["silence.create"];
  const list = h("table", { class: "grid", id: "silence-table" }, h("thead", {}, h("tr", {}, [t("status"), t("matchers").split(" (")[0], t("from"), t("ends"), t("author"), t("comment_col"), ""].map((c) => h("th", {}, c)))),
    h("tbody", {}, d.silences.map((s) => h("tr", { dataset: { id: s.id } }, h("td", {}, s.active ? t("active") : t("scheduled")),
      h("td", {}, h("code", {}, s.matchers.join(", "))), h("td", {}, fmtTime(s.starts_at)), h("td", {}, fmtTime(s.ends_at)),
      h("td", {}, s.author), h("td", {}, s.comment),
      h("td", {}, h("button", { class: "act-expire", onclick: async () => {
        try { await api("DELETE", `/api/silences/${encodeURIComponent(s.id)}`); toast(t("saved"), "ok"); load(); } catch (e) { toast(`${t("failed")}: ${e.message}`, "error"); }
      } }, t("expire")))))));
  if (!d.silences.length) list.querySelector("tbody").append(h("tr", {}, h("td", { colspan: 7, class: "empty" }, t("no_data"))));
  const maint = h("table", { class: "grid" }, h("thead", {}, h("tr", {}, ["", t("matchers").split(" (")[0], t("weekdays"), t("start"), t("duration")].map((c) => h("th", {}, c)))),
    h("tbody", {}, d.maintenance.map((m) => h("tr", {}, h("td", {}, m.name), h("td", {}, h("code", {}, m.matchers.join(", "))),
      h("td", {}, m.weekdays.map((w) => "一二三四五六日"[w]).join(" ")), h("td", {}, `${m.start} (${m.timezone})`), h("td", {}, `${m.duration_min} ${t("minutes")}`)))));
  root.replaceChildren(
    h("div", { class: "toolbar" }, h("h3", {}, t("silences")), canCreate ? h("button", { class: "primary", id: "new-silence", onclick: create }, t("create_silence")) : null),
    list, h("h3", {}, t("maintenance")), d.maintenance.length ? maint : h("p", { class: "hint" }, t("no_data")));
}
async function create() {
  const unitLine = session.role === "operator" && session.unit ? `unit=${session.unit}\n` : "";
  const v = await ask(t("create_silence"), [
    { name: "matchers", label: t("matchers"), type: "textarea", value: unitLine, required: true },
    { name: "starts_in_min", label: t("starts_in"), type: "number", value: 0 },
    { name: "duration_min", label: `${t("duration")} (${t("minutes")})`, type: "number", value: 120 },
    { name: "comment", label: t("comment_col") }]);
  if (!v) return;
  try {
    const start = Date.now() / 1000 + 60 * Number(v.starts_in_min || 0);
    await api("POST", "/api/silences", { matchers: v.matchers.split("\n").map((x) => x.trim()).filter(Boolean),
      starts_at: start, ends_at: start + 60 * Number(v.duration_min), comment: v.comment });
    toast(t("saved"), "ok");
    load();
  } catch (e) { toast(`${t("failed")}: ${e.message}`, "error"); }
}
export async function render(el) { root = el; await load(); }
export function leave() { root = null; }
export function resync() { if (root) load(); }

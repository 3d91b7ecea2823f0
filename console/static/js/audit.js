// The console's audit trail (supervisors and admins).
import { auditLabel, fmtTime, roleLabel, t } from "./i18n.js";
import { api, h } from "./util.js";

export async function render(el) {
  const d = await api("GET", "/api/audit?limit=500");
  el.replaceChildren(h("h3", {}, t("audit")), h("table", { class: "grid", id: "audit-table" },
    h("thead", {}, h("tr", {}, [t("time"), t("user"), t("role"), t("action"), t("target"), t("result"), ""].map((c) => h("th", {}, c)))),
    h("tbody", {}, d.entries.map((e) => h("tr", { class: e.outcome >= 400 ? "late" : "" }, h("td", {}, fmtTime(e.ts)), h("td", {}, e.user), h("td", {}, e.role === "-" ? "-" : roleLabel(e.role)),
      h("td", { title: e.action }, auditLabel(e.action)), h("td", {}, e.target), h("td", {}, String(e.outcome)), h("td", {}, h("code", {}, JSON.stringify(e.detail))))))));
}

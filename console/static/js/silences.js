// Silences and recurring maintenance windows: list, create, expire / delete.
import { fmtTime, kindLabel, t, weekdayLabel } from "./i18n.js";
import { api, ask, h, session, toast } from "./util.js";

const KINDS = ["elevator", "vehicle", "emission", "camera", "sensor"];
let root = null;

function silenceTable(d) {
  const list = h("table", { class: "grid", id: "silence-table" }, h("thead", {}, h("tr", {}, [t("status"), t("matchers").split(" (")[0], t("from"), t("ends"), t("author"), t("comment_col"), ""].map((c) => h("th", {}, c)))),
    h("tbody", {}, d.silences.map((s) => h("tr", { dataset: { id: s.id } }, h("td", {}, s.active ? t("active") : t("scheduled")),
      h("td", {}, h("code", {}, s.matchers.join(", "))), h("td", {}, fmtTime(s.starts_at)), h("td", {}, fmtTime(s.ends_at)),
      h("td", {}, s.author), h("td", {}, s.comment),
      h("td", {}, h("button", { class: "act-expire", onclick: async () => {
        try { await api("DELETE", `/api/silences/${encodeURIComponent(s.id)}`); toast(t("saved"), "ok"); load(); } catch (e) { toast(`${t("failed")}: ${e.message}`, "error"); }
      } }, t("expire")))))));
  if (!d.silences.length) list.querySelector("tbody").append(h("tr", {}, h("td", { colspan: 7, class: "empty" }, t("no_data"))));
  return list;
}

const pad = (n) => String(n).padStart(2, "0");
function endOf(m) {
  const [hh, mm] = m.start.split(":").map(Number);
  const total = (hh * 60 + mm + Math.round(m.duration_min)) % 1440;
  return `${pad(Math.floor(total / 60))}:${pad(total % 60)}`;
}

function maintenanceTable(d, canEdit) {
  const cols = [t("maint_name"), t("matchers").split(" (")[0], t("weekdays"), `${t("start")} – ${t("end")}`, t("until_col"), t("status"), t("author"), ""];
  const table = h("table", { class: "grid", id: "maint-table" }, h("thead", {}, h("tr", {}, cols.map((c) => h("th", {}, c)))),
    h("tbody", {}, d.maintenance.map((m) => h("tr", { dataset: { id: m.id || "", name: m.name }, class: m.open ? "open" : "" },
      h("td", {}, m.name, m.comment ? h("div", { class: "hint" }, m.comment) : null),
      h("td", {}, h("code", {}, m.matchers.join(", "))),
      h("td", { class: "weekdays" }, m.weekdays.length === 7 ? t("every_day") : m.weekdays.map(weekdayLabel).join(" ")),
      h("td", {}, `${m.start} – ${endOf(m)} (${m.timezone})`),
      h("td", {}, m.until || t("no_end")),
      h("td", {}, h("span", { class: m.open ? "st st-firing" : "st" }, m.open ? t("open_now") : t("not_open"))),
      h("td", {}, m.source === "config" ? t("source_config") : m.author),
      h("td", {}, canEdit && m.id ? h("button", { class: "act-delete-maint", onclick: async () => {
        const ok = await ask(`${t("confirm_delete")} ${m.name}`, []);
        if (!ok) return;
        try { await api("DELETE", `/api/maintenance/${encodeURIComponent(m.id)}`); toast(t("saved"), "ok"); load(); } catch (e) { toast(`${t("failed")}: ${e.message}`, "error"); }
      } }, t("delete")) : null)))));
  if (!d.maintenance.length) table.querySelector("tbody").append(h("tr", {}, h("td", { colspan: cols.length, class: "empty" }, t("no_data"))));
  return table;
}

// The form for a new recurring window: what it covers (site, device, kind, more matchers), which days, from when to when.
function maintenanceForm() {
  const field = (label, input) => h("label", {}, h("span", {}, label), input);
  const days = [0, 1, 2, 3, 4, 5, 6].map((d) => h("label", { class: "day" }, h("input", { type: "checkbox", name: "weekday", value: String(d) }), weekdayLabel(d)));
  const form = h("form", { id: "maint-form", class: "card form-grid", onsubmit: async (ev) => {
    ev.preventDefault();
    const f = ev.target;
    const matchers = [];
    if (f.site.value) matchers.push(`site=${f.site.value}`);
    if (f.device_id.value.trim()) matchers.push(`device_id=${f.device_id.value.trim()}`);
    if (f.kind.value) matchers.push(`kind=${f.kind.value}`);
    for (const line of f.more.value.split("\n")) if (line.trim()) matchers.push(line.trim());
    const weekdays = [...f.querySelectorAll("input[name=weekday]:checked")].map((x) => Number(x.value));
    if (!matchers.length || !weekdays.length) { toast(t("maint_need"), "error"); return; }
    try {
      await api("POST", "/api/maintenance", { name: f.name.value, matchers, weekdays, start: f.start.value, end: f.end.value,
        timezone: f.timezone.value, until: f.until.value || null, comment: f.comment.value });
      toast(t("saved"), "ok");
      f.remove(); // a fresh form with the defaults
      load();
    } catch (e) { toast(`${t("failed")}: ${e.message}`, "error"); }
  } },
  h("h3", {}, t("create_maintenance")),
  field(t("maint_name"), h("input", { name: "name", required: true, maxlength: 100 })),
  field(t("maint_site"), h("select", { name: "site" }, h("option", { value: "" }, "—"), session.sites.map((s) => h("option", { value: s.id }, `${s.name || s.id} (${s.id})`)))),
  field(t("maint_device"), h("input", { name: "device_id", maxlength: 64 })),
  field(t("maint_kind"), h("select", { name: "kind" }, h("option", { value: "" }, "—"), KINDS.map((k) => h("option", { value: k }, kindLabel(k))))),
  field(t("maint_more"), h("textarea", { name: "more", rows: 2 })),
  h("div", { class: "days", id: "maint-days" }, h("span", {}, t("maint_days")), days),
  field(t("start"), h("input", { name: "start", type: "time", value: "02:00", required: true })),
  field(t("end"), h("input", { name: "end", type: "time", value: "04:00", required: true })),
  field(t("timezone"), h("input", { name: "timezone", value: session.config.timezone || "Asia/Shanghai", required: true, maxlength: 64 })),
  field(t("until"), h("input", { name: "until", type: "date" })),
  field(t("comment_col"), h("input", { name: "comment", maxlength: 1000 })),
  h("div", { class: "buttons" }, h("button", { type: "submit", class: "primary", id: "maint-submit" }, t("create_maintenance"))));
  return form;
}

async function load() {
  const d = await api("GET", "/api/silences");
  if (!root) return;
  const canCreate = session.permissions["silence.create"];
  const canEdit = session.permissions["maintenance.edit"];
  const keepForm = root.querySelector("#maint-form");
  root.replaceChildren(
    h("div", { class: "toolbar" }, h("h3", {}, t("silences")), canCreate ? h("button", { class: "primary", id: "new-silence", onclick: create }, t("create_silence")) : null),
    silenceTable(d), h("h3", {}, t("maintenance")), maintenanceTable(d, canEdit),
    canEdit ? keepForm || maintenanceForm() : null);
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

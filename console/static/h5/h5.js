// The phone page for grid staff (and the centre): my cases, accept / set off / arrive (browser geolocation) /
// handle with photos, report an incident; the centre verifies, closes, dispatches and records follow-ups.
// Plain JS modules, no build step; received text only ever goes into text nodes.

const S = { csrf: null, user: null, role: null, grids: [], centre: false, tab: "todo", timer: null, tz: "Asia/Shanghai",
  skew: 0 };
const STAGE = { new: "待派单", dispatched: "待接单", accepted: "已接单", en_route: "已出发", on_site: "已到场",
  handled: "待核查", verified: "已核查", closed: "已办结", returned: "已退单" };
const MILESTONE = { accepted: "接单", en_route: "出发", on_site: "到场", handled: "处置", verified: "核查", closed: "办结" };
const ACTION = { wo_created: "立案", wo_dispatched: "派单", wo_accept: "接单", wo_depart: "出发", wo_arrive: "到场",
  wo_handle: "处置", wo_verify: "核查", wo_close: "办结", wo_return: "退单", wo_reassign: "改派", wo_dispatch: "派单",
  wo_photo: "照片", wo_comment: "备注", wo_overdue: "超时", wo_satisfaction: "回访", created: "告警产生",
  acknowledged: "告警确认", escalated: "升级通知", closed: "告警关闭", resolved: "告警恢复", commented: "备注",
  ack_overdue: "确认超时", resolve_overdue: "处置超时" };
const CATEGORIES = [["road_hazard", "道路隐患"], ["fire_hazard", "消防隐患"], ["elevator", "电梯故障"],
  ["pollution", "污染排放"], ["hazardous_goods", "危化品"], ["campus", "校园周边"], ["other", "其他"]];
const SATISFACTION = { satisfied: "满意", basically_satisfied: "基本满意", unsatisfied: "不满意", unreachable: "联系不上" };
const $ = (id) => document.getElementById(id);

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else if (k === "value") el.value = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

async function api(method, path, body, raw) {
  const headers = {};
  if (method !== "GET") headers["X-CSRF-Token"] = S.csrf || "";
  let data;
  if (raw) { headers["Content-Type"] = raw.type; data = raw; }
  else if (body !== undefined) { headers["Content-Type"] = "application/json"; data = JSON.stringify(body); }
  const resp = await fetch(path, { method, headers, body: data, credentials: "same-origin" });
  let out = {};
  try { out = await resp.json(); } catch (e) { out = {}; }
  if (resp.status === 401 && path !== "/api/login") { showLogin(); throw new Error("请先登录"); }
  if (!resp.ok) throw new Error(out.message || ("HTTP " + resp.status));
  return out;
}

function toast(text) {
  const el = $("toast");
  el.textContent = text;
  el.hidden = false;
  clearTimeout(toast.t);
  toast.t = setTimeout(() => { el.hidden = true; }, 3500);
}

function fmtTime(ts) {
  if (!ts) return "-";
  return new Date(ts * 1000).toLocaleString("zh-CN", { timeZone: S.tz, hour12: false, month: "2-digit", day: "2-digit",
    hour: "2-digit", minute: "2-digit", second: "2-digit" });
}
function fmtLeft(s) {
  const a = Math.abs(Math.round(s));
  const txt = a >= 3600 ? Math.floor(a / 3600) + "小时" + Math.floor((a % 3600) / 60) + "分" :
    a >= 60 ? Math.floor(a / 60) + "分" + (a % 60) + "秒" : a + "秒";
  return s < 0 ? "已超时 " + txt : "剩余 " + txt;
}
// Deadlines count down every second against the server's clock (the page learns the skew from each answer).
function dueLine(o, m, now) {
  S.skew = now - Date.now() / 1000;
  return h("div", { class: "due" + (o.due[m] < now ? " late" : ""), "data-due": o.due[m], "data-label": MILESTONE[m] },
    MILESTONE[m] + "时限 " + fmtTime(o.due[m]) + "（" + fmtLeft(o.due[m] - now) + "）");
}
setInterval(() => {
  const now = Date.now() / 1000 + S.skew;
  for (const el of document.querySelectorAll("[data-due]")) {
    const due = Number(el.dataset.due);
    el.textContent = el.dataset.label + "时限 " + fmtTime(due) + "（" + fmtLeft(due - now) + "）";
    el.classList.toggle("late", due < now);
  }
}, 1000);
function nextMilestone(o) {
  return Object.keys(MILESTONE).find((m) => o.due[m] !== undefined && o.times[m] === undefined && !o.overdue.includes(m));
}

// ------------------------------------------------------------------ login

function showLogin() {
  $("app").hidden = true;
  $("login").hidden = false;
  clearInterval(S.timer);
}

async function start() {
  try {
    const s = await api("GET", "/api/session");
    enter(s);
  } catch (e) { showLogin(); }
}

function enter(s) {
  S.csrf = s.csrf; S.user = s.user; S.role = s.role; S.grids = s.grids || [];
  S.tz = (s.config && s.config.timezone) || S.tz;
  S.centre = !!(s.workorders && s.workorders.centre);
  $("who").textContent = s.user + (S.grids.length ? " · " + S.grids.join(",") : (S.centre ? " · 指挥中心" : ""));
  $("nav-report").hidden = S.role !== "grid_staff";
  $("login").hidden = true;
  $("app").hidden = false;
  route();
  clearInterval(S.timer);
  S.timer = setInterval(() => { if (!document.hidden && location.hash.startsWith("#list")) route(); }, 10000);
}

$("login-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  $("login-error").textContent = "";
  try {
    const s = await api("POST", "/api/login", { username: $("login-user").value, password: $("login-pass").value });
    enter(s);
  } catch (e) { $("login-error").textContent = e.message; }
});
$("logout").addEventListener("click", async () => {
  try { await api("POST", "/api/logout", {}); } catch (e) { /* already out */ }
  showLogin();
});
window.addEventListener("hashchange", () => route());

// ------------------------------------------------------------------ views

function route() {
  const hash = location.hash || "#list";
  for (const a of document.querySelectorAll(".bar a")) a.classList.toggle("on", hash.startsWith(a.getAttribute("href")));
  const view = $("view");
  if (hash.startsWith("#case/")) return showCase(view, decodeURIComponent(hash.slice(6)));
  if (hash === "#report") return showReport(view);
  if (hash === "#figures") return showFigures(view);
  return showList(view);
}

async function showList(view) {
  const tabs = S.centre
    ? [["todo", "待处理", "dispatched,accepted,en_route,on_site,handled,verified,returned,new"], ["all", "全部", ""]]
    : [["todo", "待办", "dispatched,accepted,en_route,on_site"], ["done", "已处置", "handled,verified,closed"]];
  if (!tabs.some((t) => t[0] === S.tab)) S.tab = tabs[0][0];
  const stage = tabs.find((t) => t[0] === S.tab)[2];
  let data;
  try { data = await api("GET", "/api/wo?limit=100" + (stage ? "&stage=" + stage : "")); } catch (e) {
    view.replaceChildren(h("p", { class: "error" }, e.message)); return;
  }
  const now = data.now;
  const bar = h("div", { class: "tabs" }, tabs.map(([k, label]) => h("button", { type: "button",
    class: k === S.tab ? "on" : "", onclick: () => { S.tab = k; route(); } }, label)));
  const cards = data.workorders.map((o) => {
    const m = nextMilestone(o);
    return h("a", { href: "#case/" + encodeURIComponent(o.id), class: "case-link", style: "color:inherit;text-decoration:none",
      "data-id": o.id },
      h("div", { class: "card case" },
        h("h2", {}, o.summary || o.category),
        h("span", { class: "stage" + (o.overdue.length ? " overdue" : "") }, STAGE[o.stage] || o.stage),
        o.overdue.length ? h("span", { class: "error" }, " 超时：" + o.overdue.map((x) => MILESTONE[x] || x).join("、")) : null,
        h("div", { class: "meta" }, (o.grid_name || o.grid || "未派单") + " · " + (o.place || o.device_id || "-")),
        m ? dueLine(o, m, now) : null));
  });
  view.replaceChildren(bar, cards.length ? h("div", { id: "cases" }, cards) : h("p", { class: "meta", id: "cases" }, "暂无工单"));
}

function here() {
  return new Promise((resolve, reject) => {
    if (!navigator.geolocation) { reject(new Error("此浏览器不能定位")); return; }
    navigator.geolocation.getCurrentPosition(
      (p) => resolve({ lat: p.coords.latitude, lon: p.coords.longitude, accuracy_m: p.coords.accuracy || 0 }),
      (e) => reject(new Error("定位失败：" + (e.message || e.code))), { enableHighAccuracy: true, timeout: 15000 });
  });
}

// Photos are shrunk on the phone (JPEG, longest side 1600 px) before upload; the server checks type and size.
function shrink(file) {
  return new Promise((resolve) => {
    const reader = new FileReader();
    reader.onload = () => {
      const img = new Image();
      img.onload = () => {
        const k = Math.min(1, 1600 / Math.max(img.width, img.height));
        const c = document.createElement("canvas");
        c.width = Math.max(1, Math.round(img.width * k)); c.height = Math.max(1, Math.round(img.height * k));
        c.getContext("2d").drawImage(img, 0, 0, c.width, c.height);
        c.toBlob((b) => resolve(b || file), "image/jpeg", 0.85);
      };
      img.onerror = () => resolve(file);
      img.src = reader.result;
    };
    reader.onerror = () => resolve(file);
    reader.readAsDataURL(file);
  });
}

async function uploadPhotos(id, input) {
  for (const f of Array.from(input.files || [])) {
    const blob = await shrink(f);
    await api("POST", "/api/wo/" + encodeURIComponent(id) + "/photos", undefined, blob);
  }
}

async function act(id, action, body, okText) {
  try {
    await api("POST", "/api/wo/" + encodeURIComponent(id) + "/" + action, body || {});
    toast(okText);
    route();
  } catch (e) { toast("失败：" + e.message); }
}

function buttons(o, grids) {
  const id = o.id;
  const out = [];
  const b = (label, cls, fn, bid) => out.push(h("button", { type: "button", class: cls, id: bid, onclick: fn }, label));
  if (S.role === "grid_staff") {
    if (o.stage === "dispatched") b("接单", "primary", () => act(id, "accept", {}, "已接单"), "btn-accept");
    if (o.stage === "accepted") b("出发", "primary", () => act(id, "depart", {}, "已出发"), "btn-depart");
    if (o.stage === "en_route") b("到场", "primary", async () => {
      try { const p = await here(); await act(id, "arrive", p, "已到场"); } catch (e) { toast(e.message); }
    }, "btn-arrive");
    if (o.stage === "dispatched" || o.stage === "accepted") b("退单", "danger", () => {
      const reason = prompt("退单原因（必填）");
      if (reason) act(id, "return", { reason }, "已退单");
    }, "btn-return");
  }
  if (S.centre) {
    if (o.stage === "handled") {
      b("核查通过", "primary", () => act(id, "verify", { passed: true }, "核查通过"), "btn-verify");
      b("核查不通过", "danger", () => {
        const note = prompt("需要补充处置的内容（必填）");
        if (note) act(id, "verify", { passed: false, note }, "已退回重新处置");
      }, "btn-reject");
    }
    if (o.stage === "verified") b("办结", "primary", () => act(id, "close", { note: "办结" }, "已办结"), "btn-close");
    if (["new", "returned", "dispatched", "accepted", "en_route"].includes(o.stage) && grids.length) {
      const sel = h("select", { id: "dispatch-grid" }, grids.map((g) => h("option", { value: g.id }, g.name + "（" + g.id + "）")));
      const redo = !["new", "returned"].includes(o.stage);
      out.push(h("label", {}, redo ? "改派到网格" : "派单到网格", sel));
      b(redo ? "改派" : "派单", "", () => {
        const reason = redo ? prompt("改派原因（必填）") : "";
        if (redo && !reason) return;
        act(id, redo ? "reassign" : "dispatch", { grid: sel.value, reason: reason || "" }, redo ? "已改派" : "已派单");
      }, "btn-dispatch");
    }
    if (o.stage === "closed" && !o.satisfaction) {
      const sel = h("select", { id: "satisfaction" }, [["satisfied", "满意"], ["basically_satisfied", "基本满意"],
        ["unsatisfied", "不满意"], ["unreachable", "联系不上"]].map(([v, l]) => h("option", { value: v }, l)));
      out.push(h("label", {}, "回访结果", sel));
      b("记录回访", "", () => act(id, "satisfaction", { result: sel.value }, "已记录"), "btn-satisfaction");
    }
  }
  return out;
}

function handleForm(o) {
  const notes = h("textarea", { id: "handle-notes", placeholder: "处置情况（必填）" });
  const photos = h("input", { type: "file", id: "handle-photos", accept: "image/jpeg,image/png", capture: "environment", multiple: true });
  const go = h("button", { type: "button", class: "primary", id: "btn-handle", onclick: async () => {
    if (!notes.value.trim()) { toast("请填写处置情况"); return; }
    go.disabled = true;
    try {
      await uploadPhotos(o.id, photos);
      await api("POST", "/api/wo/" + encodeURIComponent(o.id) + "/handle", { notes: notes.value });
      toast("已提交处置结果");
      route();
    } catch (e) { toast("失败：" + e.message); go.disabled = false; }
  } }, "提交处置");
  return h("div", { class: "card" }, h("h2", {}, "现场处置"), h("label", {}, "处置情况", notes),
    h("label", {}, "现场照片", photos), h("div", { class: "actions" }, go));
}

async function showCase(view, id) {
  let data, grids = [];
  try {
    data = await api("GET", "/api/wo/" + encodeURIComponent(id));
    if (S.centre) grids = (await api("GET", "/api/wo/grids")).grids;
  } catch (e) { view.replaceChildren(h("p", { class: "error" }, e.message), h("a", { href: "#list" }, "返回")); return; }
  const o = data.workorder;
  const m = nextMilestone(o);
  const info = h("div", { class: "card case", id: "case", "data-stage": o.stage },
    h("h2", {}, o.summary || o.category),
    h("span", { class: "stage" + (o.overdue.length ? " overdue" : ""), id: "case-stage" }, STAGE[o.stage] || o.stage),
    h("div", { class: "meta" }, "网格：" + (o.grid_name || o.grid || "未派单") + (o.community ? " · " + o.community : "")),
    h("div", { class: "meta" }, "地点：" + (o.place || o.device_id || "-") + (o.lat != null ? "（" + o.lat.toFixed(5) + ", " + o.lon.toFixed(5) + "）" : "")),
    h("div", { class: "meta" }, "类别：" + o.category + " · 来源：" + (o.source === "grid_staff" ? "网格员上报" : "设备告警") + " · 时限规则：" + (o.policy || "-")),
    o.assignee ? h("div", { class: "meta" }, "处置人：" + o.assignee) : null,
    m ? dueLine(o, m, data.now) : null,
    o.overdue.length ? h("div", { class: "error" }, "超时环节：" + o.overdue.map((x) => MILESTONE[x] || x).join("、")) : null,
    o.arrive_flagged ? h("div", { class: "flag" }, "到场位置距案件 " + Math.round(o.arrive_distance_m) + " 米，需核实") : null,
    o.last_reason ? h("div", { class: "meta" }, "说明：" + o.last_reason) : null,
    o.notes ? h("div", {}, "处置情况：" + o.notes) : null,
    o.satisfaction ? h("div", { class: "meta", id: "case-satisfaction" }, "回访：" + (SATISFACTION[o.satisfaction] || o.satisfaction)) : null,
    h("div", { class: "actions" }, buttons(o, grids)));
  const photos = o.photos.length ? h("div", { class: "card photos", id: "photos" }, o.photos.map((n) =>
    h("img", { src: "/api/wo/" + encodeURIComponent(o.id) + "/photos/" + n, alt: "现场照片 " + n }))) : null;
  const tl = h("div", { class: "card" }, h("h2", {}, "处理过程"), h("ul", { class: "timeline", id: "timeline" },
    data.timeline.map((e) => h("li", {}, fmtTime(e.ts) + " " + (ACTION[e.action] || e.action) + " · " + e.actor +
      (e.detail && (e.detail.reason || e.detail.note || e.detail.notes || e.detail.text || e.detail.milestone)
        ? " · " + (e.detail.reason || e.detail.note || e.detail.notes || e.detail.text || MILESTONE[e.detail.milestone] || "") : "")))));
  view.replaceChildren(...[h("a", { href: "#list" }, "‹ 返回列表"), info,
    S.role === "grid_staff" && o.stage === "on_site" ? handleForm(o) : null, photos, tl].filter(Boolean));
}

function showReport(view) {
  const cat = h("select", { id: "report-category" }, CATEGORIES.map(([v, l]) => h("option", { value: v }, l)));
  const summary = h("input", { id: "report-summary", placeholder: "简要描述（必填）", maxlength: "500" });
  const place = h("input", { id: "report-place", placeholder: "地点描述，如 某小区3幢门口", maxlength: "200" });
  const photo = h("input", { type: "file", id: "report-photo", accept: "image/jpeg,image/png", capture: "environment" });
  const go = h("button", { type: "button", class: "primary", id: "btn-report", onclick: async () => {
    if (!summary.value.trim()) { toast("请填写描述"); return; }
    go.disabled = true;
    try {
      const p = await here();
      const out = await api("POST", "/api/wo", { category: cat.value, summary: summary.value, place: place.value,
        lat: p.lat, lon: p.lon });
      await uploadPhotos(out.workorder.id, photo);
      toast("已上报，立案编号 " + out.workorder.id);
      location.hash = "#case/" + encodeURIComponent(out.workorder.id);
    } catch (e) { toast("上报失败：" + e.message); go.disabled = false; }
  } }, "上报（使用当前位置）");
  view.replaceChildren(h("div", { class: "card" }, h("h2", {}, "上报事件"), h("label", {}, "类别", cat),
    h("label", {}, "描述", summary), h("label", {}, "地点", place), h("label", {}, "照片", photo),
    h("div", { class: "actions" }, go)));
}

async function showFigures(view) {
  let f;
  try { f = await api("GET", "/api/wo/figures"); } catch (e) { view.replaceChildren(h("p", { class: "error" }, e.message)); return; }
  const pct = (x) => (x === null || x === undefined ? "-" : Math.round(x * 1000) / 10 + "%");
  const sec = (x) => (x === null || x === undefined ? "-" : Math.round(x) + " 秒");
  const row = (k, a) => h("tr", {}, h("td", {}, k), h("td", {}, a.total), h("td", {}, pct(a.closure_rate)),
    h("td", {}, sec(a.mean_response_s)), h("td", {}, sec(a.mean_arrival_s)), h("td", {}, pct(a.on_time_rate.accepted)),
    h("td", {}, pct(a.on_time_rate.on_site)));
  const head = h("tr", {}, ["网格", "工单", "办结率", "平均响应", "平均到场", "接单及时率", "到场及时率"].map((x) => h("th", {}, x)));
  view.replaceChildren(h("div", { class: "card", id: "figures" }, h("h2", {}, "工单统计"),
    h("p", { id: "figures-summary" }, "工单 " + f.total + " · 办结 " + f.closed + " · 办结率 " + pct(f.closure_rate) +
      " · 满意率 " + pct(f.satisfaction_rate)),
    h("table", {}, head, row("全部", f), Object.entries(f.by.grid).map(([k, a]) => row(k, a)))));
}

start();

// The console's shell: login, navigation, server push, the critical banner and its sound.
import { fmtTime, getLocale, roleLabel, setLocale, setup, summaryOf, t, toEpoch } from "./i18n.js";
import { api, h, session, toast } from "./util.js";
import * as boardView from "./board.js";
import * as alertView from "./alert.js";
import * as mapView from "./map.js";
import * as devicesView from "./devices.js";
import * as dutyView from "./duty.js";
import * as figuresView from "./figures.js";
import * as silencesView from "./silences.js";
import * as auditView from "./audit.js";

const views = { board: boardView, alert: alertView, map: mapView, devices: devicesView, device: devicesView.detail,
  duty: dutyView, figures: figuresView, silences: silencesView, audit: auditView };
let current = null;
let source = null;
const critical = new Map(); // id -> alert (firing critical, not acknowledged)
let audio = null;
let soundOn = localStorage.getItem("vigil.sound") !== "off";
let beepTimer = null;

// ------------------------------------------------------------------ sound (WebAudio, no files)
function audioContext() {
  if (!audio) {
    const Ctx = window.AudioContext || window.webkitAudioContext;
    if (!Ctx) return null;
    audio = new Ctx();
  }
  return audio;
}
export function beep() {
  if (!soundOn) return;
  const ctx = audioContext();
  if (!ctx) return;
  if (ctx.state === "suspended") { ctx.resume().catch(() => {}); }
  const t0 = ctx.currentTime + 0.02;
  for (let i = 0; i < 3; i++) {
    const osc = ctx.createOscillator();
    const gain = ctx.createGain();
    osc.type = "square";
    osc.frequency.value = i % 2 ? 660 : 880;
    gain.gain.setValueAtTime(0.0001, t0 + i * 0.25);
    gain.gain.exponentialRampToValueAtTime(0.25, t0 + i * 0.25 + 0.02);
    gain.gain.exponentialRampToValueAtTime(0.0001, t0 + i * 0.25 + 0.2);
    osc.connect(gain).connect(ctx.destination);
    osc.start(t0 + i * 0.25);
    osc.stop(t0 + i * 0.25 + 0.22);
  }
  window.__vigilBeeps = (window.__vigilBeeps || 0) + 1;
}
function updateSoundButton() {
  const b = document.getElementById("sound");
  b.textContent = "♫";
  b.classList.toggle("off", !soundOn);
  const blocked = audio && audio.state === "suspended";
  b.title = blocked ? t("sound_blocked") : t(soundOn ? "sound_on" : "sound_off");
  b.classList.toggle("blocked", !!blocked && soundOn);
}

// ------------------------------------------------------------------ the critical banner
function renderBanner() {
  const el = document.getElementById("banner");
  const list = [...critical.values()].sort((a, b) => toEpoch(b.starts_at) - toEpoch(a.starts_at));
  el.hidden = list.length === 0;
  document.title = (list.length ? `(${list.length}) ` : "") + (session.config.title || "Vigil");
  if (!list.length) { clearInterval(beepTimer); beepTimer = null; return; }
  const a = list[0];
  el.replaceChildren(...[
    h("strong", {}, "⚠ " + t("banner_critical") + ": "),
    h("a", { href: "#/alert/" + a.id, class: "banner-link" }, `${fmtTime(a.starts_at, false)} ${summaryOf(a)}`),
    list.length > 1 ? h("span", { class: "more" }, " · " + t("banner_more", { n: list.length - 1 })) : null,
    session.permissions["alert.handle"]
      ? h("button", { class: "primary", id: "banner-ack", onclick: () => quickAck(a.id) }, t("ack")) : null,
  ].filter(Boolean));
  if (!beepTimer) beepTimer = setInterval(() => { if (critical.size) beep(); }, 10000);
}
async function quickAck(id) {
  try {
    const r = await api("POST", `/api/alerts/${encodeURIComponent(id)}/ack`, {});
    noteAlert(r.alert);
    toast(t("saved"), "ok");
  } catch (e) { toast(`${t("failed")}: ${e.message}`, "error"); }
}
export function setCritical(list) {
  critical.clear();
  for (const a of list) critical.set(a.id, a);
  renderBanner();
}
function noteAlert(a) {
  const was = critical.has(a.id);
  if (a.severity === "critical" && a.status === "firing" && !a.muted) {
    critical.set(a.id, a);
    if (!was) beep();
  } else critical.delete(a.id);
  renderBanner();
}

// ------------------------------------------------------------------ server push
function connect() {
  if (source) source.close();
  source = new EventSource("/api/events");
  const live = document.getElementById("live");
  source.addEventListener("hello", () => {
    live.className = "live on"; live.title = t("live_on");
    refreshCritical();
    if (current && current.resync) current.resync();
  });
  source.addEventListener("alert", (ev) => {
    const a = JSON.parse(ev.data);
    noteAlert(a);
    if (current && current.onAlert) current.onAlert(a);
  });
  source.addEventListener("devices", (ev) => {
    const d = JSON.parse(ev.data);
    if (current && current.onDevices) current.onDevices(d.ids);
  });
  source.addEventListener("resync", () => { refreshCritical(); if (current && current.resync) current.resync(); });
  source.addEventListener("logout", () => { source.close(); showLogin(); });
  source.onerror = () => { live.className = "live off"; live.title = t("live_off"); };
}
async function refreshCritical() {
  try {
    const b = await api("GET", "/api/board?limit=1");
    setCritical(b.critical);
  } catch { /* shown by the live indicator */ }
}

// ------------------------------------------------------------------ routing
function route() {
  const hash = location.hash.replace(/^#\/?/, "") || "board";
  const [name, ...rest] = hash.split("/");
  const view = views[name] || boardView;
  if (current && current.leave) current.leave();
  current = view;
  for (const a of document.querySelectorAll("#nav a")) {
    a.classList.toggle("active", a.dataset.view === name || (name === "alert" && a.dataset.view === "board")
      || (name === "device" && a.dataset.view === "devices"));
  }
  const root = document.getElementById("view");
  root.replaceChildren();
  root.className = "view view-" + name;
  Promise.resolve(view.render(root, rest.map(decodeURIComponent))).catch((e) => {
    root.append(h("p", { class: "error" }, `${t("failed")}: ${e.message}`));
  });
}

function translateStatic() {
  for (const el of document.querySelectorAll("[data-t]")) el.textContent = t(el.dataset.t);
  document.getElementById("lang").textContent = getLocale() === "zh" ? "EN" : "中文";
  document.getElementById("login-lang").textContent = getLocale() === "zh" ? "English" : "中文";
  document.documentElement.lang = getLocale() === "zh" ? "zh-CN" : "en";
  if (session.user) document.getElementById("whoami").textContent = `${session.user} (${roleLabel(session.role)}${session.unit ? " · " + session.unit : ""})`;
  updateSoundButton();
}

// ------------------------------------------------------------------ session
function showLogin() {
  document.getElementById("app").hidden = true;
  document.getElementById("login").hidden = false;
  if (source) { source.close(); source = null; }
  translateStatic();
  document.getElementById("login-user").focus();
}
function start(s) {
  Object.assign(session, s);
  setup(s.config.locale, s.config.timezone);
  document.getElementById("login").hidden = true;
  document.getElementById("app").hidden = false;
  document.getElementById("brand").textContent = s.config.title;
  document.getElementById("login-title").textContent = s.config.title;
  document.getElementById("whoami").textContent = `${s.user} (${roleLabel(s.role)}${s.unit ? " · " + s.unit : ""})`;
  document.getElementById("nav-audit").hidden = !s.permissions["audit.view"];
  document.getElementById("nav-workorders").hidden = !(s.workorders && s.workorders.centre);
  translateStatic();
  connect();
  route();
}

async function boot() {
  document.getElementById("login-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    audioContext(); // created inside a user gesture, so the sound may play later
    if (audio && audio.state === "suspended") audio.resume().catch(() => {});
    const err = document.getElementById("login-error");
    err.textContent = "";
    try {
      const s = await api("POST", "/api/login", { username: document.getElementById("login-user").value,
        password: document.getElementById("login-pass").value });
      document.getElementById("login-pass").value = "";
      start(s);
    } catch (e) { err.textContent = e.status === 401 ? t("bad_login") : e.message; }
  });
  document.getElementById("logout").addEventListener("click", async () => {
    try { await api("POST", "/api/logout", {}); } catch { /* gone anyway */ }
    showLogin();
  });
  const flip = () => { setLocale(getLocale() === "zh" ? "en" : "zh"); translateStatic(); if (session.user) { renderBanner(); route(); } };
  document.getElementById("lang").addEventListener("click", flip);
  document.getElementById("login-lang").addEventListener("click", flip);
  document.getElementById("sound").addEventListener("click", () => {
    soundOn = !soundOn; localStorage.setItem("vigil.sound", soundOn ? "on" : "off");
    audioContext(); if (audio) audio.resume().catch(() => {});
    updateSoundButton();
  });
  document.addEventListener("click", () => { if (audio && audio.state === "suspended") audio.resume().then(updateSoundButton, () => {}); });
  window.addEventListener("hashchange", route);
  window.addEventListener("vigil:logout", showLogin);
  setInterval(() => { document.getElementById("clock").textContent = fmtTime(Date.now() / 1000); }, 1000);
  setInterval(updateSoundButton, 3000);
  try {
    start(await api("GET", "/api/session"));
  } catch {
    showLogin();
  }
}
boot();

// DOM building without innerHTML (text is always set as text), the API client, dialogs and toasts.
import { t } from "./i18n.js";

export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else if (k === "dataset") Object.assign(el.dataset, v);
    else if (k === "value") el.value = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  append(el, children);
  return el;
}
function append(el, children) {
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}
const SVGNS = "http://www.w3.org/2000/svg";
export function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVGNS, tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

export const session = { csrf: null, user: null, role: null, unit: null, config: {}, permissions: {}, people: [], users: [],
  units: [], sites: [], industries: [] };

export class ApiError extends Error {
  constructor(status, code, message) { super(message); this.status = status; this.code = code; }
}

export async function api(method, path, body) {
  const opts = { method, headers: {}, credentials: "same-origin" };
  if (method !== "GET") {
    opts.headers["X-CSRF-Token"] = session.csrf || "";
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body || {});
  }
  const resp = await fetch(path, opts);
  let data = null;
  try { data = await resp.json(); } catch { data = null; }
  if (!resp.ok) {
    if (resp.status === 401 && path !== "/api/login") window.dispatchEvent(new Event("vigil:logout"));
    throw new ApiError(resp.status, data && data.error, (data && data.message) || resp.statusText);
  }
  return data;
}

export function qs(params) {
  const u = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== "" && v !== null && v !== undefined) u.set(k, v);
  return u.toString();
}

let toastTimer = null;
export function toast(msg, kind = "info") {
  const el = document.getElementById("toast");
  el.textContent = msg;
  el.className = "toast " + kind;
  el.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { el.hidden = true; }, 3500);
}

// A modal form: fields [{name, label, type: text|textarea|select|number|datetime, options, value, required}].
export function ask(title, fields, okLabel) {
  const dlg = document.getElementById("dialog");
  const form = document.getElementById("dialog-form");
  form.replaceChildren();
  form.append(h("h3", {}, title));
  const inputs = {};
  for (const f of fields) {
    let input;
    if (f.type === "select") {
      input = h("select", { name: f.name }, f.options.map(([v, l]) => h("option", { value: v, selected: v === f.value }, l)));
    } else if (f.type === "textarea") {
      input = h("textarea", { name: f.name, rows: 4, required: f.required }, f.value || "");
    } else {
      input = h("input", { name: f.name, type: f.type || "text", value: f.value ?? "", required: f.required, step: f.step });
    }
    inputs[f.name] = input;
    form.append(h("label", {}, h("span", {}, f.label), input));
  }
  const okBtn = h("button", { value: "ok", class: "primary", id: "dialog-ok" }, okLabel || t("ok"));
  form.append(h("div", { class: "buttons" }, h("button", { value: "cancel", formnovalidate: true }, t("cancel")), okBtn));
  return new Promise((resolve) => {
    dlg.onclose = () => {
      if (dlg.returnValue !== "ok") return resolve(null);
      const out = {};
      for (const [k, el] of Object.entries(inputs)) out[k] = el.value;
      resolve(out);
    };
    dlg.returnValue = "";
    dlg.showModal();
    const first = Object.values(inputs)[0];
    if (first) first.focus();
  });
}

export function sevBadge(sev, label) { return h("span", { class: "sev sev-" + sev }, label); }
export function debounce(fn, wait, maxWait) {
  let timer = null, first = 0;
  return (...args) => {
    const now = Date.now();
    if (!timer) first = now;
    clearTimeout(timer);
    const delay = maxWait && now - first + wait > maxWait ? Math.max(0, maxWait - (now - first)) : wait;
    timer = setTimeout(() => { timer = null; fn(...args); }, delay);
  };
}

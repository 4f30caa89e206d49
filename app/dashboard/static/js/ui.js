// Small DOM helpers and formatters shared by the pages. Text always goes in as text nodes (no innerHTML).

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") el.className = value;
    else if (key.startsWith("on") && typeof value === "function") el.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key in el && typeof value !== "string") el[key] = value;
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

export function replace(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

export function announce(message) {
  const region = document.getElementById("announcer");
  region.textContent = "";
  setTimeout(() => { region.textContent = message; }, 30);
}

export const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
export const STATUSES = [
  "queued", "running", "cancelling", "pausing", "paused", "succeeded", "failed", "cancelled",
];
// The statuses a pause or a resume is accepted from (docs/design.md "Job states").
export const PAUSABLE = new Set(["queued", "running"]);

export function statusBadge(status) {
  return h("span", { class: `status status-${status}`, "data-status": status }, status);
}

export function fmtDuration(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return "—";
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${s % 60} s`;
  return `${Math.floor(m / 60)} h ${m % 60} min`;
}

export function fmtDate(iso) {
  if (!iso) return "—";
  const d = new Date(iso.endsWith("Z") || /[+-]\d\d:\d\d$/.test(iso) ? iso : `${iso}Z`);
  return d.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
}

export function timeEl(iso) {
  return iso ? h("time", { datetime: iso }, fmtDate(iso)) : "—";
}

export function fmtBytes(n) {
  if (n === null || n === undefined) return "—";
  const units = ["B", "KiB", "MiB", "GiB"];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i += 1; }
  return `${v.toFixed(i ? 1 : 0)} ${units[i]}`;
}

export function fmtNum(v, digits = 4) {
  if (v === null || v === undefined) return "—";
  if (typeof v !== "number") return String(v);
  if (Number.isInteger(v)) return String(v);
  const a = Math.abs(v);
  return a !== 0 && (a < 1e-3 || a >= 1e5) ? v.toExponential(2) : v.toFixed(digits).replace(/0+$/, "").replace(/\.$/, "");
}

export function progressCell(progress, status) {
  const fraction = status === "succeeded" ? 1 : Math.min(1, Math.max(0, progress?.fraction || 0));
  const pct = Math.round(fraction * 100);
  return h("span", { class: "progress-cell" },
    h("progress", { max: "1", value: String(fraction), "aria-label": `Progress ${pct}%` }, `${pct}%`),
    h("span", { "aria-hidden": "true" }, `${pct}%`));
}

export function studentText(student, teacher) {
  if (!student) return "—";
  const width = student.hidden_size || teacher?.hidden_size;
  const layers = `${student.num_layers} layer${student.num_layers === 1 ? "" : "s"}`;
  return width ? `${layers} × ${width}` : layers;
}

export function errorBox(error) {
  const message = error?.message || String(error);
  return h("div", { class: "alert", role: "alert" }, h("strong", {}, "Error: "), message);
}

export function pageTitle(text) {
  document.title = `${text} · gkd dashboard`;
}

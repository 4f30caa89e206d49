// Hash router and the API-key login. Each page module exports render(main, params, query) and may return
// a cleanup function (stop timers, abort streams) that runs before the next page renders.

import { api, auth } from "./api.js";
import { errorBox, h, pageTitle, replace } from "./ui.js";

const ROUTES = [
  [/^#\/jobs\/([\w-]+)\/checkpoints\/([\w-]+)\/saliency$/, "saliency", (m) => ({ jobId: m[1], checkpointId: m[2] })],
  [/^#\/jobs\/([\w-]+)$/, "job", (m) => ({ jobId: m[1] })],
  [/^#\/jobs$/, "jobs", () => ({})],
  [/^#\/new$/, "new", () => ({})],
  [/^#\/datasets$/, "datasets", () => ({})],
  [/^#\/webhooks$/, "webhooks", () => ({})],
];
const MODULES = {
  jobs: () => import("./jobs.js"),
  job: () => import("./job.js"),
  new: () => import("./newjob.js"),
  datasets: () => import("./datasets.js"),
  saliency: () => import("./saliency.js"),
  webhooks: () => import("./webhooks.js"),
};
const NAV = { jobs: "jobs", job: "jobs", saliency: "jobs", new: "new", datasets: "datasets", webhooks: "webhooks" };

const main = document.getElementById("main");
const nav = document.getElementById("nav");
let cleanup = null;
let generation = 0;

function parseHash() {
  const [path, search] = (location.hash || "#/jobs").split("?");
  const query = new URLSearchParams(search || "");
  for (const [pattern, name, params] of ROUTES) {
    const m = path.match(pattern);
    if (m) return { name, params: params(m), query };
  }
  return { name: "jobs", params: {}, query };
}

async function route() {
  const mine = ++generation;
  if (cleanup) { try { cleanup(); } catch { /* page already gone */ } cleanup = null; }
  if (!auth.key) { showLogin(); return; }
  nav.hidden = false;
  const { name, params, query } = parseHash();
  for (const a of nav.querySelectorAll("a[data-nav]")) {
    if (a.dataset.nav === NAV[name]) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  replace(main, h("p", { class: "muted" }, "Loading…"));
  try {
    const module = await MODULES[name]();
    if (mine !== generation) return;
    const result = await module.render(main, params, query);
    if (mine !== generation) { if (typeof result === "function") result(); return; }
    cleanup = typeof result === "function" ? result : null;
  } catch (error) {
    if (mine !== generation) return;
    replace(main, h("h1", {}, "Something went wrong"), errorBox(error));
  }
  const heading = main.querySelector("h1");
  if (heading && document.activeElement === document.body) {
    heading.tabIndex = -1;
    heading.focus({ preventScroll: true });
  }
}

function showLogin(message) {
  nav.hidden = true;
  pageTitle("Sign in");
  const input = h("input", {
    id: "api-key", name: "api-key", type: "password", autocomplete: "off", spellcheck: "false", required: true,
    placeholder: "gkd_…", "aria-describedby": "api-key-help",
  });
  const status = h("div", { "aria-live": "assertive" });
  const form = h("form", { class: "card login", "aria-labelledby": "login-title" },
    h("h1", { id: "login-title" }, "Sign in with an API key"),
    h("div", { class: "field" },
      h("label", { for: "api-key" }, "API key"),
      input,
      h("span", { class: "help", id: "api-key-help" },
        "Printed by ", h("code", {}, "make run"), " or ", h("code", {}, "gkd keys create --tenant NAME"),
        ". It is kept in this tab only (sessionStorage) and sent in the Authorization header.")),
    h("p", {}, h("button", { type: "submit" }, "Sign in")),
    status);
  if (message) status.append(h("div", { class: "alert", role: "alert" }, message));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const key = input.value.trim();
    if (!key) return;
    auth.set(key);
    try {
      await api("/v1/jobs?limit=1");
    } catch (error) {
      auth.clear();
      replace(status, errorBox(error.status === 401 ? { message: "That key was not accepted." } : error));
      input.setAttribute("aria-invalid", "true");
      input.focus();
      return;
    }
    if (!location.hash || location.hash === "#/login") location.hash = "#/jobs";
    else route();
  });
  replace(main, form);
  input.focus();
}

window.addEventListener("hashchange", route);
window.addEventListener("gkd:unauthorized", () => {
  if (document.getElementById("api-key")) return; // the sign-in form reports it itself
  auth.clear();
  if (cleanup) { try { cleanup(); } catch { /* ignore */ } cleanup = null; }
  generation += 1;
  showLogin("The API key was refused (revoked?). Sign in again.");
});
document.getElementById("logout").addEventListener("click", () => {
  auth.clear();
  route();
});

route();

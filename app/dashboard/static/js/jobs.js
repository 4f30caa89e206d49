// Jobs page: the tenant's jobs with status, method, teacher, student size, progress, ETA and best dev accuracy;
// filter by status.

import { api, listAll } from "./api.js";
import {
  STATUSES, TERMINAL, errorBox, fmtDuration, fmtNum, h, pageTitle, progressCell, replace, statusBadge, studentText, timeEl,
} from "./ui.js";

const REFRESH_MS = 2000;

export async function render(main, _params, query) {
  pageTitle("Jobs");
  const status = STATUSES.includes(query.get("status")) ? query.get("status") : "";
  const filter = h("select", { id: "status-filter", name: "status" },
    h("option", { value: "" }, "All statuses"),
    STATUSES.map((s) => h("option", { value: s, selected: s === status }, s)));
  filter.addEventListener("change", () => {
    location.hash = filter.value ? `#/jobs?status=${filter.value}` : "#/jobs";
  });
  const body = h("div", { "aria-live": "off" });
  const more = h("button", { type: "button", class: "secondary", hidden: true }, "Load more");
  replace(main,
    h("div", { class: "title-row" }, h("h1", {}, "Jobs"), h("a", { href: "#/new", class: "button" }, "New job")),
    h("div", { class: "toolbar" }, h("div", {}, h("label", { for: "status-filter" }, "Status"), filter)),
    body,
    h("p", {}, more));

  let teachers = new Map();
  try {
    teachers = new Map((await listAll("/v1/models")).map((m) => [m.id, m]));
  } catch { /* names are a nicety */ }

  let limit = 20;
  let timer = null;
  let stopped = false;

  async function load() {
    timer = null;
    try {
      const page = await api(`/v1/jobs?limit=${limit}${status ? `&status=${status}` : ""}`);
      if (stopped) return;
      replace(body, page.data.length ? table(page.data, teachers) : h("p", { class: "muted", id: "no-jobs" },
        status ? `No ${status} jobs.` : "No jobs yet. ", status ? "" : h("a", { href: "#/new" }, "Start one.")));
      more.hidden = !page.has_more;
      if (page.data.some((j) => !TERMINAL.has(j.status))) timer = setTimeout(load, REFRESH_MS);
    } catch (error) {
      if (stopped) return;
      replace(body, errorBox(error));
      timer = setTimeout(load, REFRESH_MS * 3);
    }
  }
  more.addEventListener("click", () => { limit = Math.min(limit + 20, 100); clearTimeout(timer); load(); });
  await load();
  return () => { stopped = true; clearTimeout(timer); };
}

function table(jobs, teachers) {
  return h("div", { class: "table-wrap" }, h("table", { id: "jobs-table" },
    h("caption", { class: "visually-hidden" }, "Your jobs, newest first"),
    h("thead", {}, h("tr", {},
      ["Job", "Status", "Method", "Teacher", "Student", "Progress", "ETA", "Best dev accuracy", "Created"].map((c) =>
        h("th", { scope: "col" }, c)))),
    h("tbody", {}, jobs.map((job) => {
      const teacher = teachers.get(job.teacher);
      const eta = TERMINAL.has(job.status) ? "—" : fmtDuration(job.progress?.eta_seconds);
      return h("tr", { "data-job": job.id },
        h("th", { scope: "row" }, h("a", { href: `#/jobs/${job.id}` }, job.name || job.id),
          job.name ? h("div", { class: "muted mono" }, job.id) : null),
        h("td", {}, statusBadge(job.status)),
        h("td", {}, h("code", {}, job.method)),
        h("td", {}, teacher ? teacher.name : h("code", {}, job.teacher)),
        h("td", { class: "nowrap" }, studentText(job.student, teacher)),
        h("td", {}, progressCell(job.progress, job.status)),
        h("td", { class: "num" }, eta),
        h("td", { class: "num", "data-field": "accuracy" }, fmtNum(job.metrics?.best?.accuracy)),
        h("td", {}, timeEl(job.created_at)));
    }))));
}

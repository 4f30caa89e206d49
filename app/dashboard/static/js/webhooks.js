// Webhooks page: register an endpoint (its signing secret is shown once), the tenant's endpoints with their
// delivery logs, and deleting one.

import { api } from "./api.js";
import { announce, errorBox, h, pageTitle, replace, timeEl } from "./ui.js";

const EVENT_TYPES = ["job.queued", "job.running", "job.succeeded", "job.failed", "job.cancelled", "job.paused",
  "checkpoint.created"];

export async function render(main) {
  pageTitle("Webhooks");
  const url = h("input", { id: "webhook-url", name: "url", type: "url", required: true, maxlength: "2048",
    placeholder: "https://example.com/gkd-hooks", autocomplete: "off", "aria-describedby": "webhook-url-help" });
  const boxes = EVENT_TYPES.map((type) => h("label", { class: "check" },
    h("input", { type: "checkbox", name: "event_types", value: type, checked: type === "job.succeeded" || type === "job.failed" }),
    ` ${type}`));
  const submit = h("button", { type: "submit" }, "Add endpoint");
  const result = h("div", { id: "webhook-result", "aria-live": "polite" });
  const form = h("form", { class: "card", id: "webhook-form", "aria-labelledby": "h-webhook" },
    h("h2", { id: "h-webhook" }, "Add a webhook endpoint"),
    h("div", { class: "field" }, h("label", { for: "webhook-url" }, "URL"), url,
      h("span", { class: "help", id: "webhook-url-help" },
        "http(s) on a public address. Each event is POSTed with Standard Webhooks signature headers.")),
    h("fieldset", {}, h("legend", {}, "Events"), boxes),
    h("p", {}, submit),
    result);
  const list = h("div", { id: "webhook-list" });
  replace(main, h("h1", {}, "Webhooks"), form, h("h2", {}, "Your endpoints"), list);

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const types = [...form.querySelectorAll("input[name=event_types]:checked")].map((el) => el.value);
    submit.disabled = true;
    try {
      const created = await api("/v1/webhooks", { method: "POST", json: { url: url.value.trim(), event_types: types } });
      replace(result, h("div", { class: "notice", id: "webhook-secret" },
        "Added ", h("code", {}, created.id), ". Its signing secret, shown only now: ",
        h("code", { class: "mono" }, created.secret)));
      announce(`Webhook ${created.id} added. Copy its signing secret now.`);
      url.value = "";
      await refresh();
    } catch (error) {
      replace(result, errorBox(error));
    } finally {
      submit.disabled = false;
    }
  });

  async function refresh() {
    try {
      const page = await api("/v1/webhooks?limit=100");
      replace(list, page.data.length ? table(page.data, refresh) : h("p", { class: "muted" }, "No endpoints yet."));
    } catch (error) {
      replace(list, errorBox(error));
    }
  }
  await refresh();
}

function table(webhooks, refresh) {
  return h("div", { class: "table-wrap" }, h("table", { id: "webhooks-table" },
    h("thead", {}, h("tr", {}, ["URL", "Events", "Created", "Deliveries", ""].map((c) => h("th", { scope: "col" }, c)))),
    h("tbody", {}, webhooks.map((wh) => {
      const remove = h("button", { type: "button", class: "link", "aria-label": `Delete webhook ${wh.url}` }, "Delete");
      const note = h("span", { "aria-live": "polite" });
      remove.addEventListener("click", async () => {
        remove.disabled = true;
        try {
          await api(`/v1/webhooks/${wh.id}`, { method: "DELETE" });
          announce(`Webhook ${wh.id} deleted.`);
          await refresh();
        } catch (error) {
          replace(note, error.message);
          remove.disabled = false;
        }
      });
      const log = h("div", {});
      const details = h("details", {}, h("summary", {}, "show"), log);
      details.addEventListener("toggle", async () => {
        if (!details.open) return;
        replace(log, h("p", { class: "muted" }, "Loading…"));
        try {
          replace(log, deliveries((await api(`/v1/webhooks/${wh.id}/deliveries?limit=50`)).data));
        } catch (error) {
          replace(log, errorBox(error));
        }
      });
      return h("tr", { "data-webhook": wh.id },
        h("th", { scope: "row" }, wh.url, h("div", { class: "muted mono" }, wh.id)),
        h("td", {}, wh.event_types.join(", ")),
        h("td", {}, timeEl(wh.created_at)),
        h("td", {}, details),
        h("td", {}, remove, note));
    }))));
}

function deliveries(rows) {
  if (!rows.length) return h("p", { class: "muted" }, "No deliveries yet.");
  return h("table", { class: "deliveries" },
    h("caption", {}, "Latest deliveries"),
    h("thead", {}, h("tr", {}, ["Event", "Status", "Attempts", "HTTP", "Latency", "Error", "Created"].map((c) =>
      h("th", { scope: "col" }, c)))),
    h("tbody", {}, rows.map((d) => h("tr", { "data-delivery": d.id },
      h("th", { scope: "row" }, d.event_type),
      h("td", {}, d.status),
      h("td", { class: "num" }, String(d.attempts)),
      h("td", { class: "num" }, d.response_status === null ? "—" : String(d.response_status)),
      h("td", { class: "num" }, d.latency_ms === null ? "—" : `${d.latency_ms} ms`),
      h("td", {}, d.error || "—"),
      h("td", {}, timeEl(d.created_at))))));
}

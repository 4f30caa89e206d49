// Datasets page: upload a file and read its validation report; the tenant's datasets with their reports.

import { api, auth, ApiError } from "./api.js";
import { announce, errorBox, fmtBytes, h, pageTitle, replace, timeEl } from "./ui.js";

export async function render(main) {
  pageTitle("Datasets");
  const file = h("input", { id: "dataset-file", name: "file", type: "file", required: true,
    accept: ".csv,.tsv,.jsonl,.json,.parquet", "aria-describedby": "dataset-file-help" });
  const name = h("input", { id: "dataset-name", name: "name", type: "text", maxlength: "300", autocomplete: "off" });
  const submit = h("button", { type: "submit" }, "Upload");
  const result = h("div", { id: "upload-result", "aria-live": "polite" });
  const form = h("form", { class: "card", id: "upload-form", "aria-labelledby": "h-upload" },
    h("h2", { id: "h-upload" }, "Upload a dataset"),
    h("div", { class: "toolbar" },
      h("div", {}, h("label", { for: "dataset-file" }, "File"), file,
        h("span", { class: "help", id: "dataset-file-help" },
          "CSV, TSV, JSONL or Parquet with columns text, optional text_pair, and label.")),
      h("div", {}, h("label", { for: "dataset-name" }, "Name (optional)"), name),
      h("div", {}, submit)),
    result);
  const list = h("div", { id: "dataset-list" });
  replace(main, h("h1", {}, "Datasets"), form, h("h2", {}, "Your datasets"), list);

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (!file.files.length) return;
    const body = new FormData();
    if (name.value.trim()) body.append("name", name.value.trim());
    body.append("file", file.files[0]);
    submit.disabled = true;
    replace(result, h("p", {}, "Uploading and validating…"));
    try {
      const response = await fetch("/v1/datasets", {
        method: "POST", body, headers: { Authorization: `Bearer ${auth.key}` },
      });
      const json = await response.json().catch(() => null);
      if (!response.ok) throw new ApiError(response.status, json);
      replace(result, h("div", { class: "notice" }, "Uploaded ", h("strong", {}, json.name), " as ",
        h("code", {}, json.id), "."), report(json, "h3"));
      announce(`Dataset ${json.name} uploaded: ${json.rows} rows.`);
      form.reset();
      await refresh();
    } catch (error) {
      replace(result, errorBox(error));
    } finally {
      submit.disabled = false;
    }
  });

  async function refresh() {
    try {
      const page = await api("/v1/datasets?limit=100");
      replace(list, page.data.length ? table(page.data, refresh) : h("p", { class: "muted" }, "No datasets yet."));
    } catch (error) {
      replace(list, errorBox(error));
    }
  }
  await refresh();
}

/** The validation report of one dataset: rows, label counts, duplicates, empty and over-length rows. */
export function report(ds, level = "h3") {
  const v = ds.validation || {};
  const counts = Object.entries(v.label_counts || {});
  const total = counts.reduce((a, [, n]) => a + n, 0) || 1;
  return h("section", { class: "report", "aria-label": `Validation report of ${ds.name}` },
    h(level, {}, "Validation report"),
    h("dl", { class: "facts" },
      h("dt", {}, "Rows"), h("dd", { "data-field": "rows" }, String(ds.rows)),
      h("dt", {}, "Format"), h("dd", {}, ds.format),
      h("dt", {}, "Duplicate rows"), h("dd", { "data-field": "duplicate_rows" }, String(v.duplicate_rows ?? 0)),
      h("dt", {}, "Empty rows"), h("dd", { "data-field": "empty_rows" }, String(v.empty_rows ?? 0)),
      h("dt", {}, "Over max length"), h("dd", { "data-field": "over_max_length" }, String(v.over_max_length ?? 0),
        h("span", { class: "help" }, "Counted against a teacher's tokenizer when a job uses the dataset.")),
      v.unknown_columns?.length ? [h("dt", {}, "Ignored columns"), h("dd", {}, v.unknown_columns.join(", "))] : null),
    h("table", { class: "label-counts" },
      h("caption", {}, "Label counts"),
      h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Label"), h("th", { scope: "col", class: "num" }, "Rows"),
        h("th", { scope: "col", class: "num" }, "Share"))),
      h("tbody", {}, counts.map(([label, n]) => h("tr", { "data-label": label },
        h("th", { scope: "row" }, label), h("td", { class: "num" }, String(n)),
        h("td", { class: "num" }, `${Math.round((100 * n) / total)}%`))))),
    v.warnings?.length ? h("div", {}, h("p", {}, h("strong", {}, "Warnings")),
      h("ul", { class: "warning-list" }, v.warnings.map((w) => h("li", {}, w)))) : null,
    v.errors?.length ? h("ul", { class: "alert" }, v.errors.map((e) => h("li", {}, e))) : null);
}

function table(datasets, refresh) {
  return h("div", { class: "table-wrap" }, h("table", { id: "datasets-table" },
    h("thead", {}, h("tr", {}, ["Name", "Rows", "Labels", "Size", "Created", "Report", ""].map((c) =>
      h("th", { scope: "col" }, c)))),
    h("tbody", {}, datasets.map((ds) => {
      const remove = h("button", { type: "button", class: "link", "aria-label": `Delete dataset ${ds.name}` }, "Delete");
      const note = h("span", { "aria-live": "polite" });
      remove.addEventListener("click", async () => {
        remove.disabled = true;
        try {
          await api(`/v1/datasets/${ds.id}`, { method: "DELETE" });
          announce(`Dataset ${ds.name} deleted.`);
          await refresh();
        } catch (error) {
          replace(note, error.message);
          remove.disabled = false;
        }
      });
      return h("tr", { "data-dataset": ds.id },
        h("th", { scope: "row" }, ds.name, h("div", { class: "muted mono" }, ds.id)),
        h("td", { class: "num" }, String(ds.rows)),
        h("td", {}, ds.labels.join(", ")),
        h("td", { class: "num" }, fmtBytes(ds.size_bytes)),
        h("td", {}, timeEl(ds.created_at)),
        h("td", {}, h("details", {}, h("summary", {}, "show"), report(ds, "h3"))),
        h("td", {}, remove, note));
    }))));
}

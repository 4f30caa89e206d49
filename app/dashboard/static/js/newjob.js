// New-job form, generated from the API's own OpenAPI schema (JobCreate -> StudentSpec, Hyperparameters):
// defaults, descriptions (help text), enums and min/max come from the server, so the form never drifts.

import { api, listAll } from "./api.js";
import { announce, errorBox, h, pageTitle, replace } from "./ui.js";

let schemaCache = null;

async function loadSchemas() {
  if (!schemaCache) {
    const response = await fetch("/openapi.json", { cache: "no-store" });
    if (!response.ok) throw new Error(`cannot read the API schema (HTTP ${response.status})`);
    schemaCache = (await response.json()).components.schemas;
  }
  return schemaCache;
}

function deref(schemas, node) {
  if (node && node.$ref) return schemas[node.$ref.split("/").pop()];
  if (node && node.allOf && node.allOf.length === 1 && node.allOf[0].$ref) return deref(schemas, node.allOf[0]);
  return node;
}

/** Reduce one property schema to what an input needs. */
export function describe(prop) {
  const variants = prop.anyOf || [prop];
  const nonNull = variants.filter((v) => v.type !== "null");
  const nullable = nonNull.length < variants.length;
  const base = {
    nullable, title: prop.title, description: prop.description,
    default: "default" in prop ? prop.default : (nullable ? null : undefined),
  };
  if (nonNull.length === 1) {
    const v = nonNull[0];
    if (v.enum) return { ...base, kind: "enum", options: v.enum };
    if (v.type === "integer" || v.type === "number") {
      return { ...base, kind: "number", integer: v.type === "integer", minimum: v.minimum, maximum: v.maximum,
        exclusiveMinimum: v.exclusiveMinimum, exclusiveMaximum: v.exclusiveMaximum };
    }
    if (v.type === "boolean") return { ...base, kind: "boolean" };
    if (v.type === "string") return { ...base, kind: "string", maxLength: v.maxLength };
  }
  const options = nonNull.find((v) => v.enum)?.enum;
  const list = nonNull.find((v) => v.type === "array" && v.items && v.items.type === "integer");
  if (options && list) return { ...base, kind: "enum-or-list", options };
  // e.g. hyperparameters.beta: a number or "auto" (pydantic writes a one-value Literal as `const`)
  const number = nonNull.find((v) => v.type === "number" || v.type === "integer");
  const words = nonNull.flatMap((v) => v.enum || ("const" in v ? [v.const] : []));
  if (number && words.length && nonNull.length === 2) {
    return { ...base, kind: "number-or-enum", options: words, minimum: number.minimum, maximum: number.maximum };
  }
  return { ...base, kind: "json" };
}

const fieldId = (path) => `f-${path.replace(/\./g, "-")}`;

/** One labelled input for `path` (e.g. "hyperparameters.learning_rate"); returns [element, read()]. */
function field(path, prop) {
  const d = describe(prop);
  const id = fieldId(path);
  const helpId = `${id}-help`;
  const name = path.split(".").pop();
  const help = [d.description || ""];
  let input;
  let read;
  const common = { id, name: path, "aria-describedby": helpId, "data-path": path };
  if (d.kind === "enum") {
    input = h("select", common,
      d.nullable ? h("option", { value: "" }, "null") : null,
      d.options.map((o) => h("option", { value: String(o), selected: o === d.default }, String(o))));
    read = () => (input.value === "" && d.nullable ? null : d.options.find((o) => String(o) === input.value));
  } else if (d.kind === "boolean") {
    input = h("input", { ...common, type: "checkbox", checked: d.default === true });
    read = () => input.checked;
  } else if (d.kind === "number") {
    const attrs = { ...common, type: "number", inputmode: d.integer ? "numeric" : "decimal", step: d.integer ? "1" : "any" };
    let min = d.minimum;
    let max = d.maximum;
    if (d.exclusiveMinimum !== undefined) min = d.integer ? d.exclusiveMinimum + 1 : d.exclusiveMinimum;
    if (d.exclusiveMaximum !== undefined) max = d.integer ? d.exclusiveMaximum - 1 : d.exclusiveMaximum;
    if (min !== undefined) attrs.min = String(min);
    if (max !== undefined) attrs.max = String(max);
    attrs.required = !d.nullable;
    if (d.default !== null && d.default !== undefined) attrs.value = String(d.default);
    if (d.nullable) attrs.placeholder = "empty = null";
    input = h("input", attrs);
    const bounds = [];
    if (d.minimum !== undefined) bounds.push(`≥ ${d.minimum}`);
    if (d.exclusiveMinimum !== undefined) bounds.push(`> ${d.exclusiveMinimum}`);
    if (d.maximum !== undefined) bounds.push(`≤ ${d.maximum}`);
    if (d.exclusiveMaximum !== undefined) bounds.push(`< ${d.exclusiveMaximum}`);
    if (bounds.length) help.push(` Allowed: ${bounds.join(", ")}.`);
    if (d.nullable) help.push(" Leave empty for null.");
    input.addEventListener("input", () => {
      const v = input.valueAsNumber;
      let message = "";
      if (input.value !== "" && d.exclusiveMinimum !== undefined && v <= d.exclusiveMinimum) message = `Must be greater than ${d.exclusiveMinimum}.`;
      if (input.value !== "" && d.exclusiveMaximum !== undefined && v >= d.exclusiveMaximum) message = `Must be less than ${d.exclusiveMaximum}.`;
      input.setCustomValidity(message);
    });
    read = () => (input.value === "" ? null : Number(input.value));
  } else if (d.kind === "enum-or-list") {
    const listId = `${id}-options`;
    input = h("input", { ...common, type: "text", list: listId, value: d.default == null ? "" : String(d.default),
      autocomplete: "off", spellcheck: "false" });
    help.push(` One of ${d.options.join(", ")}, comma-separated integers, a checkpoint id (ckpt_...) to continue`
      + " from, or JSON.");
    read = () => {
      const v = input.value.trim();
      if (d.options.includes(v)) return v;
      if (v === "" && d.nullable) return null;
      if (/^\s*\d+(\s*,\s*\d+)*\s*$/.test(v)) return v.split(",").map((x) => Number(x.trim()));
      if (/^ckpt_[A-Za-z0-9]+$/.test(v)) return { checkpoint: v };
      if (v.startsWith("{")) { try { return JSON.parse(v); } catch { return v; } }
      return v;
    };
    return [h("div", { class: "field" }, h("label", { for: id }, d.title || name, " ", h("code", {}, name)), input,
      h("datalist", { id: listId }, d.options.map((o) => h("option", { value: o }))),
      h("span", { class: "help", id: helpId }, help.join(""))), read, d];
  } else if (d.kind === "number-or-enum") {
    const listId = `${id}-options`;
    input = h("input", { ...common, type: "text", list: listId, value: d.default == null ? "" : String(d.default),
      autocomplete: "off", spellcheck: "false", inputmode: "decimal" });
    const bounds = [d.minimum !== undefined ? `≥ ${d.minimum}` : "", d.maximum !== undefined ? `≤ ${d.maximum}` : ""]
      .filter(Boolean).join(", ");
    help.push(` A number${bounds ? ` (${bounds})` : ""} or ${d.options.join(", ")}.`);
    read = () => {
      const v = input.value.trim();
      if (d.options.includes(v)) return v;
      if (v === "" && d.nullable) return null;
      const n = Number(v);
      return v !== "" && Number.isFinite(n) ? n : v;  // anything else goes as typed: the server's 422 names it
    };
    return [h("div", { class: "field" }, h("label", { for: id }, d.title || name, " ", h("code", {}, name)), input,
      h("datalist", { id: listId }, d.options.map((o) => h("option", { value: o }))),
      h("span", { class: "help", id: helpId }, help.join(""))), read, d];
  } else if (d.kind === "string") {
    input = h("input", { ...common, type: "text", maxlength: d.maxLength ? String(d.maxLength) : null,
      value: d.default == null ? "" : d.default, autocomplete: "off" });
    read = () => (input.value === "" && d.nullable ? null : input.value);
  } else {
    input = h("input", { ...common, type: "text", value: d.default === undefined ? "" : JSON.stringify(d.default) });
    help.push(" JSON value.");
    read = () => (input.value.trim() === "" ? null : JSON.parse(input.value));
  }
  const label = h("label", { for: id }, d.title || name, " ", h("code", {}, name));
  const cls = d.kind === "boolean" ? "field checkbox" : "field";
  return [h("div", { class: cls }, d.kind === "boolean" ? [input, label] : [label, input],
    h("span", { class: "help", id: helpId }, help.join(""))), read, d];
}

// The settings most jobs change; every other field of the schema (a new one included) goes under "Advanced".
const ESSENTIAL = new Set([
  "student.num_layers", "student.hidden_size",
  "hyperparameters.epochs", "hyperparameters.batch_size", "hyperparameters.learning_rate", "hyperparameters.max_length",
]);

/** The inputs of one schema object (`student`, `hyperparameters`), split into essential and advanced ones. */
function group(schemas, prefix, schema) {
  const readers = {};
  const essential = [];
  const advanced = [];
  for (const [name, prop] of Object.entries(schema.properties)) {
    const [el, read] = field(`${prefix}.${name}`, prop);
    (ESSENTIAL.has(`${prefix}.${name}`) ? essential : advanced).push(el);
    readers[name] = read;
  }
  const read = () => Object.fromEntries(Object.entries(readers).map(([k, r]) => [k, r()]));
  return { essential, advanced, read, description: schema.description };
}

function fieldset(id, legend, fields, description) {
  return h("fieldset", { id }, h("legend", {}, legend), description ? h("p", { class: "help" }, description) : null,
    h("div", { class: "fields" }, fields));
}

const inputState = (el) => (el.type === "checkbox" ? el.checked : el.value);

/** Counts the inputs of `section` that differ from their state when the form was drawn (their defaults). */
function changeCounter(section) {
  const initial = new Map([...section.querySelectorAll("input, select")].map((el) => [el, inputState(el)]));
  return () => [...initial].filter(([el, value]) => inputState(el) !== value).length;
}

export async function render(main, params, query) {
  pageTitle("New job");
  // "Continue training" on a finished job's checkpoint opens #/new?continue=<checkpoint>&job=<job>.
  const continueFrom = query?.get("continue") || null;
  const sourceId = query?.get("job") || null;
  const [schemas, models, datasets, source] = await Promise.all([
    loadSchemas(), listAll("/v1/models"), listAll("/v1/datasets"),
    continueFrom && sourceId ? api(`/v1/jobs/${encodeURIComponent(sourceId)}`) : null,
  ]);
  const jobSchema = schemas.JobCreate;
  const props = jobSchema.properties;
  // A distillation needs a teacher with a classification head; a finetune job (method "finetune") makes one from
  // any encoder, a bare one included.
  const teacherOptions = (finetune) => {
    const usable = finetune ? models : models.filter((m) => m.labels && m.labels.length);
    const labels = (m) => (m.labels && m.labels.length ? `labels ${m.labels.join("/")}` : "no classification head");
    return [usable.length ? null : h("option", { value: "" }, finetune ? "Upload a model first" : "No teacher with a classification head"),
      ...usable.map((m) => h("option", { value: m.id }, `${m.name} — ${m.num_layers} layers × ${m.hidden_size}, ${labels(m)}`))];
  };
  const teacher = h("select", { id: "f-teacher", name: "teacher", required: true, "aria-describedby": "f-teacher-help" },
    teacherOptions(false));
  const methodInfo = describe(props.method);
  const method = h("select", { id: "f-method", name: "method" },
    methodInfo.options.map((o) => h("option", { value: o, selected: o === methodInfo.default }, o)));
  const dsOption = (ds) => h("option", { value: ds.id }, `${ds.name} — ${ds.rows} rows (${ds.labels.join("/")})`);
  const train = h("select", { id: "f-training_dataset", name: "training_dataset", required: true },
    datasets.length ? null : h("option", { value: "" }, "Upload a dataset first"), datasets.map(dsOption));
  const dev = h("select", { id: "f-validation_dataset", name: "validation_dataset", "aria-describedby": "f-validation_dataset-help" },
    h("option", { value: "" }, "None: hold out a dev split of the training data"), datasets.map(dsOption));
  const name = h("input", { id: "f-name", name: "name", type: "text", autocomplete: "off",
    maxlength: String(describe(props.name).maxLength || 300) });
  // export: one checkbox per deployable format the schema lists ("onnx", "onnx-int8").
  const exportFormats = deref(schemas, props.export?.items)?.enum || [];
  const exportBoxes = exportFormats.map((f) => h("input", { type: "checkbox", id: `f-export-${f}`, name: "export",
    value: f, "data-export": f }));
  // integrations: the one tracker there is, MLflow; the job names the experiment, the operator the server.
  const mlflow = h("input", { id: fieldId("integrations.0"), name: "integrations.0.experiment", type: "text",
    autocomplete: "off", maxlength: "250", "aria-describedby": "f-integrations-0-help" });

  const student = group(schemas, "student", deref(schemas, props.student));
  const hp = group(schemas, "hyperparameters", deref(schemas, props.hyperparameters));
  const advancedCount = student.advanced.length + hp.advanced.length;
  const advancedSummary = h("span", {});
  const advanced = h("details", { id: "advanced-settings", class: "advanced" },
    h("summary", {}, "Advanced settings ", advancedSummary),
    h("p", { class: "help" }, "Research-level settings of the student and the training. Their defaults are the ",
      "recommended ones; every one of them is sent with the job."),
    fieldset("fs-student-advanced", "Student", student.advanced),
    fieldset("fs-hyperparameters-advanced", "Hyperparameters", hp.advanced));
  const changedCount = changeCounter(advanced);
  const showAdvancedSummary = () => {
    const changed = changedCount();
    advancedSummary.textContent = `(${advancedCount} fields${changed ? `, ${changed} changed` : ", all at their defaults"})`;
  };
  showAdvancedSummary();
  const errors = h("div", { id: "form-errors", tabindex: "-1" });
  const submit = h("button", { type: "submit", id: "submit-job" }, "Start distillation");
  const estimateButton = h("button", { type: "button", id: "estimate-job", class: "secondary" }, "Estimate");
  const estimateOut = h("p", { id: "job-estimate", "aria-live": "polite" });
  let idempotencyKey = crypto.randomUUID();

  const form = h("form", { id: "new-job-form", novalidate: false, "aria-labelledby": "h-new" },
    h("h1", { id: "h-new" }, "New distillation job"),
    errors,
    h("fieldset", { id: "fs-job" }, h("legend", {}, "Job"), h("div", { class: "fields" },
      h("div", { class: "field" }, h("label", { for: "f-teacher" }, "Teacher ", h("code", {}, "teacher")), teacher,
        h("span", { class: "help", id: "f-teacher-help" }, props.teacher.description || "")),
      h("div", { class: "field" }, h("label", { for: "f-method" }, "Method ", h("code", {}, "method")), method,
        h("span", { class: "help" }, props.method.description || "Training objective; gradient_kd is the paper's.")),
      h("div", { class: "field" }, h("label", { for: "f-training_dataset" }, "Training dataset ",
        h("code", {}, "training_dataset")), train),
      h("div", { class: "field" }, h("label", { for: "f-validation_dataset" }, "Validation dataset ",
        h("code", {}, "validation_dataset")), dev,
        h("span", { class: "help", id: "f-validation_dataset-help" }, "Optional; evaluated after every epoch.")),
      h("div", { class: "field" }, h("label", { for: "f-name" }, "Name ", h("code", {}, "name")), name),
      h("div", { class: "field" }, h("label", { for: mlflow.id }, "MLflow experiment ", h("code", {}, "integrations")),
        mlflow, h("span", { class: "help", id: "f-integrations-0-help" }, "Optional: log the job's params, metrics ",
          "and checkpoint URIs to this service's MLflow server under this experiment (only where the operator set ",
          "one up; otherwise the job is refused).")),
      exportFormats.length ? h("div", { class: "field", id: "f-export" }, h("span", {}, "Export ", h("code", {}, "export")),
        exportBoxes.map((box) => h("label", { class: "checkbox", for: box.id }, box, ` ${box.value}`)),
        h("span", { class: "help" }, props.export?.description || "")) : null)),
    fieldset("fs-student", "Student", student.essential, student.description),
    fieldset("fs-hyperparameters", "Training", hp.essential, hp.description),
    advanced,
    h("p", {}, submit, " ", estimateButton),
    estimateOut);
  replace(main, form);
  if (source) {
    const note = prefillFrom(form, source, continueFrom, { teacher, method, train, dev, name, mlflow });
    form.querySelector("h1").after(note);
    showAdvancedSummary();
  }

  // finetune: the base model's own depth is trained (the student fields are the server's to refuse if changed).
  method.addEventListener("change", () => {
    const finetune = method.value === "finetune";
    replace(teacher, ...teacherOptions(finetune));
    form.querySelector("#fs-student").hidden = finetune;
    form.querySelector("#fs-student-advanced").hidden = finetune;
    submit.textContent = finetune ? "Start fine-tuning" : "Start distillation";
  });
  form.addEventListener("input", () => { idempotencyKey = crypto.randomUUID(); showAdvancedSummary(); });
  form.addEventListener("change", showAdvancedSummary);
  // The browser's own checks (min, max, required) must be able to show a folded field: open its section first.
  form.addEventListener("invalid", (event) => { event.target.closest("details")?.setAttribute("open", ""); }, true);
  function readBody() {
    for (const el of form.querySelectorAll("[aria-invalid]")) el.removeAttribute("aria-invalid");
    try {
      return {
        teacher: teacher.value,
        method: method.value,
        training_dataset: train.value,
        validation_dataset: dev.value || null,
        name: name.value.trim() || null,
        student: student.read(),
        hyperparameters: hp.read(),
        export: exportBoxes.filter((box) => box.checked).map((box) => box.value),
        integrations: mlflow.value.trim() ? [{ type: "mlflow", experiment: mlflow.value.trim() }] : [],
      };
    } catch (error) {
      replace(errors, errorBox(error));
      errors.focus();
      return null;
    }
  }

  function showError(error) {
    replace(errors, errorBox(error));
    const target = error.param && fieldFor(error.param);
    if (target) {
      target.closest("details")?.setAttribute("open", "");  // a folded field the server named is shown
      target.setAttribute("aria-invalid", "true");
      target.focus();
    } else {
      errors.focus();
    }
  }

  // POST /v1/jobs?dry_run=true: checked like a create, nothing stored; one request, so only on demand.
  estimateButton.addEventListener("click", async () => {
    const body = readBody();
    if (!body) return;
    estimateButton.disabled = true;
    try {
      replace(errors);
      replace(estimateOut, describeEstimate(await api("/v1/jobs?dry_run=true", { method: "POST", json: body })));
    } catch (error) {
      showError(error);
    } finally {
      estimateButton.disabled = false;
    }
  });

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = readBody();
    if (!body) return;
    submit.disabled = true;
    try {
      const job = await api("/v1/jobs", { method: "POST", json: body, headers: { "Idempotency-Key": idempotencyKey } });
      announce(`Job ${job.id} ${job.status}.`);
      location.hash = `#/jobs/${job.id}`;
    } catch (error) {
      showError(error);
    } finally {
      submit.disabled = false;
    }
  });
}

/** The input of the API's `param`, or of its nearest parent ("integrations.0.experiment" -> integrations.0). */
function fieldFor(param) {
  const parts = param.split(".");
  for (let n = parts.length; n > 0; n -= 1) {
    const el = document.getElementById(fieldId(parts.slice(0, n).join(".")));
    if (el) return el;
  }
  return null;
}

/** Start the form as `job`'s settings with `student.init` = {"checkpoint": checkpointId}: the same teacher, data,
 * student and training settings, so the user only changes what the continuation needs (e.g. more epochs). Width and
 * depth come from the checkpoint, so `hidden_size` is left empty. Returns the note shown above the form. */
function prefillFrom(form, job, checkpointId, inputs) {
  const setValue = (el, value) => {
    if (!el) return;
    if (el.type === "checkbox") el.checked = Boolean(value);
    else el.value = value == null ? "" : typeof value === "object" ? JSON.stringify(value) : String(value);
  };
  setValue(inputs.teacher, job.teacher);
  setValue(inputs.method, job.method);
  setValue(inputs.train, job.training_dataset);
  setValue(inputs.dev, job.validation_dataset);
  setValue(inputs.name, `${job.name || job.id} (continued)`);
  setValue(inputs.mlflow, (job.integrations || []).find((i) => i.type === "mlflow")?.experiment);
  for (const [prefix, values] of [["student", job.student], ["hyperparameters", job.hyperparameters]]) {
    for (const [key, value] of Object.entries(values || {})) {
      setValue(form.querySelector(`[data-path="${prefix}.${key}"]`), value);
    }
  }
  setValue(form.querySelector('[data-path="student.init"]'), checkpointId);
  setValue(form.querySelector('[data-path="student.hidden_size"]'), null);
  return h("p", { class: "help", id: "continue-note" }, "Continues the student of job ",
    h("a", { href: `#/jobs/${encodeURIComponent(job.id)}` }, job.id), " from its checkpoint ",
    h("code", {}, checkpointId), " (", h("code", {}, "student.init.checkpoint"), "); that job is left unchanged. ",
    "Its settings are filled in: change the epochs or anything else, then start.");
}

/** One sentence per estimate: steps, teacher cache, time per worker kind and whether it was measured. */
export function describeEstimate(estimate) {
  const duration = (s) => (s < 90 ? `${Math.round(s)} s` : s < 5400 ? `${Math.round(s / 60)} min` : `${(s / 3600).toFixed(1)} h`);
  const kinds = Object.entries(estimate.estimated_seconds).map(([kind, seconds]) =>
    `${kind}: about ${duration(seconds)} (${estimate.basis[kind] === "measured" ? "measured" : "rough default"})`);
  const cache = estimate.teacher_cache_exists ? "teacher cache ready" : "teacher cache built first";
  return `${estimate.total_steps} steps; ${cache}; ${kinds.join(", ")}.`;
}

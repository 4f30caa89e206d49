// Job page: summary, progress, live loss and evaluation curves from the event stream, pause, resume, cancel, delete,
// metrics CSV, checkpoints.

import { api, download, followEvents, listAll } from "./api.js";
import { Chart } from "./charts.js";
import {
  PAUSABLE, TERMINAL, announce, errorBox, fmtBytes, fmtDuration, fmtNum, h, pageTitle, progressCell, replace, statusBadge,
  studentText, timeEl,
} from "./ui.js";

// One chart per loss term, each on its own y scale: the total jumps when the gradient term starts (a term is added),
// which on a shared scale reads as divergence.
const LOSS_TERMS = [
  ["loss", "Total loss", "#174ea6", []],
  ["ce", "Cross-entropy with the labels (ce)", "#1b6b2c", []],
  ["kd", "Logit distillation, KL to the teacher (kd)", "#b34700", []],
  ["grad", "Gradient term, input-gradient alignment (grad)", "#7b2d8e", []],
  ["pkd", "Hidden-state distillation (pkd)", "#5f6368", []],
];
const EVAL_SERIES = [
  ["accuracy", "dev accuracy", "#174ea6", []],
  ["macro_f1", "macro-F1", "#1b6b2c", [2, 3]],
  ["teacher_agreement", "teacher agreement", "#b34700", [8, 4]],
  ["saliency_agreement", "gradient agreement", "#7b2d8e", [10, 3, 2, 3]],
];
const MAX_LOG = 200;

export async function render(main, { jobId }) {
  const controller = new AbortController();
  const [job, teachers] = await Promise.all([
    api(`/v1/jobs/${encodeURIComponent(jobId)}`),
    listAll("/v1/models").catch(() => []),
  ]);
  const teacher = teachers.find((t) => t.id === job.teacher);
  pageTitle(job.name || job.id);

  const statusSlot = h("span", { id: "job-status" });
  const pause = h("button", { type: "button", class: "secondary", id: "pause-job" }, "Pause job");
  const resume = h("button", { type: "button", class: "secondary", id: "resume-job" }, "Resume job");
  const cancel = h("button", { type: "button", class: "danger", id: "cancel-job" }, "Cancel job");
  const remove = h("button", { type: "button", class: "danger", id: "delete-job" }, "Delete job");
  const metricsCsv = h("button", { type: "button", class: "secondary", id: "metrics-csv" }, "Metrics CSV");
  const facts = h("dl", { class: "facts" });
  const progress = h("div", { id: "job-progress" });
  const streamState = h("span", { class: "stream-state", id: "stream-state", "aria-live": "polite" });
  const errorSlot = h("div");
  const warningSlot = h("div", { id: "job-warnings" });
  const warnings = new Map(); // code -> message (the event's text, or the code until its event arrives)
  function showWarnings() {
    replace(warningSlot, warnings.size ? h("ul", { class: "warning-list", role: "status" },
      [...warnings.values()].map((text) => h("li", {}, text))) : null);
  }
  const lossCharts = LOSS_TERMS.map(([key, caption, color, dash]) =>
    new Chart(`loss-chart-${key}`, caption, [[key, key === "loss" ? "total" : key, color, dash]], { height: 170 }));
  for (const chart of lossCharts.slice(1)) chart.figure.hidden = true; // shown once the job reports the term
  const evalChart = new Chart("eval-chart", "Dev accuracy and gradient agreement per evaluation", EVAL_SERIES,
    { range: [0, 1] });
  const charts = [...lossCharts, evalChart];
  const lossNote = h("p", { class: "muted chart-note", id: "loss-note" }, "Each loss term on its own scale.");
  let gradientStart = null; // { step, exact }: the step the gradient term starts on
  function markGradientStart(step, exact) {
    if (typeof step !== "number" || (gradientStart && (gradientStart.exact || !exact))) return;
    gradientStart = { step, exact };
    for (const chart of charts) chart.setMark(step, "gradient term starts");
    replace(lossNote, "Each loss term on its own scale. ",
      h("span", { id: "gradient-start-note", "data-step": String(step) }, `The dashed line at step ${step} marks where `,
        "the gradient term starts: from there the total loss includes it, so a rise in the total there is a ",
        "new term being added, not training diverging."));
  }
  const evalTable = h("tbody");
  const log = h("ol", { class: "events", id: "event-log", "aria-label": "Events, newest first" });
  const checkpoints = h("div", { id: "checkpoints" }, h("p", { class: "muted" }, "No checkpoint yet."));

  replace(main,
    h("p", {}, h("a", { href: "#/jobs" }, "← All jobs")),
    h("div", { class: "title-row" },
      h("h1", {}, job.name || job.id, " ", statusSlot),
      h("div", { class: "actions" }, metricsCsv, pause, resume, cancel, remove)),
    errorSlot,
    warningSlot,
    h("section", { class: "card", "aria-labelledby": "h-progress" },
      h("h2", { id: "h-progress" }, "Progress ", streamState), progress),
    h("section", { class: "card", "aria-labelledby": "h-curves" },
      h("h2", { id: "h-curves" }, "Curves"),
      h("h3", {}, "Training loss per term"),
      h("div", { class: "small-multiples", id: "loss-charts" }, lossCharts.map((c) => c.figure)),
      lossNote,
      h("h3", {}, "Evaluations"),
      evalChart.figure,
      h("p", { class: "muted", id: "gradient-agreement-note" },
        "Gradient agreement (the API's saliency_agreement): the mean over dev tokens of the cosine between the ",
        "teacher's and the student's input-gradient vectors, i.e. whether each token pushes both models the same ",
        "way (students of the teacher's width; a narrower student compares saliency profiles). It is lower than the per-example saliency profile cosine on the saliency page, which compares only ",
        "how much each token matters."),
      h("details", {}, h("summary", {}, "Evaluations as a table"),
        h("div", { class: "table-wrap" }, h("table", { id: "eval-table" },
          h("thead", {}, h("tr", {}, ["Step", "Epoch", ...EVAL_SERIES.map((s) => s[1])].map((c) =>
            h("th", { scope: "col", class: c === "Step" || c === "Epoch" ? "" : "num" }, c)))),
          evalTable)))),
    h("section", { class: "card", "aria-labelledby": "h-checkpoints" },
      h("h2", { id: "h-checkpoints" }, "Checkpoints"), checkpoints),
    h("section", { class: "card", "aria-labelledby": "h-summary" }, h("h2", { id: "h-summary" }, "Summary"), facts),
    h("section", { class: "card", "aria-labelledby": "h-events" }, h("h2", { id: "h-events" }, "Events"), log));

  let current = job;
  function showJob(j) {
    current = j;
    replace(statusSlot, statusBadge(j.status));
    cancel.disabled = TERMINAL.has(j.status) || j.status === "cancelling";
    cancel.hidden = TERMINAL.has(j.status);
    pause.hidden = !PAUSABLE.has(j.status) && j.status !== "pausing";
    pause.disabled = j.status === "pausing"; // the worker is saving the training state
    resume.hidden = j.status !== "paused";
    resume.disabled = false;
    remove.hidden = !TERMINAL.has(j.status);
    const p = j.progress || {};
    const still = TERMINAL.has(j.status) || j.status === "paused"; // no ETA, no phase: nothing runs
    replace(progress,
      h("div", {},
        progressCell(p, j.status), " ",
        h("span", {}, `step ${p.step ?? 0}${p.total_steps ? ` of ${p.total_steps}` : ""}, epoch ${p.epoch ?? 0}`),
        still ? null : h("span", {}, ` · ETA ${fmtDuration(p.eta_seconds)}`)),
      still || !p.phase ? null : phaseLine(p.phase));
    for (const code of j.metrics?.warnings || []) if (!warnings.has(code)) warnings.set(code, `warning: ${code}`);
    showWarnings();
    const best = j.metrics?.best || {};
    replace(facts,
      fact("Id", h("code", {}, j.id)),
      fact("Method", h("code", {}, j.method)),
      fact("Teacher", teacher ? `${teacher.name} (${teacher.num_layers} layers × ${teacher.hidden_size})` : j.teacher),
      fact("Student", studentText(j.student, teacher)),
      j.fine_tuned_model ? fact("Fine-tuned model", h("code", { id: "fine-tuned-model" }, j.fine_tuned_model)) : null,
      fact("Training data", h("code", {}, j.training_dataset)),
      fact("Validation data", j.validation_dataset ? h("code", {}, j.validation_dataset) : "dev split of training data"),
      fact("Created", timeEl(j.created_at)),
      fact("Started", timeEl(j.started_at)),
      fact("Finished", timeEl(j.finished_at)),
      j.estimated_finish_at ? fact("Training expected to end", timeEl(j.estimated_finish_at)) : null,
      j.integrations?.length ? fact("Integrations", j.integrations.map((i) =>
        h("div", {}, h("code", {}, i.type), ` experiment ${i.experiment}`))) : null,
      j.student?.init?.checkpoint ? fact("Continued from", h("code", {}, j.student.init.checkpoint)) : null,
      fact("Attempts", String(j.attempts)),
      best.accuracy !== undefined ? fact("Best dev accuracy", fmtNum(best.accuracy)) : null,
      fact("Hyperparameters", h("details", {}, h("summary", {}, "show"),
        h("dl", { class: "facts" }, Object.entries(j.hyperparameters || {}).map(([k, v]) =>
          [h("dt", {}, k), h("dd", {}, h("code", {}, JSON.stringify(v)))])))));
    replace(errorSlot, j.error ? errorBox({ message: j.error }) : null);
  }
  showJob(job);

  async function refreshJob() {
    try { showJob(await api(`/v1/jobs/${encodeURIComponent(jobId)}`, { signal: controller.signal })); } catch { /* next event */ }
  }

  async function refreshCheckpoints() {
    try {
      const list = await api(`/v1/jobs/${encodeURIComponent(jobId)}/checkpoints`, { signal: controller.signal });
      replace(checkpoints, list.data.length ? checkpointTable(current, list.data) : h("p", { class: "muted" },
        "No checkpoint yet."));
    } catch (error) {
      if (!controller.signal.aborted) replace(checkpoints, errorBox(error));
    }
  }
  refreshCheckpoints();

  // Cancel, pause and resume: POST /v1/jobs/{id}/<action>; the answer is the job in its new status.
  for (const [button, action] of [[cancel, "cancel"], [pause, "pause"], [resume, "resume"]]) {
    button.addEventListener("click", async () => {
      button.disabled = true;
      try {
        showJob(await api(`/v1/jobs/${encodeURIComponent(jobId)}/${action}`, { method: "POST" }));
        announce(`Job ${current.status}.`);
      } catch (error) {
        replace(errorSlot, errorBox(error));
        button.disabled = false;
      }
    });
  }

  metricsCsv.addEventListener("click", async () => {
    try {
      await download(`/v1/jobs/${encodeURIComponent(jobId)}/metrics.csv`, `${jobId}-metrics.csv`);
    } catch (error) {
      replace(errorSlot, errorBox(error));
    }
  });

  remove.addEventListener("click", async () => {
    if (!window.confirm(`Delete job ${jobId} with its events, checkpoints and files? This cannot be undone.`)) return;
    remove.disabled = true;
    try {
      await api(`/v1/jobs/${encodeURIComponent(jobId)}`, { method: "DELETE" });
      controller.abort();
      announce(`Job ${jobId} deleted.`);
      window.location.hash = "#/jobs";
    } catch (error) {
      replace(errorSlot, errorBox(error));
      remove.disabled = false;
    }
  });

  let refreshTimer = null;
  function scheduleRefresh() {
    if (refreshTimer) return;
    refreshTimer = setTimeout(() => { refreshTimer = null; refreshJob(); }, 700);
  }

  function onEvent(event) {
    addLog(log, event);
    const d = event.data || {};
    if (event.type === "phase") {
      if (!TERMINAL.has(current.status)) {
        showJob({ ...current, progress: { ...(current.progress || {}), phase: d } });
      }
    } else if (event.type === "metrics") {
      if (d.eval) {
        evalChart.add(d.step, d);
        evalTable.prepend(h("tr", {}, h("td", {}, String(d.step)), h("td", {}, String(d.epoch ?? "")),
          EVAL_SERIES.map(([k]) => h("td", { class: "num" }, fmtNum(d[k])))));
      } else {
        for (const chart of lossCharts) {
          const [key] = chart.series[0];
          if (typeof d[key] !== "number") continue;
          chart.figure.hidden = false;
          chart.add(d.step, { [key]: d[key] });
        }
        // events of jobs run before the worker announced the start: the first step with gradient weight
        if (d.grad_weight > 0) markGradientStart(d.step, false);
      }
      scheduleRefresh();
    } else if (event.type === "status") {
      // the checkpoints are listed once the job is known to have finished: only then can one be continued
      refreshJob().then(() => (TERMINAL.has(d.status) ? refreshCheckpoints() : null));
      announce(`Job ${d.status}.`);
      return TERMINAL.has(d.status);
    } else if (event.type === "log" && d.gradient_term_started) {
      markGradientStart(d.step, true);
    } else if (event.type === "checkpoint") {
      refreshCheckpoints();
    } else if (event.type === "warning") {
      warnings.set(d.code || event.message, `warning: ${event.message}`);
      showWarnings();
    }
    return false;
  }

  const STATES = {
    connecting: "connecting…", live: "● live", reconnecting: "reconnecting…", ended: "stream ended", error: "stream failed",
  };
  followEvents(jobId, {
    onEvent,
    signal: controller.signal,
    onState: (state, error) => {
      streamState.textContent = STATES[state] || state;
      streamState.dataset.state = state;
      if (error) replace(errorSlot, errorBox(error));
    },
    isFinished: async () => {
      await refreshJob();
      return TERMINAL.has(current.status);
    },
  });

  const onResize = () => { for (const chart of charts) chart.resize(); };
  window.addEventListener("resize", onResize);
  return () => {
    controller.abort();
    clearTimeout(refreshTimer);
    window.removeEventListener("resize", onResize);
    for (const chart of charts) chart.destroy();
  };
}

function fact(term, value) {
  return [h("dt", {}, term), h("dd", {}, value)];
}

function addLog(log, event) {
  log.prepend(h("li", { "data-seq": String(event.seq), "data-type": event.type },
    h("span", { class: "seq" }, `#${event.seq}`), h("code", {}, event.type), " ", event.message));
  while (log.childElementCount > MAX_LOG) log.lastElementChild.remove();
}

/** Whether a new job can start from this checkpoint (`student.init.checkpoint`): the API takes a finished job's
 * PyTorch checkpoint whose student reads the teacher's token ids (no pruned vocabulary). */
function continuable(job, checkpoint) {
  return TERMINAL.has(job.status) && !checkpoint.kind.includes("onnx") && job.student?.vocabulary !== "training_data";
}

function checkpointTable(job, rows) {
  const jobId = job.id;
  // named as on the curves: the metric saliency_agreement is the "gradient agreement" (not the saliency page's cosine)
  const keys = ["accuracy", "macro_f1", "teacher_agreement", "saliency_agreement"];
  // best-onnx / best-onnx-int8 (the job's export) carry their CPU speed, measured by the worker on the dev set.
  const speed = ["ms_per_example_batch1", "examples_per_second_batch32"];
  return h("div", { class: "table-wrap" }, h("table", { id: "checkpoint-table" },
    h("thead", {}, h("tr", {},
      ["Kind", "Step", ...keys.map((k) => EVAL_SERIES.find(([key]) => key === k)[1]), "ms/example (batch 1)",
        "examples/s (batch 32)",
        "Size", ""].map((c) => h("th", { scope: "col" }, c)))),
    h("tbody", {}, rows.map((c) => {
      const status = h("span", { class: "visually-hidden", "aria-live": "polite" });
      const button = h("button", { type: "button", class: "secondary", "data-download": c.kind,
        "aria-label": `Download the ${c.kind} checkpoint` }, "Download");
      button.addEventListener("click", async () => {
        button.disabled = true;
        status.textContent = "Downloading…";
        try {
          const size = await download(`/v1/jobs/${encodeURIComponent(jobId)}/checkpoints/${c.id}/content`,
            `${jobId}-${c.kind}.tar.gz`);
          status.textContent = `Downloaded ${fmtBytes(size)}.`;
        } catch (error) {
          status.textContent = `Download failed: ${error.message}`;
          button.after(errorBox(error));
        } finally {
          button.disabled = false;
        }
      });
      return h("tr", { "data-checkpoint": c.id },
        h("th", { scope: "row" }, c.kind, h("div", { class: "muted mono" }, c.id)),
        h("td", { class: "num" }, String(c.step)),
        keys.map((k) => h("td", { class: "num" }, fmtNum(c.metrics?.[k]))),
        speed.map((k) => h("td", { class: "num", "data-speed": k }, fmtNum(c.metrics?.[k]))),
        h("td", { class: "num nowrap" }, fmtBytes(c.size_bytes)),
        h("td", {}, h("div", { class: "actions" }, button,
          c.kind.includes("onnx") ? null  // saliency needs the PyTorch model's input gradients
            : h("a", { href: `#/jobs/${jobId}/checkpoints/${c.id}/saliency`, "data-saliency": c.kind },
              "Saliency", h("span", { class: "visually-hidden" }, ` of the ${c.kind} checkpoint`)),
          continuable(job, c) ? h("a", { href: `#/new?continue=${encodeURIComponent(c.id)}&job=${encodeURIComponent(jobId)}`,
            "data-continue": c.kind }, "Continue training",
          h("span", { class: "visually-hidden" }, ` from the ${c.kind} checkpoint`)) : null, status)));
    }))));
}

const PHASE_TITLES = {
  validating: "Validating the data", loading_teacher: "Loading the teacher", teacher_cache: "Building the teacher cache",
  training: "Training", evaluating: "Evaluating", packing: "Packing a checkpoint", uploading: "Uploading checkpoints",
};

// The phase the job is in, with its own bar: before the first step (the teacher cache) this is where time goes.
function phaseLine(phase) {
  const title = (PHASE_TITLES[phase.phase] || phase.phase) + (phase.detail ? ` (${phase.detail})` : "");
  const count = phase.total != null ? ` ${phase.done} of ${phase.total} ${phase.unit || ""}`.trimEnd() : "";
  const eta = phase.eta_seconds != null && phase.fraction !== 1 ? ` · about ${fmtDuration(phase.eta_seconds)} left` : "";
  return h("div", { id: "job-phase", "data-phase": phase.phase },
    phase.fraction != null ? progressCell({ fraction: phase.fraction }, "") : null, " ",
    h("span", {}, `${title}${count}${eta}`));
}

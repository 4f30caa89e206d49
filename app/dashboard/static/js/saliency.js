// Saliency view: tokens highlighted by teacher and student input-gradient saliency, side by side.

import { api } from "./api.js";
import { errorBox, fmtNum, h, pageTitle, replace } from "./ui.js";

const SPECIAL = /^\[(CLS|SEP|PAD)\]$|^<\/?s>$|^<pad>$/;

export async function render(main, { jobId, checkpointId }) {
  pageTitle("Saliency");
  const base = `/v1/jobs/${encodeURIComponent(jobId)}/checkpoints/${encodeURIComponent(checkpointId)}/saliency`;
  const limit = h("input", { id: "sal-limit", type: "number", min: "1", max: "20", step: "1", value: "5", required: true });
  const texts = h("textarea", { id: "sal-texts", rows: "3", cols: "60", "aria-describedby": "sal-texts-help" });
  const results = h("div", { id: "saliency-results", "aria-live": "polite", "aria-busy": "false" });
  const devForm = h("form", { class: "toolbar" },
    h("div", {}, h("label", { for: "sal-limit" }, "Dev examples"), limit),
    h("div", {}, h("button", { type: "submit" }, "Explain dev examples")));
  const textForm = h("form", { class: "toolbar" },
    h("div", {}, h("label", { for: "sal-texts" }, "Or your own texts"), texts,
      h("span", { class: "help", id: "sal-texts-help" }, "One text per line, at most 20.")),
    h("div", {}, h("button", { type: "submit", class: "secondary" }, "Explain texts")));

  replace(main,
    h("p", {}, h("a", { href: `#/jobs/${jobId}` }, "← Back to the job")),
    h("h1", {}, "Saliency: teacher and student"),
    h("p", {}, "Each token is shaded by the size of the model's input gradient (how much the model's confidence "
      + "depends on it), scaled to the most salient word of the row ([CLS] and [SEP] are not shaded): ",
      h("span", { class: "legend-scale", role: "img", "aria-label": "from transparent (low) to amber (high)" }),
      " low → high. ", h("code", {}, checkpointId)),
    h("p", { class: "muted", id: "profile-cosine-note" }, "Each example's saliency profile cosine compares how much each ",
      "token matters to the two models (the shading above), not which way it pushes them, so it reads higher than ",
      "the job page's gradient agreement (the API's saliency_agreement), which compares the input-gradient vectors ",
      "themselves over the whole dev set."),
    h("div", { class: "card" }, devForm, textForm),
    results);

  async function run(request) {
    results.setAttribute("aria-busy", "true");
    replace(results, h("p", {}, "Computing saliency…"));
    try {
      const out = await request();
      replace(results, out.data.length ? out.data.map(example) : h("p", { class: "muted" }, "No examples."),
        h("p", { class: "muted" }, `Source: ${out.source}, ${out.kind} checkpoint, max_length ${out.max_length}.`));
    } catch (error) {
      replace(results, errorBox(error));
    } finally {
      results.setAttribute("aria-busy", "false");
    }
  }

  devForm.addEventListener("submit", (event) => {
    event.preventDefault();
    run(() => api(`${base}?limit=${encodeURIComponent(limit.value)}`));
  });
  textForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const lines = texts.value.split("\n").map((t) => t.trim()).filter(Boolean).slice(0, 20);
    if (!lines.length) return;
    run(() => api(base, { method: "POST", json: { texts: lines } }));
  });
  await run(() => api(`${base}?limit=5`));
}

function example(ex, index) {
  const gold = ex.label ? ` · gold ${ex.label}` : "";
  return h("article", { class: "card saliency-example", "aria-labelledby": `ex-${index}` },
    h("h2", { id: `ex-${index}` }, `Example ${index + 1}${gold}`),
    h("p", {}, ex.text_pair ? [ex.text, h("br"), ex.text_pair] : ex.text),
    h("p", { class: "muted" },
      `teacher: ${ex.teacher_prediction.label} (${fmtNum(ex.teacher_prediction.confidence, 2)}) · `,
      `student: ${ex.student_prediction.label} (${fmtNum(ex.student_prediction.confidence, 2)}) · `,
      h("span", { title: "Cosine between the teacher's and the student's per-token saliency (how much each token "
        + "matters, not which way it pushes): not the job page's gradient agreement." },
        `saliency profile cosine: ${fmtNum(ex.agreement, 3)}`)),
    h("div", { class: "grid-2" },
      row("Teacher", ex.tokens, ex.teacher),
      row("Student", ex.tokens, ex.student)));
}

function row(who, tokens, scores) {
  const max = Math.max(...scores.filter((_, i) => !SPECIAL.test(tokens[i])), 1e-12);
  const ranked = tokens.map((t, i) => [t, scores[i]]).filter(([t]) => !SPECIAL.test(t))
    .sort((a, b) => b[1] - a[1]).slice(0, 3).map(([t]) => t.replace(/^##/, ""));
  return h("div", { class: "saliency-row", "data-model": who.toLowerCase() },
    h("h3", {}, who),
    h("p", { class: "visually-hidden" }, `Most salient for the ${who.toLowerCase()}: ${ranked.join(", ")}.`),
    h("p", { class: "tokens", "aria-hidden": "true" }, tokens.map((t, i) => {
      const special = SPECIAL.test(t);
      const alpha = special ? 0 : Math.min(1, scores[i] / max);
      const span = h("span", {
        class: `tok${special ? " special" : ""}${t.startsWith("##") ? " piece" : ""}`,
        title: `${t}: ${fmtNum(scores[i], 3)}`,
        "data-score": String(scores[i]),
      }, t.startsWith("##") ? t.slice(2) : t);
      span.style.backgroundColor = `rgba(255, 186, 0, ${alpha.toFixed(3)})`;
      return [span, " "];
    })));
}

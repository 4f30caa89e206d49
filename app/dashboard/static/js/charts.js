// Line charts over training steps (uPlot), fed point by point, with an optional vertical mark at one step.

import { fmtNum, h } from "./ui.js";

// Steps are whole numbers: ticks 1, 2, 5, 10, 20, 50... apart.
const STEP_INCREMENTS = [1, 2, 5].flatMap((m) => [1, 10, 100, 1e3, 1e4, 1e5, 1e6].map((p) => m * p)).sort((a, b) => a - b);

/** A y tick with the digits that tell small loss terms apart (a KL of 2e-4 is not "0"). */
function tickLabel(v) {
  if (v === 0) return "0";
  const a = Math.abs(v);
  return a < 1e-3 || a >= 1e5 ? v.toExponential(1) : String(Number(v.toPrecision(4)));
}

/** A uPlot line chart; redraws at most once per frame. `mark` is a step drawn as a labelled vertical line. */
export class Chart {
  constructor(id, caption, series, { range = null, height = 240 } = {}) {
    this.series = series;
    this.range = range;
    this.height = height;
    this.points = new Map(); // step -> values
    this.mark = null; // { step, label }
    this.box = h("div", { class: "chart-box", id, "data-points": "0", role: "img", "aria-label": `${caption}: no data yet` });
    this.box.style.minHeight = `${height}px`;
    this.empty = h("p", { class: "chart-empty" }, "Waiting for data…");
    this.figure = h("figure", { class: "chart", "data-chart": id }, h("figcaption", {}, caption), this.box, this.empty);
    this.markEl = null;
    this.plot = null;
    this.frame = null;
  }

  add(step, values) {
    if (typeof step !== "number") return;
    this.points.set(step, { ...(this.points.get(step) || {}), ...values });
    this.schedule();
  }

  /** Draw a vertical line at `step` labelled `label` (kept across redraws and resizes). */
  setMark(step, label) {
    if (this.mark && this.mark.step === step) return;
    this.mark = { step, label };
    this.box.dataset.markStep = String(step);
    this.schedule();
  }

  schedule() {
    if (!this.frame) this.frame = requestAnimationFrame(() => { this.frame = null; this.draw(); });
  }

  hasData() {
    return this.points.size > 0;
  }

  data() {
    const steps = [...this.points.keys()].sort((a, b) => a - b);
    const present = this.series.filter(([k]) => steps.some((s) => typeof this.points.get(s)[k] === "number"));
    const columns = present.map(([k]) => steps.map((s) => {
      const v = this.points.get(s)[k];
      return typeof v === "number" ? v : null;
    }));
    return { steps, present, columns };
  }

  draw() {
    const { steps, present, columns } = this.data();
    this.box.dataset.points = String(steps.length);
    if (!steps.length || !window.uPlot) return;
    this.empty.hidden = true;
    const last = steps[steps.length - 1];
    const summary = present.map(([, label], i) => `${label} ${fmtNum(columns[i][columns[i].length - 1])}`).join(", ");
    const marked = this.mark ? `; ${this.mark.label} at step ${this.mark.step}` : "";
    this.box.setAttribute("aria-label",
      `${this.figure.querySelector("figcaption").textContent}: ${steps.length} points, at step ${last}: ${summary}${marked}`);
    const keys = present.map(([k]) => k).join(",");
    if (this.plot && this.keys !== keys) { this.plot.destroy(); this.plot = null; this.markEl = null; }
    if (!this.plot) {
      this.keys = keys;
      this.plot = new window.uPlot({
        width: this.width(),
        height: this.height,
        padding: [16, null, null, null], // room above the plot for the mark's label
        scales: { x: { time: false }, y: this.range ? { range: this.range } : {} },
        axes: [{ label: "step", stroke: "#16181d", grid: { stroke: "#e3e6ec" }, incrs: STEP_INCREMENTS },
          { stroke: "#16181d", grid: { stroke: "#e3e6ec" }, size: 64, values: (_u, ticks) => ticks.map(tickLabel) }],
        series: [{ label: "step" }, ...present.map(([, label, color, dash]) => ({
          label, stroke: color, width: 2, dash, points: { show: steps.length < 60 }, spanGaps: true,
        }))],
        legend: { live: true },
        hooks: { draw: [() => this.placeMark()] },
      }, [steps, ...columns], this.box);
    } else {
      this.plot.setData([steps, ...columns]);
    }
    this.placeMark();
  }

  /** The mark is a DOM line over the plot (uPlot's overlay), moved to the step's x after every redraw. */
  placeMark() {
    if (!this.plot || !this.mark) return;
    const over = this.plot.over;
    if (!this.markEl || !over.contains(this.markEl)) {
      this.markEl = h("div", { class: "chart-mark", "aria-hidden": "true" }, h("span", {}, this.mark.label));
      over.append(this.markEl);
    }
    this.markEl.dataset.step = String(this.mark.step);
    this.markEl.querySelector("span").textContent = this.mark.label;
    const x = this.plot.valToPos(this.mark.step, "x");
    const inside = Number.isFinite(x) && x >= 0 && x <= over.clientWidth + 0.5;
    this.markEl.hidden = !inside;
    if (inside) this.markEl.style.left = `${x}px`;
  }

  width() {
    return Math.max(240, Math.floor(this.box.clientWidth || this.figure.clientWidth || 500));
  }

  resize() {
    if (this.plot) this.plot.setSize({ width: this.width(), height: this.height });
  }

  destroy() {
    if (this.frame) cancelAnimationFrame(this.frame);
    if (this.plot) this.plot.destroy();
  }
}

// Line charts of the console (CPU, RAM, players, TPS over the last hour),
// drawn by hand on a <canvas>: no library. Colours come from the canvas's
// CSS (--line, --grid, --text), so the policy's `style-src 'self'` holds.
"use strict";
(function () {
  const WINDOW_MS = 3600 * 1000;

  function niceCeil(v) {
    if (v <= 1) return 1;
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
    return 10 * p;
  }

  class Chart {
    /**
     * canvas: the <canvas>; value: the element showing the latest value;
     * opts.max: a fixed top of the scale (else from the data);
     * opts.format: a number -> text.
     */
    constructor(canvas, value, opts) {
      this.canvas = canvas;
      this.value = value;
      this.max = opts.max || null;
      this.format = opts.format || ((v) => String(v));
      this.points = []; // {t: ms, v: number}, oldest first
    }

    clear() {
      this.points = [];
      this.value.textContent = "";
      this.draw();
    }

    /** Adds a point (time in ms); keeps time order and the last hour. */
    push(t, v) {
      if (typeof v !== "number" || !isFinite(v) || !isFinite(t)) return;
      const pts = this.points;
      let i = pts.length;
      while (i > 0 && pts[i - 1].t > t) i--;
      if (i > 0 && pts[i - 1].t === t) pts[i - 1].v = v;
      else pts.splice(i, 0, { t, v });
      const horizon = Date.now() - WINDOW_MS;
      while (pts.length && pts[0].t < horizon) pts.shift();
      const last = pts[pts.length - 1];
      if (last) this.value.textContent = this.format(last.v);
    }

    draw() {
      const c = this.canvas;
      const dpr = window.devicePixelRatio || 1;
      const w = c.clientWidth || 320;
      const h = c.clientHeight || 110;
      if (c.width !== Math.round(w * dpr) || c.height !== Math.round(h * dpr)) {
        c.width = Math.round(w * dpr);
        c.height = Math.round(h * dpr);
      }
      const ctx = c.getContext("2d");
      ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
      ctx.clearRect(0, 0, w, h);
      const css = getComputedStyle(c);
      const color = (name, fallback) => css.getPropertyValue(name).trim() || fallback;
      const [line, grid, text] = [color("--line", "#4aa3ff"), color("--grid", "#333"), color("--text", "#999")];
      const left = 40;
      const right = w - 6;
      const top = 6;
      const bottom = h - 16;
      const now = Date.now();
      const t0 = now - WINDOW_MS;
      const pts = this.points.filter((p) => p.t >= t0);
      const top_v = this.max || niceCeil(Math.max(0, ...pts.map((p) => p.v)) * 1.1);
      const x = (t) => left + ((t - t0) / WINDOW_MS) * (right - left);
      const y = (v) => bottom - (Math.min(v, top_v) / top_v) * (bottom - top);

      ctx.font = "10px system-ui, sans-serif";
      ctx.lineWidth = 1;
      ctx.strokeStyle = grid;
      ctx.fillStyle = text;
      ctx.textAlign = "right";
      ctx.textBaseline = "middle";
      for (const f of [0, 0.5, 1]) {
        const v = top_v * f;
        ctx.beginPath();
        ctx.moveTo(left, Math.round(y(v)) + 0.5);
        ctx.lineTo(right, Math.round(y(v)) + 0.5);
        ctx.stroke();
        ctx.fillText(this.format(v), left - 4, y(v));
      }
      ctx.textBaseline = "alphabetic";
      for (const [m, align] of [[60, "left"], [30, "center"], [0, "right"]]) {
        ctx.textAlign = align;
        ctx.fillText(m ? `-${m} min` : "now", x(now - m * 60000), h - 3);
      }
      c.dataset.points = String(pts.length);
      if (!pts.length) return;

      // A pause longer than three usual intervals (a stopped server) breaks the line.
      const steps = pts.slice(1).map((p, i) => p.t - pts[i].t).sort((a, b) => a - b);
      const usual = steps.length ? steps[Math.floor(steps.length / 2)] : 0;
      const breakAfter = Math.max(3 * usual, 90000);
      ctx.strokeStyle = line;
      ctx.lineWidth = 1.5;
      ctx.beginPath();
      pts.forEach((p, i) => {
        if (i === 0 || p.t - pts[i - 1].t > breakAfter) ctx.moveTo(x(p.t), y(p.v));
        else ctx.lineTo(x(p.t), y(p.v));
      });
      ctx.stroke();
      const last = pts[pts.length - 1];
      ctx.fillStyle = line;
      ctx.beginPath();
      ctx.arc(x(last.t), y(last.v), 2.5, 0, 2 * Math.PI);
      ctx.fill();
    }
  }

  window.AymcCharts = { Chart, WINDOW_MS };
})();

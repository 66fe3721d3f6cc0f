// The bertfleet dashboard (fetched and run by login.js with the token; uses window.bertfleet.api,
// which adds the Authorization header). Three pages on the URL's hash: #/jobs, #/job/<id>, #/cluster.
// Every page re-reads the API every POLL_MS, so it is live without reloading. All text goes in with
// textContent, never innerHTML: job names, reasons and logs are user data.
"use strict";
(function () {
  const POLL_MS = 2000;
  const STATES = ["QUEUED", "SCHEDULED", "RUNNING", "PREEMPTED", "SUCCEEDED", "FAILED", "CANCELLED"];
  const ENDED = new Set(["SUCCEEDED", "FAILED", "CANCELLED"]);
  const api = window.bertfleet.api;
  const root = document.getElementById("app");
  let timer = null;
  let generation = 0; // a render from a page the user has left is dropped

  // ---- helpers --------------------------------------------------------------------------------------
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else if (key === "text") node.textContent = value;
      else node.setAttribute(key, value === true ? "" : value);
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined) continue;
      node.appendChild(typeof child === "string" || typeof child === "number" ? document.createTextNode(String(child)) : child);
    }
    return node;
  }
  const SVG_NS = "http://www.w3.org/2000/svg";
  function svg(tag, attrs) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
    return node;
  }
  async function getJson(path) {
    const response = await api(path);
    if (!response.ok) {
      let detail = "HTTP " + response.status;
      try { detail = (await response.json()).detail || detail; } catch (_) { /* not JSON */ }
      throw new Error(detail);
    }
    return response.json();
  }
  function fmtNum(value, digits) {
    if (value === null || value === undefined) return "–";
    if (Math.abs(value) >= 1000) return Math.round(value).toLocaleString("en-US");
    if (value !== 0 && Math.abs(value) < 1e-3) return Number(value).toExponential(2);
    const text = Number(value).toPrecision(digits || 4);
    return text.includes(".") ? text.replace(/\.?0+$/, "") : text;  // 100.4 to 3 digits is "100", not "1"
  }
  function fmtTime(iso) {
    if (!iso) return "–";
    return new Date(iso).toISOString().slice(5, 19).replace("T", " ");  // MM-DD hh:mm:ss, UTC
  }
  function fmtDuration(seconds) {
    if (seconds === null || seconds === undefined) return "–";
    const s = Math.round(seconds);
    if (s < 60) return s + "s";
    if (s < 3600) return Math.floor(s / 60) + "m " + (s % 60) + "s";
    return Math.floor(s / 3600) + "h " + Math.floor((s % 3600) / 60) + "m";
  }
  function badge(state) { return el("span", { class: "state state-" + state.toLowerCase(), text: state }); }
  function showError(where, err) { where.replaceChildren(el("p", { class: "error", text: String(err.message || err) })); }

  // ---- jobs table -------------------------------------------------------------------------------------
  function jobsPage(gen) {
    const filter = el("select", { id: "state-filter", "aria-label": "filter by state" },
      el("option", { value: "", text: "all states" }), STATES.map((s) => el("option", { value: s, text: s })));
    filter.value = sessionStorage.getItem("bertfleet.filter") || "";
    const body = el("tbody", { id: "jobs-body" });
    const status = el("p", { class: "muted", id: "jobs-status" });
    const heads = ["Job", "State", "Kind", "Model", "Resources", "Progress", "Loss", "Throughput", "ETA",
      "Attempts", "Preemptions", "Submitted", "Started", ""];
    root.replaceChildren(el("h1", { text: "Jobs" }),
      el("div", { class: "toolbar" }, el("label", {}, "State ", filter), status),
      el("table", { id: "jobs-table", class: "grid" }, el("thead", {}, el("tr", {}, heads.map((h) => el("th", { text: h })))), body));

    async function refresh() {
      const state = filter.value;
      let data;
      try { data = await getJson("/dashboard/jobs" + (state ? "?state=" + encodeURIComponent(state) : "")); }
      catch (err) { status.textContent = "refresh failed: " + err.message; return; }
      if (gen !== generation) return;
      const rows = data.jobs.slice().reverse().map(jobRow);
      body.replaceChildren(...(rows.length ? rows : [el("tr", {}, el("td", { colspan: heads.length, class: "muted", text: "no jobs" }))]));
      status.textContent = data.jobs.length + " job(s), updated " + new Date().toLocaleTimeString();
    }
    filter.addEventListener("change", () => { sessionStorage.setItem("bertfleet.filter", filter.value); refresh(); });
    return refresh;
  }

  function jobRow(job) {
    const p = job.progress || {};
    const pct = p.step !== null && p.total ? Math.min(100, (100 * p.step) / p.total) : null;
    const progress = p.step === null || p.step === undefined ? "–" :
      el("div", { class: "progress" }, el("div", { class: "bar" }, el("div", { class: "fill", style: null })),
        el("span", { text: p.step + (p.total ? " / " + p.total : "") }));
    if (pct !== null && progress !== "–") progress.querySelector(".fill").style.width = pct.toFixed(1) + "%";
    const r = job.resources || {};
    const res = r.accelerator === "cpu" ? r.num_workers + " x CPU" : r.num_workers + " x " + (r.accelerator_type || r.accelerator.toUpperCase());
    const cancel = ENDED.has(job.state) || job.cancel_requested ? (job.cancel_requested && !ENDED.has(job.state) ? "cancelling…" : "") :
      el("button", { type: "button", class: "cancel", "data-job": job.id, onclick: () => cancelJob(job) }, "Cancel");
    return el("tr", { "data-job": job.id, "data-state": job.state },
      el("td", {}, el("a", { href: "#/job/" + encodeURIComponent(job.id), text: job.name }), el("div", { class: "muted small", text: job.id })),
      el("td", {}, badge(job.state)), el("td", { text: job.kind }), el("td", { text: job.model_size || "–" }),
      el("td", { text: res + " (" + r.backend + ")" }), el("td", {}, progress),
      el("td", { text: fmtNum(p.loss) }), el("td", { text: p.throughput === null ? "–" : fmtNum(p.throughput, 3) + " ex/s" }),
      el("td", { text: fmtDuration(job.eta_s) }), el("td", { text: String(job.num_attempts) }),
      el("td", { text: String(job.num_preemptions) }), el("td", { text: fmtTime(job.submitted_at) }),
      el("td", { text: fmtTime(job.started_at) }), el("td", {}, cancel));
  }

  async function cancelJob(job) {
    if (!window.confirm("Cancel " + job.name + " (" + job.id + ")?")) return;
    const response = await api("/jobs/" + encodeURIComponent(job.id) + "/cancel", { method: "POST" });
    if (!response.ok) {
      let detail = "HTTP " + response.status;
      try { detail = (await response.json()).detail; } catch (_) { /* not JSON */ }
      window.alert("Cancel failed: " + detail);
    }
    tick();
  }

  // ---- one job ----------------------------------------------------------------------------------------
  function jobPage(gen, jobId) {
    const q = encodeURIComponent(jobId);
    const head = el("div", { id: "job-head" });
    const charts = el("div", { class: "charts" }, el("div", { id: "loss-chart", class: "chart" }), el("div", { id: "lr-chart", class: "chart" }));
    const evals = el("div", { id: "eval-metrics" });
    const events = el("ol", { id: "events", class: "timeline" });
    const logs = el("pre", { id: "log-tail", class: "log" });
    const spec = el("pre", { id: "spec", class: "spec" });
    root.replaceChildren(el("p", {}, el("a", { href: "#/jobs", text: "← all jobs" })), head,
      el("h2", { text: "Training curves" }), charts, el("h2", { text: "Eval metrics" }), evals,
      el("div", { class: "two" }, el("div", {}, el("h2", { text: "Events" }), events),
        el("div", {}, el("h2", { text: "Resolved spec" }), spec)),
      el("h2", { text: "Log tail" }), logs);
    let specShown = false;

    return async function refresh() {
      let job, ev, met, text;
      try {
        [job, ev, met] = await Promise.all([getJson("/jobs/" + q), getJson("/jobs/" + q + "/events"),
          getJson("/jobs/" + q + "/metrics?limit=5000")]);
        const logResponse = await api("/jobs/" + q + "/logs?lines=200");
        text = logResponse.ok ? await logResponse.text() : "";
      } catch (err) { if (gen === generation) showError(head, err); return; }
      if (gen !== generation) return;
      const p = job.progress || {};
      head.replaceChildren(el("h1", {}, job.name + " ", badge(job.state)),
        el("dl", { class: "facts" },
          fact("id", job.id), fact("kind", job.kind), fact("priority", job.priority),
          fact("step", p.step === null ? "–" : p.step + (p.total ? " / " + p.total : "")), fact("loss", fmtNum(p.loss)),
          fact("throughput", p.throughput === null ? "–" : fmtNum(p.throughput, 3) + " ex/s"),
          fact("attempts", job.num_attempts), fact("preemptions", job.num_preemptions), fact("failures", job.num_failures),
          fact("checkpoint step", job.checkpoint_step === null ? "–" : job.checkpoint_step),
          fact("submitted", fmtTime(job.submitted_at)), fact("started", fmtTime(job.started_at)),
          fact("finished", fmtTime(job.finished_at))),
        ...(job.last_error ? [el("p", { class: "error", text: "last error: " + job.last_error })] : []));
      if (!specShown) { spec.textContent = JSON.stringify(job.spec, null, 2); specShown = true; }
      events.replaceChildren(...ev.events.map((e) => el("li", { class: "event" },
        el("time", { text: fmtTime(e.time) }), " ", e.from_state ? badge(e.from_state) : el("span", { class: "muted", text: "new" }),
        " → ", badge(e.to_state), el("div", { class: "reason", text: e.reason }))));
      const records = met.metrics;
      drawChart(charts.querySelector("#loss-chart"), "train/loss", series(records, "train/loss"));
      drawChart(charts.querySelector("#lr-chart"), "train/learning_rate", series(records, "train/learning_rate"));
      drawEvals(evals, records);
      const atBottom = logs.scrollTop + logs.clientHeight >= logs.scrollHeight - 4;
      logs.textContent = text || "(no log yet)";
      if (atBottom) logs.scrollTop = logs.scrollHeight;
    };
  }
  function fact(name, value) { return el("div", {}, el("dt", { text: name }), el("dd", { text: String(value) })); }
  function series(records, key) {
    return records.filter((r) => typeof r[key] === "number" && typeof r.step === "number" && isFinite(r[key])).map((r) => [r.step, r[key]]);
  }

  // A line chart in inline SVG: axes with min/max labels, one polyline, a dot on the newest point.
  function drawChart(box, title, points) {
    const W = 520, H = 220, L = 64, R = 12, T = 24, B = 30;
    const chart = svg("svg", { viewBox: "0 0 " + W + " " + H, width: W, height: H, role: "img", "aria-label": title, "data-points": points.length });
    const label = svg("text", { x: L, y: 16, class: "title" }); label.textContent = title; chart.appendChild(label);
    if (!points.length) {
      const none = svg("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "muted" }); none.textContent = "no data yet";
      chart.appendChild(none); box.replaceChildren(chart); return;
    }
    const xs = points.map((p) => p[0]), ys = points.map((p) => p[1]);
    let [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
    if (x0 === x1) x1 = x0 + 1;
    if (y0 === y1) { y0 -= Math.abs(y0) * 0.1 || 1; y1 += Math.abs(y1) * 0.1 || 1; }
    const sx = (x) => L + ((x - x0) / (x1 - x0)) * (W - L - R);
    const sy = (y) => H - B - ((y - y0) / (y1 - y0)) * (H - T - B);
    chart.appendChild(svg("rect", { x: L, y: T, width: W - L - R, height: H - T - B, class: "plot" }));
    for (const [text, x, y, anchor] of [[fmtNum(y1, 3), L - 6, T + 4, "end"], [fmtNum(y0, 3), L - 6, H - B, "end"],
      ["step " + x0, L, H - 10, "start"], ["step " + x1, W - R, H - 10, "end"]]) {
      const t = svg("text", { x: x, y: y, "text-anchor": anchor, class: "tick" }); t.textContent = text; chart.appendChild(t);
    }
    chart.appendChild(svg("polyline", { class: "line", points: points.map((p) => sx(p[0]).toFixed(1) + "," + sy(p[1]).toFixed(1)).join(" ") }));
    const last = points[points.length - 1];
    chart.appendChild(svg("circle", { cx: sx(last[0]).toFixed(1), cy: sy(last[1]).toFixed(1), r: 3, class: "dot" }));
    box.replaceChildren(chart);
  }

  function drawEvals(box, records) {
    const evals = records.filter((r) => Object.keys(r).some((k) => k.startsWith("eval/")));
    if (!evals.length) { box.replaceChildren(el("p", { class: "muted", text: "no eval metrics yet" })); return; }
    const keys = [...new Set(evals.flatMap((r) => Object.keys(r).filter((k) => k.startsWith("eval/"))))].sort();
    box.replaceChildren(el("table", { class: "grid", id: "eval-table" },
      el("thead", {}, el("tr", {}, el("th", { text: "step" }), keys.map((k) => el("th", { text: k.slice(5) })))),
      el("tbody", {}, evals.map((r) => el("tr", {}, el("td", { text: String(r.step) }), keys.map((k) => el("td", { text: fmtNum(r[k]) })))))));
  }

  // ---- cluster ----------------------------------------------------------------------------------------
  function clusterPage(gen) {
    const message = el("p", { id: "cluster-message", class: "muted" });
    const body = el("tbody", { id: "nodes-body" });
    const summary = el("p", { id: "cluster-summary" });
    root.replaceChildren(el("h1", { text: "Cluster" }), summary, message,
      el("table", { id: "nodes-table", class: "grid" }, el("thead", {}, el("tr", {},
        ["Node", "Status", "Type", "CPUs", "Accelerators (used / total)", "Free", "Held by"].map((h) => el("th", { text: h })))), body));
    return async function refresh() {
      let data;
      try { data = await getJson("/cluster"); } catch (err) { message.textContent = "refresh failed: " + err.message; return; }
      if (gen !== generation) return;
      message.textContent = data.message || "source: " + data.source;
      const alive = data.nodes.filter((n) => n.alive);
      let used = 0, total = 0;
      for (const n of alive) for (const a of n.accelerators) if (a.resource !== "TPU") { total += a.total; used += a.used || 0; }
      summary.textContent = alive.length + " node(s) alive, " + (data.nodes.length - alive.length) + " dead; accelerators " + used + " used / " + total;
      body.replaceChildren(...data.nodes.map((n) => el("tr", { class: n.alive ? "" : "dead", "data-node": n.name },
        el("td", { text: n.name }), el("td", {}, el("span", { class: n.alive ? "state state-running" : "state state-failed", text: n.alive ? "alive" : "dead" })),
        // a GPU node without an accelerator_type label (e.g. simulated) is a GPU node of unknown type, not "cpu"
        el("td", { text: n.accelerator_type || (n.accelerators.length ? n.accelerators[0].resource : "cpu") }), el("td", { text: fmtNum(n.cpus) }),
        el("td", {}, n.accelerators.length ? n.accelerators.map((a) => el("div", { text: a.resource + ": " + (a.used === null ? "?" : fmtNum(a.used)) + " / " + fmtNum(a.total) })) : "–"),
        el("td", { text: n.free ? Object.entries(n.free).filter(([k]) => ["CPU", "GPU", "TPU-host"].includes(k)).map(([k, v]) => k + " " + fmtNum(v)).join(", ") : "?" }),
        el("td", {}, n.jobs.length ? n.jobs.map((j) => el("div", {}, el("a", { href: "#/job/" + encodeURIComponent(j.id), text: j.name }), " × " + j.workers)) : el("span", { class: "muted", text: "free" })))));
    };
  }

  // ---- routing and polling ------------------------------------------------------------------------------
  let refresh = null;
  function route() {
    generation += 1;
    const hash = location.hash || "#/jobs";
    const match = hash.match(/^#\/job\/(.+)$/);
    document.querySelectorAll("#nav a").forEach((a) => a.classList.toggle("active", hash.startsWith(a.getAttribute("href"))));
    refresh = match ? jobPage(generation, decodeURIComponent(match[1])) : hash.startsWith("#/cluster") ? clusterPage(generation) : jobsPage(generation);
    tick();
  }
  function tick() { if (refresh) refresh(); }
  window.addEventListener("hashchange", route);
  timer = setInterval(tick, POLL_MS);
  window.bertfleet.stop = () => { clearInterval(timer); window.removeEventListener("hashchange", route); refresh = null; generation += 1; };
  route();
})();

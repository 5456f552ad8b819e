// The studio page: plain JavaScript, no library, no build step. It only calls the gateway's
// HTTP routes; with TTS_GATEWAY_API_KEY set it asks for the key once (kept in localStorage)
// and sends it as a bearer token, or as ?key= where the browser loads a URL itself
// (EventSource, <audio src>, download links).
"use strict";

const $ = (sel) => document.querySelector(sel);
const KEY_NAME = "tts-studio-key";
const state = { jobs: new Map(), streams: new Map(), nextOffset: null, timers: {} };

function apiKey() { return localStorage.getItem(KEY_NAME) || ""; }
function keyQuery(sep = "?") { return apiKey() ? `${sep}key=${encodeURIComponent(apiKey())}` : ""; }

class ApiError extends Error {}

function describe(status, body) {
  let detail = body && body.detail;
  if (Array.isArray(detail)) detail = detail.map((d) => `${(d.loc || []).slice(1).join(".")}: ${d.msg}`).join("; ");
  if (!detail) detail = `the gateway answered ${status}`;
  if (status === 401) return "An API key is needed (or the one given is wrong): enter it above.";
  if (status === 503) return `The service is not available right now: ${detail}`;
  return detail;
}

async function api(path, options = {}) {
  const headers = new Headers(options.headers || {});
  if (apiKey()) headers.set("Authorization", `Bearer ${apiKey()}`);
  let response;
  try {
    response = await fetch(path, { ...options, headers });
  } catch (err) {
    throw new ApiError(`The gateway cannot be reached: ${err.message}`);
  }
  if (response.status === 401) askForKey();
  if (!response.ok) {
    let body = null;
    try { body = await response.json(); } catch (_) { /* not JSON */ }
    throw new ApiError(describe(response.status, body));
  }
  return response;
}

function showError(message) { const box = $("#alert"); box.textContent = message; box.hidden = false; }
function clearError() { const box = $("#alert"); box.textContent = ""; box.hidden = true; }
async function guarded(action) {
  try { clearError(); await action(); } catch (err) { showError(err instanceof ApiError ? err.message : `Error: ${err.message}`); }
}

function askForKey() { $("#key-form").hidden = false; $("#key-input").focus(); }

// --- views ---------------------------------------------------------------------------------
function showView() {
  const view = (location.hash || "#speak").slice(1);
  for (const name of ["speak", "books", "system"]) {
    $(`#${name}`).hidden = name !== view;
    const link = $(`#nav-${name}`);
    if (name === view) link.setAttribute("aria-current", "page"); else link.removeAttribute("aria-current");
  }
  clearInterval(state.timers.system);
  clearInterval(state.timers.jobs);
  if (view === "system") { guarded(loadSystem); state.timers.system = setInterval(() => guarded(loadSystem), 2000); }
  if (view === "books") { guarded(() => loadJobs(true)); state.timers.jobs = setInterval(() => guarded(() => loadJobs(false)), 10000); }
}

// --- voices --------------------------------------------------------------------------------
async function loadVoices() {
  const body = await (await api("/v1/audio/voices")).json();
  const details = body.details || (body.voices || []).map((name) => ({ name, source: "" }));
  for (const select of document.querySelectorAll("select.voices")) {
    const chosen = select.value;
    select.replaceChildren(new Option("default voice", ""));
    const groups = new Map();
    for (const v of details) {
      const label = { library: "Library", preset: "Presets", builtin: "Built-in" }[v.source] || "Voices";
      if (!groups.has(label)) { groups.set(label, document.createElement("optgroup")); groups.get(label).label = label; }
      const text = v.duration_s ? `${v.name} (${v.duration_s.toFixed(1)} s clip)` : v.name;
      groups.get(label).append(new Option(text, v.name));
    }
    for (const group of groups.values()) select.append(group);
    select.value = chosen;
  }
}

// --- speak ---------------------------------------------------------------------------------
async function speak(event) {
  event.preventDefault();
  const button = $("#speak-button");
  button.disabled = true;
  try {
    const body = { text: $("#speak-text").value, voice: $("#speak-voice").value || null,
                   temperature: Number($("#speak-temp").value) || 1.0 };
    if ($("#speak-scene").value.trim()) body.system_prompt = $("#speak-scene").value.trim();
    const streamed = $("#speak-stream").checked;
    if (streamed) body.stream = true;
    const response = await api("/generate", { method: "POST", headers: { "Content-Type": "application/json" },
                                              body: JSON.stringify(body) });
    const wav = streamed ? await playAsItArrives(response) : await response.blob();
    const url = URL.createObjectURL(wav);
    const audio = $("#speak-audio");
    audio.src = url;
    const link = $("#speak-download");
    link.href = url; link.hidden = false;
    if (!streamed) audio.play().catch(() => { /* autoplay may be refused; the controls are there */ });
  } finally { button.disabled = false; }
}

// A streamed WAV (`"stream": true`): a 44-byte PCM16 mono header with "unknown" sizes, then
// samples as each chunk of the text passes its checks. Each piece is played through Web Audio
// as it arrives, queued after the one before; the whole answer then becomes a normal WAV
// (sizes filled in) for the <audio> element and the download link.
async function playAsItArrives(response) {
  const reader = response.body.getReader();
  const parts = [];
  let received = 0, header = null, carry = new Uint8Array(0), context = null, playAt = 0;
  const status = $("#speak-status");
  status.dataset.pieces = "0";
  while (true) {
    const { done, value } = await reader.read();
    if (done) break;
    parts.push(value); received += value.length;
    let bytes = concat(carry, value);
    if (!header) {
      if (bytes.length < 44) { carry = bytes; continue; }
      header = new DataView(bytes.buffer, bytes.byteOffset, 44);
      if (header.getUint32(0, false) !== 0x52494646) throw new ApiError("The streamed answer is not a WAV.");
      context = new AudioContext({ sampleRate: header.getUint32(24, true) });
      playAt = context.currentTime + 0.1;
      bytes = bytes.subarray(44);
    }
    const usable = bytes.length - (bytes.length % 2);
    carry = bytes.slice(usable);
    if (!usable) continue;
    const samples = new Int16Array(bytes.slice(0, usable).buffer);
    const buffer = context.createBuffer(1, samples.length, context.sampleRate);
    const channel = buffer.getChannelData(0);
    for (let i = 0; i < samples.length; i++) channel[i] = samples[i] / 32768;
    const source = context.createBufferSource();
    source.buffer = buffer; source.connect(context.destination);
    playAt = Math.max(playAt, context.currentTime);
    source.start(playAt);
    playAt += buffer.duration;
    status.dataset.pieces = String(Number(status.dataset.pieces) + 1);
    if (status.dataset.pieces === "1") status.dataset.firstPieceAtBytes = String(received);
    status.textContent = `Playing as it arrives: ${(playAt - 0.1).toFixed(1)} s received`;
  }
  status.dataset.totalBytes = String(received);
  status.textContent = `Received ${(Math.max(0, received - 44) / 2 / (context ? context.sampleRate : 24000)).toFixed(1)} s of speech`;
  const whole = concat(...parts);
  if (whole.length >= 44) {  // fill in the sizes a stream leaves "unknown"
    const view = new DataView(whole.buffer);
    view.setUint32(4, whole.length - 8, true);
    view.setUint32(40, whole.length - 44, true);
  }
  return new Blob([whole], { type: "audio/wav" });
}

function concat(...arrays) {
  const out = new Uint8Array(arrays.reduce((n, a) => n + a.length, 0));
  let at = 0;
  for (const a of arrays) { out.set(a, at); at += a.length; }
  return out;
}

async function addClip(event) {
  event.preventDefault();
  const form = new FormData();
  form.append("name", $("#clip-name").value);
  form.append("transcript", $("#clip-transcript").value);
  form.append("file", $("#clip-file").files[0]);
  await api("/v1/audio/voices", { method: "POST", body: form });
  await loadVoices();
}

// --- books ---------------------------------------------------------------------------------
function bookForm() {
  const form = new FormData($("#book-form"));
  if (!$("#book-file").files.length) throw new ApiError("Choose a book file first.");
  return form;
}

async function preview() {
  const form = bookForm();
  const short = new FormData();
  short.append("file", form.get("file"));
  short.append("voice", form.get("voice") || "");
  short.append("cast", form.get("cast") || "");
  short.append("narrator", form.get("narrator") || "");
  const response = await api("/jobs/preview", { method: "POST", body: short });
  const audio = $("#preview-audio");
  audio.src = URL.createObjectURL(await response.blob());
  audio.hidden = false;
  audio.play().catch(() => {});
}

async function submitBook(event) {
  event.preventDefault();
  const button = $("#submit-button");
  button.disabled = true;
  try {
    const answer = await (await api("/jobs/upload", { method: "POST", body: bookForm() })).json();
    await refreshJob(answer.job_id);
  } finally { button.disabled = false; }
}

async function loadJobs(reset) {
  const body = await (await api(`/jobs?limit=20`)).json();
  for (const job of body.jobs) renderJob(job);
  if (reset) state.nextOffset = body.next_offset;
  $("#jobs-more").hidden = state.nextOffset == null;
}

async function olderJobs() {
  const body = await (await api(`/jobs?limit=20&offset=${state.nextOffset}`)).json();
  for (const job of body.jobs) renderJob(job, true);
  state.nextOffset = body.next_offset;
  $("#jobs-more").hidden = state.nextOffset == null;
}

async function refreshJob(id) {
  renderJob(await (await api(`/jobs/${id}`)).json());
}

function fmtTime(s) {
  if (s == null || !isFinite(s)) return "";
  s = Math.max(0, Math.round(s));
  return s >= 3600 ? `${Math.floor(s / 3600)} h ${Math.round((s % 3600) / 60)} min`
       : s >= 60 ? `${Math.floor(s / 60)} min ${s % 60} s` : `${s} s`;
}

// Time left: the chapter's chunks still to do at the rate its chunks were done since the job began.
function timeLeft(job, ch) {
  if (ch.status !== "pending" || !ch.chunks_total || !ch.chunks_done || job.status !== "running") return "";
  if (ch.chunks_done >= ch.chunks_total) return "assembling";
  const elapsed = Date.now() / 1000 - job.created_at;
  return fmtTime((ch.chunks_total - ch.chunks_done) * elapsed / ch.chunks_done);
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k.startsWith("on")) node.addEventListener(k.slice(2), v); else if (v != null) node.setAttribute(k, v);
  }
  node.append(...children.filter((c) => c != null));
  return node;
}

function renderJob(job, append = false) {
  state.jobs.set(job.job_id, job);
  const list = $("#jobs");
  list.querySelector(".muted:not(.job *)")?.remove();
  let box = document.getElementById(`job-${job.job_id}`);
  if (!box) {
    box = el("article", { class: "job", id: `job-${job.job_id}`, "data-job": job.job_id, "aria-label": `Job ${job.title || job.job_id}` });
    box.append(el("div", { class: "head" }), el("table", { class: "chapters" },
      el("thead", {}, el("tr", {}, ...["Chapter", "Status", "Chunks", "Time left", "Audio"].map((h) => el("th", {}, h)))),
      el("tbody")));
    if (append) list.append(box); else list.prepend(box);
  }
  const actions = [];
  if (job.status === "running") actions.push(el("button", { type: "button", class: "secondary cancel", onclick: () => guarded(() => cancelJob(job.job_id)) }, "Cancel"));
  if (job.status === "failed" || job.status === "cancelled") actions.push(el("button", { type: "button", class: "secondary retry", onclick: () => guarded(() => retryJob(job.job_id)) }, "Retry"));
  if (job.status === "done") actions.push(el("a", { href: `/jobs/${job.job_id}/manifest${keyQuery()}`, download: "", class: "manifest" }, "Manifest"));
  const created = new Date(job.created_at * 1000).toLocaleString();
  box.querySelector(".head").replaceChildren(
    el("h4", {}, job.title || job.job_id, " ", el("span", { class: `job-status status-${job.status}` }, job.status)),
    el("p", { class: "muted" }, `${job.job_id} · ${job.chapters_done}/${job.chapters_total} chapters · `
      + `${job.chunks_done}/${job.chunks_total || "?"} chunks · ${fmtTime(job.audio_s_done)} of audio · started ${created}`),
    el("div", { class: "row" }, ...actions));
  const body = box.querySelector("tbody");
  for (const ch of job.chapters) {
    const rowId = `row-${job.job_id}-${ch.chapter}`;
    let row = document.getElementById(rowId);
    if (!row) {
      row = el("tr", { id: rowId, class: "chapter", "data-chapter": ch.chapter },
        el("td", { class: "title" }), el("td", { class: "status" }), el("td", { class: "chunks" }),
        el("td", { class: "left" }), el("td", { class: "audio" }));
      body.append(row);
    }
    row.querySelector(".title").textContent = `${ch.chapter + 1}. ${ch.title || "(untitled)"}`;
    row.querySelector(".status").textContent = ch.status;
    row.dataset.status = ch.status;
    const total = ch.chunks_total ?? 0;
    row.querySelector(".chunks").replaceChildren(
      el("progress", { max: total || 1, value: ch.chunks_done, "aria-label": `Chapter ${ch.chapter + 1} progress` }),
      ` ${ch.chunks_done}/${ch.chunks_total ?? "?"}`);
    row.querySelector(".left").textContent = timeLeft(job, ch);
    const cell = row.querySelector(".audio");
    if (ch.status === "done" && ch.url && !cell.querySelector("audio")) {
      const src = `${ch.url}${keyQuery()}`;
      cell.replaceChildren(
        el("audio", { controls: "", preload: "metadata", src, "aria-label": `Chapter ${ch.chapter + 1}: ${ch.title}` }),
        el("a", { href: src, download: "", class: "download" }, "Download"), " ",
        el("a", { href: `${ch.url}/subtitles${keyQuery()}`, download: "", class: "vtt" }, "VTT"));
    }
  }
  if (job.status === "running") watch(job.job_id); else unwatch(job.job_id);
}

// One EventSource per running job; every event refreshes the job's rows from GET /jobs/{id}
// (rows are keyed by chapter, so nothing is ever added twice). The server answers 204 once the
// job is finished, which ends the browser's automatic reconnects.
function watch(id) {
  if (state.streams.has(id)) return;
  const source = new EventSource(`/jobs/${id}/events${keyQuery()}`);
  let pending = null;
  const refresh = () => { clearTimeout(pending); pending = setTimeout(() => guarded(() => refreshJob(id)), 250); };
  for (const kind of ["job.progress", "chapter.done", "chapter.failed", "job.done"]) source.addEventListener(kind, refresh);
  source.addEventListener("job.state", (e) => renderJob(JSON.parse(e.data)));
  source.onerror = () => { if (source.readyState === EventSource.CLOSED) { state.streams.delete(id); refresh(); } };
  state.streams.set(id, source);
}

function unwatch(id) { state.streams.get(id)?.close(); state.streams.delete(id); }

async function cancelJob(id) { renderJob(await (await api(`/jobs/${id}`, { method: "DELETE" })).json()); unwatch(id); }
async function retryJob(id) { await api(`/jobs/${id}/retry`, { method: "POST" }); await refreshJob(id); }

// --- system --------------------------------------------------------------------------------
async function loadSystem() {
  const sys = await (await api("/studio/system")).json();
  $("#sys-summary").textContent = `${sys.workers.length} worker${sys.workers.length === 1 ? "" : "s"} alive `
    + `(heartbeat every ${sys.heartbeat_s} s) · bus ${sys.bus ? "connected" : "down"}`;
  $("#sys-workers").replaceChildren(...sys.workers.map((w) => el("tr", { class: "worker" },
    el("td", {}, w.worker), el("td", {}, `${w.in_flight}/${w.max_in_flight}`), el("td", {}, `${w.synthesized}`),
    el("td", {}, w.backends.map((b) => `${b.url} ${b.healthy ? "healthy" : "unhealthy"}`).join(", ")))));
  $("#q-interactive").textContent = sys.queues.interactive ?? "–";
  $("#q-bulk").textContent = sys.queues.bulk ?? "–";
  $("#q-dlq").textContent = sys.queues.dlq ?? "–";
  const rates = sys.audio_rate.map((p) => p.audio_s_per_s);
  const peak = Math.max(0, ...rates);
  const top = Math.max(peak, 0.1);
  const points = rates.map((r, i) => `${(i * 300 / Math.max(1, rates.length - 1)).toFixed(1)},${(78 - r * 74 / top).toFixed(1)}`);
  const chart = $("#sys-chart");
  const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
  line.setAttribute("points", points.join(" "));
  line.setAttribute("vector-effect", "non-scaling-stroke");
  chart.replaceChildren(line);
  chart.dataset.total = rates.reduce((a, b) => a + b, 0).toFixed(3);
  $("#sys-rate").textContent = `now ${(rates[rates.length - 1] || 0).toFixed(2)} s/s · peak ${peak.toFixed(2)} s/s `
    + `(${sys.bucket_s} s buckets, oldest left)`;
}

// --- start ---------------------------------------------------------------------------------
$("#key-form").addEventListener("submit", (e) => {
  e.preventDefault();
  localStorage.setItem(KEY_NAME, $("#key-input").value.trim());
  $("#key-form").hidden = true;
  for (const id of [...state.streams.keys()]) unwatch(id);
  guarded(loadVoices);
  showView();
});
$("#speak-form").addEventListener("submit", (e) => guarded(() => speak(e)));
$("#clip-form").addEventListener("submit", (e) => guarded(() => addClip(e)));
$("#book-form").addEventListener("submit", (e) => guarded(() => submitBook(e)));
$("#preview-button").addEventListener("click", () => guarded(preview));
$("#jobs-more").addEventListener("click", () => guarded(olderJobs));
window.addEventListener("hashchange", showView);
guarded(loadVoices);
showView();

// mnisttext's page: generate live, draw and complete, decode. Talks only to the server that
// served it (the JSON API in docs/web.md); streams arrive as server-sent events over fetch().
"use strict";

const SIDE = 30;                    // pixels a side (28 + a 1-pixel zero border)
const SYMBOLS = 150;                // 6 pixels a symbol, 5 symbols a pixel row
const START = 58;                   // ':' is symbol value 0
const COLORS = {
  paper: [16, 19, 27], ink: [244, 246, 250], fresh: [138, 170, 255], unknown: [29, 33, 45],
};

const $ = (id) => document.getElementById(id);

// ---------------------------------------------------------------------------------------------
// the codec, 1 bit per pixel (mirrors mnisttext/codec.py)

function bodyToBits(body) {
  const bits = new Uint8Array(SIDE * SIDE);
  for (let i = 0; i < body.length && i < SYMBOLS; i++) {
    const v = body.charCodeAt(i) - START;
    for (let b = 0; b < 6; b++) bits[i * 6 + b] = (v >> (5 - b)) & 1;
  }
  return bits;
}

const lineToBits = (line) => bodyToBits(line.slice(1, 1 + SYMBOLS));

function bitsToLevels(bits) {
  const rows = [];
  for (let r = 0; r < SIDE; r++) rows.push(Array.from(bits.subarray(r * SIDE, (r + 1) * SIDE)));
  return rows;
}

// ---------------------------------------------------------------------------------------------
// talking to the server

class ApiError extends Error {
  constructor(status, body) {
    super(body && body.error ? body.error : `HTTP ${status}`);
    this.status = status;
    this.field = body ? body.field : null;
  }
}

async function api(path, body, signal) {
  const init = body === undefined ? {signal} : {
    method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body), signal,
  };
  const res = await fetch(path, init);
  const data = await res.json().catch(() => null);
  if (!res.ok) throw new ApiError(res.status, data);
  return data;
}

// POST `body`, then call handlers[event](data) for each server-sent event until the stream ends.
async function stream(path, body, handlers, signal) {
  const res = await fetch(path, {
    method: "POST", headers: {"Content-Type": "application/json", Accept: "text/event-stream"},
    body: JSON.stringify(body), signal,
  });
  if (!res.ok) throw new ApiError(res.status, await res.json().catch(() => null));
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const {value, done} = await reader.read();
    if (done) break;
    buffer += value;
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      let event = "message", data = "";
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) event = line.slice(6).trim();
        else if (line.startsWith("data:")) data += line.slice(5).trim();
      }
      if (handlers[event]) handlers[event](JSON.parse(data));
    }
  }
}

// ---------------------------------------------------------------------------------------------
// small helpers

function paintTile(canvas, body, givenSymbols = 0) {
  // A 30x30 canvas (CSS scales it, pixelated): ink for pixels written, dim for those not yet.
  const ctx = canvas.getContext("2d");
  const img = ctx.createImageData(SIDE, SIDE);
  const bits = bodyToBits(body);
  const known = body.length * 6, given = givenSymbols * 6;
  for (let p = 0; p < SIDE * SIDE; p++) {
    const c = p >= known ? COLORS.unknown : !bits[p] ? COLORS.paper : p < given ? COLORS.ink
      : givenSymbols ? COLORS.fresh : COLORS.ink;
    img.data.set(c, p * 4);
    img.data[p * 4 + 3] = 255;
  }
  ctx.putImageData(img, 0, 0);
}

function makeTile(index, onClick) {
  const tile = document.createElement("button");
  tile.type = "button";
  tile.className = "tile";
  tile.dataset.index = index;
  const canvas = document.createElement("canvas");
  canvas.width = canvas.height = SIDE;
  const badge = document.createElement("span");
  badge.className = "badge";
  tile.append(canvas, badge);
  if (onClick) tile.addEventListener("click", () => onClick(index));
  return tile;
}

async function copyText(text, button) {
  try {
    await navigator.clipboard.writeText(text);
  } catch {                         // no clipboard permission: select it for Ctrl-C instead
    const area = document.createElement("textarea");
    area.value = text;
    document.body.append(area);
    area.select();
    document.execCommand("copy");
    area.remove();
  }
  if (button) {
    const was = button.textContent;
    button.textContent = "copied";
    setTimeout(() => { button.textContent = was; }, 1200);
  }
}

function lineItem(line, extra, pngBase64) {
  const li = document.createElement("li");
  if (pngBase64) {
    const img = document.createElement("img");
    img.src = `data:image/png;base64,${pngBase64}`;
    img.alt = `digit ${line[0]}`;
    img.width = img.height = 40;
    li.append(img);
  }
  const code = document.createElement("code");
  code.className = "line";
  code.textContent = line;
  const button = document.createElement("button");
  button.type = "button";
  button.className = "ghost";
  button.textContent = "copy";
  button.addEventListener("click", () => copyText(line, button));
  li.append(code);
  if (extra) {
    const span = document.createElement("span");
    span.className = "score";
    span.textContent = extra;
    li.append(span);
  }
  li.append(button);
  return li;
}

function numberOrNull(input) {
  return input.value.trim() === "" ? null : Number(input.value);
}

function setStatus(section, el, text, state) {
  el.textContent = text;
  el.classList.toggle("error", state === "error");
  if (state) section.dataset.state = state;
}

function describe(err) {
  if (err instanceof ApiError) return err.message;
  return `the server did not answer (${err.message}); is mnisttext serve still running?`;
}

function markInvalid(err, prefix) {
  document.querySelectorAll(".invalid").forEach((el) => el.classList.remove("invalid"));
  if (err instanceof ApiError && err.field) {
    const input = $(`${prefix}-${err.field.replace(/_/g, "-")}`);
    if (input) input.classList.add("invalid");
  }
}

// ---------------------------------------------------------------------------------------------
// 1. generate

const gen = {digit: 3, controller: null, result: null, tiles: []};

function buildDigitPicker() {
  const box = $("g-digits");
  for (let d = 0; d <= 9; d++) {
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = d;
    b.setAttribute("role", "radio");
    b.setAttribute("aria-checked", String(d === gen.digit));
    b.addEventListener("click", () => {
      gen.digit = d;
      box.querySelectorAll("button").forEach((x, i) => x.setAttribute("aria-checked", String(i === d)));
      runGenerate();
    });
    box.append(b);
  }
}

function generateRequest() {
  return {
    digit: gen.digit, candidates: Number($("g-candidates").value), keep: Number($("g-keep").value),
    temperature: Number($("g-temperature").value), top_k: numberOrNull($("g-top-k")),
    top_p: numberOrNull($("g-top-p")), seed: Number($("g-seed").value),
  };
}

async function runGenerate() {
  const section = $("generate"), status = $("g-status"), grid = $("g-grid");
  if (gen.controller) gen.controller.abort();       // the server stops the old one
  const controller = gen.controller = new AbortController();
  const body = generateRequest();
  const bodies = [];
  gen.result = null;                              // the tiles are about to be someone else's
  markInvalid(null);
  $("g-best").replaceChildren();
  $("g-selected").hidden = true;
  $("g-bar").style.width = "0";
  setStatus(section, status, "waiting for the model…", "running");
  const started = performance.now();
  try {
    await stream("/api/stream/generate", body, {
      start(d) {
        gen.tiles = Array.from({length: d.candidates}, (_, i) => makeTile(i, selectCandidate));
        grid.replaceChildren(...gen.tiles);
        grid.classList.remove("ranked");
        for (let i = 0; i < d.candidates; i++) bodies.push("");
        gen.tiles.forEach((t) => paintTile(t.querySelector("canvas"), ""));
        if (d.ahead) status.textContent = `queued behind ${d.ahead} request(s)…`;
      },
      rows(d) {
        d.chunks.forEach((chunk, i) => {
          bodies[i] = bodies[i].slice(0, d.from) + chunk;
          paintTile(gen.tiles[i].querySelector("canvas"), bodies[i]);
        });
        $("g-bar").style.width = `${(100 * d.to) / SYMBOLS}%`;
        status.textContent = `sampling ${bodies.length} candidates: row ${d.to / 5} of ${SIDE}`;
      },
      result(d) { showGeneration(d, started); },
      error(d) { throw new ApiError(500, d); },
    }, controller.signal);
  } catch (err) {
    if (err.name === "AbortError") return;
    markInvalid(err, "g");
    setStatus(section, status, describe(err), "error");
  }
}

function showGeneration(d, started) {
  gen.result = d;
  d.lines.forEach((line, i) => paintTile(gen.tiles[i].querySelector("canvas"), line.slice(1, -1)));
  $("g-grid").classList.add("ranked");
  gen.tiles.forEach((t, i) => {
    t.title = `candidate ${i}: score ${d.scores[i].toFixed(3)}`;
    t.querySelector(".badge").textContent = "";
    t.classList.remove("kept");
  });
  d.best.forEach((b, rank) => {
    const tile = gen.tiles[b.index];
    tile.classList.add("kept");
    tile.querySelector(".badge").textContent = `#${rank + 1} ${b.score.toFixed(3).replace(/^0/, "")}`;
  });
  $("g-best").replaceChildren(...d.best.map((b) => lineItem(b.line, b.score.toFixed(3), b.png)));
  const wall = ((performance.now() - started) / 1000).toFixed(2);
  setStatus($("generate"), $("g-status"), `${d.lines.length} candidates of ${d.digit}, best ` +
    `${d.best.length} highlighted · model ${d.seconds.toFixed(2)} s, page ${wall} s`, "done");
  $("g-bar").style.width = "100%";
}

function selectCandidate(i) {
  if (!gen.result) return;
  gen.selected = gen.result.lines[i];
  $("g-sel-index").textContent = i;
  $("g-sel-score").textContent = gen.result.scores[i].toFixed(3);
  $("g-sel-line").textContent = gen.selected;
  $("g-selected").hidden = false;
}

// ---------------------------------------------------------------------------------------------
// 2. the drawing pad

const pad = {bits: new Uint8Array(SIDE * SIDE), brush: 1.45, drawing: false, erase: false, last: null};

function renderPad() {
  const canvas = $("pad"), ctx = canvas.getContext("2d"), cell = canvas.width / SIDE;
  const keep = Number($("c-rows").value);
  ctx.fillStyle = "rgb(16,19,27)";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  ctx.fillStyle = "rgb(244,246,250)";
  for (let p = 0; p < SIDE * SIDE; p++) {
    if (pad.bits[p]) ctx.fillRect((p % SIDE) * cell, Math.floor(p / SIDE) * cell, cell, cell);
  }
  ctx.strokeStyle = "rgba(255,255,255,0.06)";   // the pixel grid
  ctx.lineWidth = 1;
  ctx.beginPath();
  for (let i = 1; i < SIDE; i++) {
    ctx.moveTo(i * cell + 0.5, 0); ctx.lineTo(i * cell + 0.5, canvas.height);
    ctx.moveTo(0, i * cell + 0.5); ctx.lineTo(canvas.width, i * cell + 0.5);
  }
  ctx.stroke();
  // the rows the model will rewrite, shaded below the cut
  ctx.fillStyle = "rgba(110,140,255,0.16)";
  ctx.fillRect(0, keep * cell, canvas.width, canvas.height - keep * cell);
  ctx.strokeStyle = "rgb(138,170,255)";
  ctx.setLineDash([6, 4]);
  ctx.beginPath();
  ctx.moveTo(0, keep * cell); ctx.lineTo(canvas.width, keep * cell);
  ctx.stroke();
  ctx.setLineDash([]);
}

function stamp(x, y, erase) {
  // Every pixel whose centre lies within the brush radius of (x, y) (in pixel units).
  const r = pad.brush === "erase" ? 1.45 : pad.brush;     // the eraser is as wide as the thick brush
  for (let row = Math.floor(y - r); row <= Math.ceil(y + r); row++) {
    for (let col = Math.floor(x - r); col <= Math.ceil(x + r); col++) {
      if (row < 0 || col < 0 || row >= SIDE || col >= SIDE) continue;
      if ((col + 0.5 - x) ** 2 + (row + 0.5 - y) ** 2 <= r * r) pad.bits[row * SIDE + col] = erase ? 0 : 1;
    }
  }
}

function padPoint(ev) {
  const rect = $("pad").getBoundingClientRect();
  return [((ev.clientX - rect.left) / rect.width) * SIDE, ((ev.clientY - rect.top) / rect.height) * SIDE];
}

function strokeTo(ev) {
  // Fill in between pointer events, which come far apart on a fast stroke.
  const [x, y] = padPoint(ev);
  const [x0, y0] = pad.last || [x, y];
  const steps = Math.max(1, Math.ceil(Math.hypot(x - x0, y - y0) / 0.25));
  for (let s = 1; s <= steps; s++) stamp(x0 + ((x - x0) * s) / steps, y0 + ((y - y0) * s) / steps, pad.erase);
  pad.last = [x, y];
  renderPad();
}

function setupPad() {
  const canvas = $("pad");
  canvas.addEventListener("contextmenu", (ev) => ev.preventDefault());
  canvas.addEventListener("pointerdown", (ev) => {
    ev.preventDefault();
    canvas.setPointerCapture(ev.pointerId);
    pad.drawing = true;
    pad.erase = pad.brush === "erase" || ev.button === 2 || ev.shiftKey;
    pad.last = null;
    strokeTo(ev);
  });
  canvas.addEventListener("pointermove", (ev) => { if (pad.drawing) strokeTo(ev); });
  const end = () => {
    if (!pad.drawing) return;
    pad.drawing = false;
    pad.last = null;
    padChanged();
  };
  canvas.addEventListener("pointerup", end);
  canvas.addEventListener("pointercancel", end);
  document.querySelectorAll("[data-brush]").forEach((b) => b.addEventListener("click", () => {
    const v = b.dataset.brush;
    pad.brush = v === "erase" ? "erase" : Number(v);
    document.querySelectorAll("[data-brush]").forEach((x) => x.setAttribute("aria-pressed", String(x === b)));
  }));
}

function loadOnPad(lineOrBits) {
  pad.bits = typeof lineOrBits === "string" ? lineToBits(lineOrBits) : lineOrBits;
  renderPad();
  padChanged();
  $("draw").scrollIntoView({behavior: "smooth", block: "start"});
}

// ---------------------------------------------------------------------------------------------
// 3. the model's view: class probabilities and the text line, refreshed after every stroke

const view = {timer: 0, seq: 0, modelDigit: 0};

function buildProbs() {
  const box = $("probs");
  for (let d = 0; d <= 9; d++) {
    const row = document.createElement("div");
    row.className = "prob-row";
    row.innerHTML = `<span class="digit">${d}</span>
      <span class="track"><span class="fill model"></span></span><span class="pct model"></span>
      <span class="track"><span class="fill cnn"></span></span><span class="pct cnn"></span>`;
    box.append(row);
  }
}

function showProbs(p) {
  const rows = $("probs").children;
  const top = {model: p.model_digit, cnn: p.cnn_digit};
  for (let d = 0; d <= 9; d++) {
    for (const k of ["model", "cnn"]) {
      rows[d].querySelector(`.fill.${k}`).style.width = `${(100 * p[k][d]).toFixed(1)}%`;
      rows[d].querySelector(`.pct.${k}`).textContent = `${(100 * p[k][d]).toFixed(p[k][d] < 0.1 ? 1 : 0)}%`;
    }
    rows[d].classList.toggle("top", d === top.model || d === top.cnn);
  }
}

function padChanged() {
  $("draw").dataset.view = "pending";            // "ready" again once the numbers match the pad
  view.seq++;                                     // an answer still on its way is for the old pad
  clearTimeout(view.timer);
  view.timer = setTimeout(analyze, 120);          // one request per pause, not per pointer event
}

async function analyze() {
  const seq = ++view.seq;
  const levels = bitsToLevels(pad.bits);
  try {
    const p = await api("/api/classify", {levels});
    if (seq !== view.seq) return;                 // a newer drawing is on its way
    showProbs(p);
    view.modelDigit = p.model_digit;
    const e = await api("/api/encode", {levels, label: completionLabel()});
    if (seq !== view.seq) return;
    $("d-line").textContent = e.line;
    $("draw").dataset.view = "ready";
  } catch (err) {
    $("draw").dataset.view = "error";
    setStatus($("draw"), $("c-status"), describe(err), "error");
  }
}

function completionLabel() {
  const v = $("c-label").value;
  return v === "auto" ? view.modelDigit : Number(v);
}

// ---------------------------------------------------------------------------------------------
// 2b. complete

const comp = {controller: null, examples: {}, next: {}};

async function runComplete() {
  const section = $("draw"), status = $("c-status"), grid = $("c-grid");
  if (comp.controller) comp.controller.abort();
  const controller = comp.controller = new AbortController();
  clearTimeout(view.timer);
  if ($("c-label").value === "auto") await analyze();      // "auto" needs the current best guess
  const rows = Number($("c-rows").value);
  const body = {
    levels: bitsToLevels(pad.bits), label: completionLabel(), rows,
    samples: Number($("c-samples").value), temperature: Number($("c-temperature").value),
    seed: Number($("c-seed").value),
  };
  const bodies = [];
  let tiles = [];
  markInvalid(null);
  $("c-lines").replaceChildren();
  $("c-bar").style.width = "0";
  setStatus(section, status, "waiting for the model…", "running");
  try {
    await stream("/api/stream/complete", body, {
      start(d) {
        tiles = Array.from({length: d.candidates}, (_, i) => makeTile(i, null));
        grid.replaceChildren(...tiles);
        for (let i = 0; i < d.candidates; i++) bodies.push("");
        tiles.forEach((t) => paintTile(t.querySelector("canvas"), ""));
        if (d.ahead) status.textContent = `queued behind ${d.ahead} request(s)…`;
      },
      rows(d) {
        d.chunks.forEach((chunk, i) => {
          bodies[i] = bodies[i].slice(0, d.from) + chunk;
          paintTile(tiles[i].querySelector("canvas"), bodies[i], rows * 5);
        });
        $("c-bar").style.width = `${(100 * d.to) / SYMBOLS}%`;
        status.textContent = `completing as a ${body.label}: row ${d.to / 5} of ${SIDE}`;
      },
      result(d) {
        d.lines.forEach((line, i) => paintTile(tiles[i].querySelector("canvas"), line.slice(1, -1), rows * 5));
        $("c-lines").replaceChildren(...d.lines.map((l, i) => lineItem(l, null, d.pngs[i])));
        $("c-bar").style.width = "100%";
        setStatus(section, status, `${d.lines.length} completions as a ${body.label}, ${rows} rows ` +
          `kept (white) · model ${d.seconds.toFixed(2)} s`, "done");
      },
      error(d) { throw new ApiError(500, d); },
    }, controller.signal);
  } catch (err) {
    if (err.name === "AbortError") return;
    markInvalid(err, "c");
    setStatus(section, status, describe(err), "error");
  }
}

async function loadExample() {
  const digit = $("d-example-digit").value;
  clearTimeout(view.timer);                       // the drawing being replaced: its numbers must
  view.seq++;                                     // not arrive (nor say "ready") after this
  $("draw").dataset.view = "pending";
  try {
    if (!comp.examples[digit]) {
      const q = digit === "" ? "?limit=300" : `?digit=${digit}&limit=300`;
      comp.examples[digit] = (await api(`/api/examples${q}`)).lines;
      comp.next[digit] = 0;
    }
    const lines = comp.examples[digit];
    if (!lines.length) throw new Error("no examples of that digit");
    const i = comp.next[digit]++ % lines.length;
    $("d-example-info").textContent = `test example ${i + 1} of ${lines.length} (a ${lines[i][0]})`;
    loadOnPad(lines[i]);
  } catch (err) {
    setStatus($("draw"), $("c-status"), describe(err), "error");
  }
}

// ---------------------------------------------------------------------------------------------
// 4. decode

const dec = {levels: null, timer: 0};

async function runDecode() {
  const section = $("decode"), status = $("x-status");
  const line = $("x-line").value.trim();
  if (!line) return;
  try {
    const d = await api("/api/decode", {line});
    $("x-img").src = `data:image/png;base64,${d.png}`;
    $("x-img").hidden = false;
    $("x-label").textContent = `a ${d.label}`;
    $("x-pad").disabled = false;
    dec.levels = d.levels;
    $("x-line").classList.remove("invalid");
    setStatus(section, status, "decoded: the class digit and 900 pixels", "done");
  } catch (err) {
    $("x-img").hidden = true;
    $("x-label").textContent = "";
    $("x-pad").disabled = true;
    $("x-line").classList.add("invalid");
    setStatus(section, status, describe(err), "error");
  }
}

// ---------------------------------------------------------------------------------------------
// start

async function connect() {
  try {
    const info = await api("/api/info");
    $("server").textContent = `local model · up to ${info.max_candidates} candidates`;
    $("server").classList.add("ok");
    $("g-candidates").max = info.max_candidates;
    $("c-samples").max = info.max_samples;
  } catch (err) {
    $("server").textContent = "server unreachable";
    $("server").classList.add("bad");
  }
}

function wire() {
  buildDigitPicker();
  buildProbs();
  setupPad();
  for (let d = 0; d <= 9; d++) {
    $("d-example-digit").add(new Option(String(d), String(d)));
    $("c-label").add(new Option(String(d), String(d)));
  }
  $("g-run").addEventListener("click", runGenerate);
  $("g-sel-copy").addEventListener("click", (ev) => copyText(gen.selected, ev.target));
  $("g-sel-pad").addEventListener("click", () => loadOnPad(gen.selected));
  $("d-clear").addEventListener("click", () => { pad.bits.fill(0); renderPad(); padChanged(); });
  $("d-load").addEventListener("click", loadExample);
  $("d-copy").addEventListener("click", (ev) => copyText($("d-line").textContent, ev.target));
  $("c-rows").addEventListener("input", () => { $("c-rows-out").textContent = $("c-rows").value; renderPad(); });
  $("c-label").addEventListener("change", padChanged);
  $("c-run").addEventListener("click", runComplete);
  $("x-run").addEventListener("click", runDecode);
  $("x-line").addEventListener("input", () => { clearTimeout(dec.timer); dec.timer = setTimeout(runDecode, 250); });
  $("x-pad").addEventListener("click", () => { if (dec.levels) loadOnPad(Uint8Array.from(dec.levels.flat())); });
  $("x-example").addEventListener("click", async () => {
    const lines = (await api("/api/examples?limit=300")).lines;
    $("x-line").value = lines[Math.floor(Math.random() * lines.length)];
    runDecode();
  });
  document.querySelectorAll("[data-reseed]").forEach((b) => b.addEventListener("click", () => {
    $(b.dataset.reseed).value = Math.floor(Math.random() * 100000);
  }));
  document.querySelectorAll("#generate .controls input").forEach((el) =>
    el.addEventListener("keydown", (ev) => { if (ev.key === "Enter") runGenerate(); }));
  renderPad();
  padChanged();
}

wire();
connect();

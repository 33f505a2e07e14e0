// vlae explore: one control per level (a 2-d pad or sliders); every change decodes the image on the server.
// The page holds the state: `controls`, one array of numbers per level, bottom first.
"use strict";

const PAD_PX = 220;  // side of a 2-d level's pad in CSS pixels
const DEBOUNCE_MS = 15;  // wait this long after the last move before asking; at most one request in flight

let info = null;
let controls = [];
let timer = null, inflight = false, again = false;
const levelViews = [];  // per level: {draw(), show()}

const $ = (id) => document.getElementById(id);

async function api(path, options) {
  const r = await fetch(path, options);
  let body;
  try { body = await r.json(); } catch (e) { body = {error: `${r.status} ${r.statusText}`}; }
  if (!r.ok) throw new Error(body.error || `${r.status}`);
  return body;
}

function say(message) { $("status").textContent = message || ""; }
function busy(delta) { document.body.dataset.busy = String(Number(document.body.dataset.busy) + delta); }
function fmt(values) { return "(" + values.map((v) => v.toFixed(2)).join(", ") + ")"; }

// --- decoding: debounced, latest state wins ------------------------------------------------------
function schedule() {
  clearTimeout(timer);
  timer = setTimeout(render, DEBOUNCE_MS);
}

async function render() {
  if (inflight) { again = true; return; }
  inflight = true; busy(1);
  try {
    const res = await api("/api/decode", {method: "POST", headers: {"Content-Type": "application/json"},
                                           body: JSON.stringify({controls})});
    $("image").src = res.image;
    document.body.dataset.renders = String(Number(document.body.dataset.renders) + 1);
    say("");
  } catch (e) { say(e.message); }
  inflight = false; busy(-1);
  if (again) { again = false; render(); }
}

function setAll(newControls) {
  controls = newControls.map((c) => c.slice());
  levelViews.forEach((v) => v.show());
  schedule();
}

function showSource(res) {
  $("source-image").src = res.image;
  $("source-label").textContent = `started from ${res.label}'s posterior means`;
}

function clearSource() {
  $("source-image").removeAttribute("src");
  $("source-label").textContent = "";
}

// --- one level: a pad for 2-d, sliders otherwise --------------------------------------------------
function padView(l, box, out) {
  const span = info.span;
  const canvas = document.createElement("canvas");
  const dpr = window.devicePixelRatio || 1;
  canvas.width = canvas.height = PAD_PX * dpr;
  canvas.style.width = canvas.style.height = PAD_PX + "px";
  canvas.className = "pad";
  canvas.id = `pad-${l + 1}`;
  canvas.title = `drag: level ${l + 1}'s ${info.control}, over [-${span}, ${span}]^2`;
  box.appendChild(canvas);
  const ctx = canvas.getContext("2d");
  const toPx = (v) => (v + span) / (2 * span) * PAD_PX;
  const toValue = (px) => Math.max(-span, Math.min(span, px / PAD_PX * 2 * span - span));

  function draw() {
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, PAD_PX, PAD_PX);
    ctx.fillStyle = "#f4f6fb"; ctx.fillRect(0, 0, PAD_PX, PAD_PX);
    ctx.strokeStyle = "#ccd"; ctx.beginPath();
    ctx.moveTo(toPx(0), 0); ctx.lineTo(toPx(0), PAD_PX); ctx.moveTo(0, toPx(0)); ctx.lineTo(PAD_PX, toPx(0)); ctx.stroke();
    for (let s = 1; s <= 3; s++) {  // the prior's 1, 2 and 3 sigma circles; 3 sigma solid
      ctx.strokeStyle = s === 3 ? "#8a94b8" : "#c5cbe0"; ctx.setLineDash(s === 3 ? [] : [3, 3]);
      ctx.beginPath(); ctx.arc(toPx(0), toPx(0), toPx(s) - toPx(0), 0, 2 * Math.PI); ctx.stroke();
    }
    ctx.setLineDash([]); ctx.fillStyle = "#8a94b8"; ctx.font = "10px sans-serif";
    ctx.fillText("3\u03c3", toPx(0) + 3, toPx(-3) + 11);
    const [x, y] = controls[l];
    const inside = Math.abs(x) <= span && Math.abs(y) <= span;
    ctx.beginPath(); ctx.arc(toPx(Math.max(-span, Math.min(span, x))), toPx(-Math.max(-span, Math.min(span, y))), 6, 0, 2 * Math.PI);
    ctx.fillStyle = "#2a7ae2"; ctx.strokeStyle = "#2a7ae2";
    inside ? ctx.fill() : ctx.stroke();  // hollow: the value lies outside the pad, shown at its edge
  }

  function move(e) {
    const r = canvas.getBoundingClientRect();
    const x = toValue(e.clientX - r.left), y = -toValue(e.clientY - r.top);  // up = positive
    controls[l] = [Math.round(x * 100) / 100, Math.round(y * 100) / 100];
    clearSource(); show(); schedule();
  }
  canvas.addEventListener("pointerdown", (e) => { canvas.setPointerCapture(e.pointerId); move(e); });
  canvas.addEventListener("pointermove", (e) => { if (canvas.hasPointerCapture(e.pointerId)) move(e); });
  canvas.addEventListener("pointerup", (e) => canvas.releasePointerCapture(e.pointerId));

  function show() { draw(); out.textContent = fmt(controls[l]); }
  return {show};
}

function sliderView(l, box, out) {
  const grid = document.createElement("div");
  grid.className = "sliders";
  const inputs = controls[l].map((_, j) => {
    const label = document.createElement("label");
    label.textContent = `${j + 1}`;
    const input = document.createElement("input");
    Object.assign(input, {type: "range", min: -info.span, max: info.span, step: 0.01, value: 0});
    input.id = `slider-${l + 1}-${j + 1}`;
    input.addEventListener("input", () => {
      controls[l][j] = Number(input.value); clearSource(); out.textContent = fmt(controls[l]); schedule();
    });
    grid.append(label, input);
    return input;
  });
  box.appendChild(grid);
  function show() { inputs.forEach((inp, j) => { inp.value = controls[l][j]; }); out.textContent = fmt(controls[l]); }
  return {show};
}

function buildLevels() {
  const root = $("levels");
  const name = info.control === "eps" ? "\u03b5" : "z";
  levelViews.length = 0;
  const boxes = info.levels.map((d, l) => {
    const box = document.createElement("div");
    box.className = "level"; box.id = `level-${l + 1}`;
    const h = document.createElement("h2");
    const title = document.createElement("span");
    title.textContent = `level ${l + 1}${l === 0 ? " (bottom)" : l === info.levels.length - 1 ? " (top)" : ""}: ${name}_${l + 1}, ${d}-d`;
    const redraw = document.createElement("button");
    redraw.type = "button"; redraw.textContent = "redraw"; redraw.id = `redraw-${l + 1}`;
    redraw.title = `draw level ${l + 1} alone from the prior`;
    redraw.addEventListener("click", async () => {
      try {
        const res = await api(`/api/prior?seed=${Math.floor(Math.random() * 2147483647)}`);
        controls[l] = res.controls[l]; clearSource(); levelViews[l].show(); schedule();
      } catch (e) { say(e.message); }
    });
    h.append(title, redraw);
    const out = document.createElement("output");
    out.id = `values-${l + 1}`;
    box.append(h);
    levelViews[l] = d === 2 ? padView(l, box, out) : sliderView(l, box, out);
    box.append(out);
    return box;
  });
  root.replaceChildren(...boxes.reverse());  // top level first, as the ladder reads
}

// --- starting points -----------------------------------------------------------------------------
async function fromUpload(file) {
  if (file.size > info.max_upload_bytes) { say(`${file.name} is over ${info.max_upload_bytes >> 20} MiB`); return; }
  try {
    const res = await api("/api/encode", {method: "POST", headers: {"Content-Type": "application/octet-stream"},
                                          body: await file.arrayBuffer()});
    setAll(res.controls); showSource({...res, label: file.name});
  } catch (e) { say(e.message); }
}

async function main() {
  try { info = await api("/api/info"); } catch (e) { say(e.message); return; }
  $("model").textContent = `${info.name}: ${info.levels.length}-level ${info.model} on ${info.dataset}, ` +
    `controls ${info.control === "eps" ? "\u03b5_l (ancestral noise)" : "z_l"}`;
  controls = info.levels.map((d) => new Array(d).fill(0));
  buildLevels();
  $("reset").addEventListener("click", () => { clearSource(); setAll(info.levels.map((d) => new Array(d).fill(0))); });
  $("prior").addEventListener("click", async () => {
    try { const res = await api(`/api/prior?seed=${Math.floor(Math.random() * 2147483647)}`); clearSource(); setAll(res.controls); }
    catch (e) { say(e.message); }
  });
  const test = $("test");
  if (info.test_images > 0) {
    test.addEventListener("click", async () => {
      try { const res = await api(`/api/posterior?index=${Math.floor(Math.random() * info.test_images)}`); setAll(res.controls); showSource(res); }
      catch (e) { say(e.message); }
    });
  } else {
    test.disabled = true; test.title = `no test images: ${info.why_no_test}`;
  }
  $("file").addEventListener("change", (e) => { if (e.target.files[0]) fromUpload(e.target.files[0]); });
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault(); drop.classList.remove("over");
    if (e.dataTransfer.files[0]) fromUpload(e.dataTransfer.files[0]);
  });
  levelViews.forEach((v) => v.show());
  render();
}

main();

// The demo page: plain JavaScript against the public API (no build step, no dependencies).
"use strict";

const API = new URL("../", location.href);
const $ = (id) => document.getElementById(id);
const state = { depth: 12, curve: [], query: null, seq: 0, thumbs: new Map(), served: null };

function headers() {
  const key = $("key").value.trim();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

async function api(path, options = {}) {
  const response = await fetch(new URL(path, API), { ...options, headers: { ...headers(), ...(options.headers || {}) } });
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try {
      const body = await response.json();
      if (body.error) message = `${body.error.code}: ${body.error.message}`;
    } catch (_) { /* not JSON: keep the status line */ }
    throw new Error(message);
  }
  return response;
}

function showError(error) {
  $("error").textContent = error ? `The server said: ${error.message}` : "";
  $("error").hidden = !error;
}

async function thumbnail(id) {
  if (!state.thumbs.has(id)) {
    state.thumbs.set(id, api(`v1/items/${encodeURIComponent(id)}/input`)
      .then((r) => r.blob()).then((b) => URL.createObjectURL(b)).catch(() => ""));
  }
  return state.thumbs.get(id);
}

function tile(cls, id, caption) {
  const div = document.createElement("div");
  div.className = cls;
  const img = document.createElement("img");
  img.alt = id;
  thumbnail(id).then((src) => { if (src) img.src = src; });
  div.append(img);
  for (const line of caption) {
    const span = document.createElement("div");
    span.className = line.cls || "";
    span.textContent = line.text;
    div.append(span);
  }
  return div;
}

function label(hit) {
  const m = hit.metadata;
  return m && typeof m === "object" && "label" in m ? `label ${m.label}` : hit.id;
}

function hitTile(hit) {
  return tile("hit", hit.id, [{ text: label(hit) }, { text: hit.score.toFixed(3), cls: "score" }]);
}

// ---- the accuracy-vs-latency curve -----------------------------------------------------------
function drawCurve() {
  const svg = $("curve");
  const rows = state.curve.filter((r) => r.acc !== null);
  if (!rows.length) { svg.innerHTML = '<text x="20" y="110">no accuracy table in this bundle</text>'; return; }
  const W = 360, H = 220, L = 44, R = 12, T = 12, B = 34;
  const xmax = Math.max(...rows.map((r) => r.predicted_ms_batch1)) * 1.1 || 1;
  const ys = rows.map((r) => r.acc);
  const ymin = Math.min(...ys) - 0.02, ymax = Math.max(...ys) + 0.02;
  const x = (v) => L + (W - L - R) * v / xmax;
  const y = (v) => T + (H - T - B) * (1 - (v - ymin) / (ymax - ymin || 1));
  const parts = [
    `<line x1="${L}" y1="${H - B}" x2="${W - R}" y2="${H - B}" stroke="#aab"/>`,
    `<line x1="${L}" y1="${T}" x2="${L}" y2="${H - B}" stroke="#aab"/>`,
    `<text x="${(L + W - R) / 2}" y="${H - 6}" text-anchor="middle" font-size="11" fill="#667">predicted ms (batch 1)</text>`,
    `<text x="12" y="${(T + H - B) / 2}" font-size="11" fill="#667" transform="rotate(-90 12 ${(T + H - B) / 2})" text-anchor="middle">k-NN top-1</text>`,
    `<text x="${L - 4}" y="${y(ymax - 0.02) + 4}" text-anchor="end" font-size="10" fill="#667">${(ymax - 0.02).toFixed(2)}</text>`,
    `<text x="${L - 4}" y="${y(ymin + 0.02) + 4}" text-anchor="end" font-size="10" fill="#667">${(ymin + 0.02).toFixed(2)}</text>`,
    `<text x="${W - R}" y="${H - B + 14}" text-anchor="end" font-size="10" fill="#667">${xmax.toFixed(1)}</text>`,
  ];
  if (!$("fixed").checked) {
    const b = Number($("budget").value);
    if (b <= xmax) parts.push(`<line x1="${x(b)}" y1="${T}" x2="${x(b)}" y2="${H - B}" stroke="#2764c5" stroke-dasharray="4 3"/>`);
  }
  parts.push(`<polyline fill="none" stroke="#2764c5" stroke-width="1.5" points="${rows.map((r) => `${x(r.predicted_ms_batch1)},${y(r.acc)}`).join(" ")}"/>`);
  for (const r of rows) {
    parts.push(`<circle cx="${x(r.predicted_ms_batch1)}" cy="${y(r.acc)}" r="3" fill="#2764c5"><title>depth ${r.exit_depth}: ${r.acc.toFixed(3)} at ${r.predicted_ms_batch1.toFixed(2)} ms</title></circle>`);
  }
  const cur = rows.find((r) => r.exit_depth === state.served);
  if (cur) {
    parts.push(`<circle id="curve-mark" cx="${x(cur.predicted_ms_batch1)}" cy="${y(cur.acc)}" r="8" fill="none" stroke="#b3261e" stroke-width="2.5"/>`);
    parts.push(`<text x="${x(cur.predicted_ms_batch1)}" y="${y(cur.acc) - 12}" text-anchor="middle" font-size="11" fill="#b3261e">depth ${cur.exit_depth}</text>`);
  }
  svg.innerHTML = parts.join("");
}

// ---- queries ---------------------------------------------------------------------------------
async function search(fields) {
  const form = new FormData();
  form.append("image", state.query, "query.png");
  for (const [k, v] of Object.entries(fields)) form.append(k, String(v));
  return (await api("v1/search", { method: "POST", body: form })).json();
}

async function run() {
  if (!state.query) return;
  const seq = ++state.seq;
  const fields = $("fixed").checked ? { exit_depth: $("depth-pick").value } : { budget_ms: $("budget").value };
  try {
    const body = await search({ ...fields, k: 10 });
    if (seq !== state.seq) return;  // a newer query is on its way
    showError(null);
    const t = body.timing;
    state.served = body.exit_depth;
    $("depth").textContent = `${body.exit_depth} / ${state.depth}`;
    $("predicted").textContent = t.predicted_ms === null ? "–" : `${t.predicted_ms.toFixed(2)} ms`;
    $("elapsed").textContent = `${t.elapsed_ms.toFixed(2)} ms`;
    $("met").textContent = t.budget_met === null ? "no budget" : (t.budget_met ? "yes" : "no");
    $("neighbours").replaceChildren(...body.results.map(hitTile));
    drawCurve();
    compare(seq);
  } catch (error) {
    if (seq === state.seq) showError(error);
  }
}

async function compare(seq) {
  const depths = [...new Set([1, Math.ceil(state.depth / 2), state.depth])];
  try {
    const bodies = await Promise.all(depths.map((d) => search({ exit_depth: d, k: 5 })));
    if (seq !== state.seq) return;
    $("compare").replaceChildren(...bodies.map((body, i) => {
      const col = document.createElement("div");
      col.className = "col";
      const row = state.curve.find((r) => r.exit_depth === depths[i]);
      const h = document.createElement("h3");
      h.textContent = `depth ${depths[i]}` + (row && row.acc !== null ? ` · k-NN ${row.acc.toFixed(3)} · ${row.predicted_ms_batch1.toFixed(2)} ms` : "");
      const grid = document.createElement("div");
      grid.className = "grid";
      grid.replaceChildren(...body.results.map(hitTile));
      col.append(h, grid);
      return col;
    }));
  } catch (error) {
    if (seq === state.seq) showError(error);
  }
}

function setQuery(blob) {
  state.query = blob;
  $("query-img").src = URL.createObjectURL(blob);
  $("query-empty").hidden = true;
  run();
}

async function loadModel() {
  const model = await (await api("v1/model")).json();
  state.depth = model.manifest.model.depth;
  // accuracy of each depth's queries against this gallery (bridged into the gallery depth's
  // space); bundles report it as knn_bridged, older tables only the same-depth knn_top1
  state.curve = model.curve.map((r) => ({ ...r, acc: r.knn_bridged ?? r.knn_top1 }));
  $("depth-pick").max = state.depth;
  $("depth-pick").value = state.depth;
  $("depth-pick-value").textContent = state.depth;
  $("model").textContent = `model ${model.model.slice(0, 12)} · ${state.depth} exit depths · ${model.items} items · ${model.device}`;
  drawCurve();
}

async function loadGallery() {
  // Up to 48 items spread over the first thousand (galleries are often added label by label).
  const page = await (await api("v1/items?limit=1000")).json();
  const step = Math.max(1, page.items.length / 48);
  const shown = Array.from({ length: Math.min(48, page.items.length) }, (_, k) => page.items[Math.floor(k * step)]);
  $("gallery").replaceChildren(...shown.map((item) => {
    const div = tile("thumb", item.id, []);
    div.title = `${item.id} (${label(item)})`;
    div.addEventListener("click", async () => {
      try {
        setQuery(await (await api(`v1/items/${encodeURIComponent(item.id)}/input`)).blob());
      } catch (error) { showError(error); }
    });
    return div;
  }));
  if (!shown.length) {
    $("gallery").textContent = "No items yet: add images with POST /v1/items (or `make run`'s gallery), then reload this page. Uploads still show the served depth and timing.";
  }
  const first = shown[0];
  if (first && !state.query) {
    try { setQuery(await (await api(`v1/items/${encodeURIComponent(first.id)}/input`)).blob()); } catch (_) { /* no kept input */ }
  }
}

async function start() {
  showError(null);
  try {
    await loadModel();
    await loadGallery();
  } catch (error) {
    showError(error);
  }
}

let timer = 0;
function soon() { clearTimeout(timer); timer = setTimeout(run, 120); }

$("budget").addEventListener("input", () => { $("budget-value").textContent = `${$("budget").value} ms`; drawCurve(); soon(); });
$("depth-pick").addEventListener("input", () => { $("depth-pick-value").textContent = $("depth-pick").value; soon(); });
$("fixed").addEventListener("change", () => {
  $("budget-row").hidden = $("fixed").checked;
  $("depth-row").hidden = !$("fixed").checked;
  drawCurve();
  run();
});
$("upload").addEventListener("change", () => { const f = $("upload").files[0]; if (f) setQuery(f); });
$("key").value = sessionStorage.getItem("sdssl-read-key") || "";
$("key").addEventListener("change", () => { sessionStorage.setItem("sdssl-read-key", $("key").value); state.thumbs.clear(); start(); });
start();

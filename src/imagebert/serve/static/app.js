// The search page: no framework, no outside resource. Talks to the JSON API of the same server.
"use strict";
const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";

function showError(msg) {
  const e = $("error");
  e.textContent = msg;
  e.hidden = !msg;
}

function fmt(x) { return Number(x).toFixed(3); }

// An image with its regions drawn over it (boxes are in the image's own pixels; the SVG viewBox maps them).
function picture(src, width, height, boxes) {
  const pic = document.createElement("div");
  pic.className = "pic";
  pic.style.aspectRatio = `${width} / ${height}`;
  if (src) {
    const img = document.createElement("img");
    img.src = src;
    img.alt = "";
    pic.appendChild(img);
  }
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("preserveAspectRatio", "none");
  (boxes || []).forEach((b) => {
    const r = document.createElementNS(SVG, "rect");
    r.setAttribute("x", b[0]); r.setAttribute("y", b[1]);
    r.setAttribute("width", Math.max(0, b[2] - b[0])); r.setAttribute("height", Math.max(0, b[3] - b[1]));
    if (b[0] <= 0 && b[1] <= 0 && b[2] >= width && b[3] >= height) r.setAttribute("class", "whole");
    svg.appendChild(r);
  });
  pic.appendChild(svg);
  return pic;
}

function latency(t, extra) {
  const parts = [`${t.total.toFixed(1)} ms total`];
  if (t.extract !== undefined) parts.push(`extract ${t.extract.toFixed(0)} ms`);
  parts.push(`query ${t.encode_query.toFixed(1)} ms`, `first stage ${t.first_stage.toFixed(1)} ms`,
             `re-rank ${t.rerank.toFixed(1)} ms`);
  $("latency").textContent = `${extra} - ${parts.join(", ")}`;
}

function renderImages(data) {
  const grid = $("results");
  grid.className = "grid";
  grid.replaceChildren();
  $("query-view").hidden = true;
  data.results.forEach((r) => {
    const card = document.createElement("div");
    card.className = "card result";
    card.dataset.imageId = r.image_id;
    card.appendChild(picture(r.image_url, r.width, r.height, r.boxes));
    const meta = document.createElement("div");
    meta.className = "meta";
    meta.innerHTML = `<span>#${r.rank} <span class="id"></span></span>` +
      `<span><span class="score">${fmt(r.score)}</span> <span class="stage ${r.stage}">${r.stage}</span></span>`;
    meta.querySelector(".id").textContent = r.image_id;
    card.appendChild(meta);
    card.title = "Click: captions that describe this image";
    card.addEventListener("click", () => searchCaptions({ image_id: r.image_id }, r));
    grid.appendChild(card);
  });
  latency(data.timings_ms, `${data.results.length} images, ${data.reranked} re-ranked`);
}

function renderCaptions(data, shown) {
  const view = $("query-view");
  view.replaceChildren();
  const card = document.createElement("div");
  card.className = "card";
  card.appendChild(picture(shown.src, data.query.width, data.query.height, data.query.boxes));
  view.appendChild(card);
  view.hidden = false;
  const list = $("results");
  list.className = "captions";
  list.replaceChildren();
  data.results.forEach((r) => {
    const row = document.createElement("div");
    row.className = "caption result";
    row.dataset.imageId = r.image_id;
    const text = document.createElement("span");
    text.textContent = `#${r.rank} ${r.caption}`;
    const score = document.createElement("span");
    score.innerHTML = `<span class="score">${fmt(r.score)}</span> <span class="stage ${r.stage}">${r.stage}</span>`;
    row.append(text, score);
    list.appendChild(row);
  });
  latency(data.timings_ms, `${data.results.length} captions, ${data.reranked} re-ranked`);
}

function params() {
  return { top_k: parseInt($("top-k").value, 10) || 10, rerank: parseInt($("rerank").value, 10) || 0 };
}

async function call(url, init) {
  showError("");
  const res = await fetch(url, init);
  const data = await res.json();
  if (!res.ok) throw new Error(`${res.status}: ${data.error}${data.field ? ` (field ${data.field})` : ""}`);
  return data;
}

async function searchImages(ev) {
  if (ev) ev.preventDefault();
  try {
    const data = await call("/search/images", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ query: $("query").value, ...params() }),
    });
    renderImages(data);
    document.body.dataset.state = "images";
  } catch (e) { showError(e.message); }
}

async function searchCaptions(body, shown) {
  try {
    const data = await call("/search/captions", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ ...body, ...params() }),
    });
    renderCaptions(data, { src: shown.image_url });
    document.body.dataset.state = "captions";
  } catch (e) { showError(e.message); }
}

async function upload(file) {
  if (!file) return;
  const form = new FormData();
  form.append("file", file);
  const p = params();
  form.append("top_k", p.top_k);
  form.append("rerank", p.rerank);
  try {
    const data = await call("/search/captions", { method: "POST", body: form });
    renderCaptions(data, { src: URL.createObjectURL(file) });
    document.body.dataset.state = "captions";
  } catch (e) { showError(e.message); }
}

$("text-form").addEventListener("submit", searchImages);
$("upload").addEventListener("change", (e) => upload(e.target.files[0]));
const drop = $("drop");
["dragenter", "dragover"].forEach((t) => drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.add("over"); }));
["dragleave", "drop"].forEach((t) => drop.addEventListener(t, () => drop.classList.remove("over")));
drop.addEventListener("drop", (e) => { e.preventDefault(); upload(e.dataTransfer.files[0]); });
$("show-boxes").addEventListener("change", (e) => document.body.classList.toggle("hide-boxes", !e.target.checked));

fetch("/health").then((r) => r.json()).then((h) => {
  $("status").textContent = `${h.images} images, ${h.captions} captions - ${h.backend} first stage, ` +
    `${h.device} ${h.precision}${h.uploads ? "" : " - uploads off"}`;
  if (!h.uploads) $("drop").hidden = true;
}).catch(() => { $("status").textContent = "server unreachable"; });

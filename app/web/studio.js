// Atelier studio: a thin client of the public HTTP API (no build step, no dependencies).
"use strict";

const $ = (id) => document.getElementById(id);
const errorBox = $("error");

function showError(message) {
  errorBox.textContent = message;
  errorBox.hidden = false;
}

function clearError() {
  errorBox.hidden = true;
  errorBox.textContent = "";
}

// Turn a failed response (RFC 9457 problem+json, or anything else) into a sentence.
async function describeFailure(response) {
  let text = `${response.status} ${response.statusText}`;
  try {
    const problem = await response.json();
    text = `${problem.title || text}${problem.detail ? ": " + problem.detail : ""}`;
  } catch (_) { /* not JSON: keep the status line */ }
  const retry = response.headers.get("Retry-After");
  if (retry) text += ` (try again in ${retry} s)`;
  return text;
}

async function api(path, options = {}) {
  let response;
  try {
    response = await fetch(path, options);
  } catch (err) {
    throw new Error(`Could not reach the service (${err.message}). If you were uploading, ` +
      "the file may be over the upload limit.");
  }
  if (!response.ok) throw new Error(await describeFailure(response));
  return response;
}

// ---- Generate ------------------------------------------------------------------------

async function loadModels() {
  const select = $("gen-model");
  try {
    const { models } = await (await api("/models")).json();
    for (const model of models.filter((m) => m.kind === "gan")) {
      const option = new Option(`${model.title}${model.status === "available" ? "" : " (unavailable)"}`, model.name);
      option.disabled = model.status !== "available";
      option.selected = model.default;
      select.add(option);
    }
  } catch (err) {
    showError(err.message);
  }
}

$("gen-dice").addEventListener("click", () => {
  $("gen-seed").value = Math.floor(Math.random() * 4294967296);
});

$("generate-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  clearError();
  const button = $("gen-submit");
  button.disabled = true;
  const body = { model: $("gen-model").value || null, n: Number($("gen-n").value) };
  if ($("gen-seed").value !== "") body.seed = Number($("gen-seed").value);
  if ($("gen-truncation").value !== "") body.truncation = Number($("gen-truncation").value);
  try {
    const response = await api("/generate", {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "application/json" },
      body: JSON.stringify(body),
    });
    const { images } = await response.json();
    showGallery(images);
  } catch (err) {
    showError(err.message);
  } finally {
    button.disabled = false;
  }
});

function showGallery(images) {
  const gallery = $("gallery");
  gallery.replaceChildren();
  for (const { seed, data_url: url } of images) {
    const item = document.createElement("li");
    const link = document.createElement("a");
    link.href = url;
    link.download = `face-${seed}.png`;
    link.title = `Download seed ${seed}`;
    const img = document.createElement("img");
    img.src = url;
    img.alt = `Generated face, seed ${seed}`;
    link.append(img);
    const caption = document.createElement("span");
    caption.textContent = `seed ${seed}`;
    caption.className = "seed";
    const actions = document.createElement("div");
    actions.className = "actions";
    const use = document.createElement("button");
    use.type = "button";
    use.textContent = "Use as content";
    use.addEventListener("click", async () => {
      const blob = await (await fetch(url)).blob();
      setContent(new File([blob], `face-${seed}.png`, { type: blob.type }));
      $("stylize").scrollIntoView({ behavior: "smooth" });
    });
    actions.append(use);
    item.append(link, caption, actions);
    gallery.append(item);
  }
}

// ---- Stylize -------------------------------------------------------------------------

let contentFile = null;
let styleFiles = []; // [{file, weight}]
let currentJob = null;
let events = null;

function setContent(file) {
  contentFile = file;
  const preview = $("content-preview");
  preview.src = URL.createObjectURL(file);
  preview.hidden = false;
}

function addStyles(files) {
  for (const file of files) styleFiles.push({ file, weight: 1 });
  renderStyles();
}

function renderStyles() {
  const list = $("style-list");
  list.replaceChildren();
  styleFiles.forEach((entry, index) => {
    const item = document.createElement("li");
    const img = document.createElement("img");
    img.src = URL.createObjectURL(entry.file);
    img.alt = `Style ${index + 1}: ${entry.file.name}`;
    const label = document.createElement("label");
    label.textContent = `Blend weight of ${entry.file.name}`;
    const slider = document.createElement("input");
    slider.type = "range";
    slider.min = "0";
    slider.max = "1";
    slider.step = "0.05";
    slider.value = String(entry.weight);
    slider.addEventListener("input", () => { entry.weight = Number(slider.value); });
    label.append(slider);
    const remove = document.createElement("button");
    remove.type = "button";
    remove.textContent = "Remove";
    remove.setAttribute("aria-label", `Remove style ${entry.file.name}`);
    remove.addEventListener("click", () => { styleFiles.splice(index, 1); renderStyles(); });
    item.append(img, label, remove);
    list.append(item);
  });
}

$("content-file").addEventListener("change", (e) => { if (e.target.files[0]) setContent(e.target.files[0]); });
$("style-files").addEventListener("change", (e) => { addStyles(e.target.files); e.target.value = ""; });

for (const [zoneId, onFiles] of [["content-drop", (f) => setContent(f[0])], ["style-drop", addStyles]]) {
  const zone = $(zoneId);
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    const files = [...e.dataTransfer.files].filter((f) => f.type.startsWith("image/"));
    if (files.length) onFiles(files);
  });
}

const strength = $("st-strength");
const styleWeight = () => Math.round(10 ** Number(strength.value) * 100) / 100;
strength.addEventListener("input", () => { $("st-strength-out").textContent = styleWeight(); });

function fmtLoss(value) { return value == null ? "-" : Number(value).toExponential(2); }

function showProgress(data) {
  $("st-progress").value = data.fraction || 0;
  const losses = data.losses || {};
  const eta = data.eta_seconds == null ? "" : `, about ${Math.ceil(data.eta_seconds)} s left`;
  $("st-status").textContent = `${data.status}: step ${data.step} of ${data.steps}${eta}. ` +
    `Losses: content ${fmtLoss(losses.content)}, style ${fmtLoss(losses.style)}, ` +
    `total ${fmtLoss(losses.total)}`;
}

function finish() {
  if (events) events.close();
  events = null;
  $("st-start").disabled = false;
  $("st-cancel").disabled = true;
}

$("stylize-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  clearError();
  if (!contentFile) return showError("Pick a content image first.");
  if (!styleFiles.length) return showError("Add at least one style image.");
  const form = new FormData();
  form.append("content", contentFile);
  for (const { file } of styleFiles) form.append("style", file);
  if (styleFiles.length > 1) form.append("style_blend", styleFiles.map((s) => s.weight).join(","));
  form.append("size", $("st-size").value);
  form.append("steps", $("st-steps").value);
  form.append("style_weight", String(styleWeight()));
  form.append("preserve_color", $("st-color").value);
  form.append("optimizer", $("st-optimizer").value);
  form.append("preview_every", String(Math.max(1, Math.round(Number($("st-steps").value) / 10))));
  $("st-start").disabled = true;
  $("st-result").hidden = true;
  $("st-download").hidden = true;
  $("st-preview").hidden = true;
  try {
    const response = await api("/stylize", { method: "POST", body: form, headers: { Prefer: "respond-async" } });
    currentJob = await response.json();
  } catch (err) {
    $("st-start").disabled = false;
    return showError(err.message);
  }
  $("job").hidden = false;
  $("st-cancel").disabled = false;
  showProgress(currentJob);
  follow(currentJob.id);
});

function follow(jobId) {
  events = new EventSource(`/jobs/${jobId}/events`);
  events.addEventListener("progress", (e) => showProgress(JSON.parse(e.data)));
  events.addEventListener("preview", (e) => {
    const preview = $("st-preview");
    preview.src = JSON.parse(e.data).data_url;
    preview.hidden = false;
  });
  events.addEventListener("succeeded", (e) => {
    const data = JSON.parse(e.data);
    showProgress(data);
    const result = $("st-result");
    result.src = `/jobs/${jobId}/result`;
    result.hidden = false;
    const link = $("st-download");
    link.href = result.src;
    link.hidden = false;
    $("st-status").textContent = `Done in ${Number(data.seconds).toFixed(1)} s. ` +
      $("st-status").textContent;
    finish();
  });
  events.addEventListener("failed", (e) => {
    const data = JSON.parse(e.data);
    showError(`The job failed: ${data.error ? data.error.detail : "unknown error"}`);
    finish();
  });
  events.addEventListener("canceled", () => {
    $("st-status").textContent = "Canceled.";
    finish();
  });
  // EventSource reconnects by itself (sending Last-Event-ID); only give up when closed.
  events.onerror = () => { if (events && events.readyState === EventSource.CLOSED) finish(); };
}

$("st-cancel").addEventListener("click", async () => {
  if (!currentJob) return;
  $("st-cancel").disabled = true;
  try {
    await api(`/jobs/${currentJob.id}`, { method: "DELETE" });
  } catch (err) {
    showError(err.message);
  }
});

loadModels();

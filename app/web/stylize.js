// Atelier studio: the style-transfer panel (inputs | result), its jobs and their live events.
"use strict";

import {
  $, app, el, api, ApiError, fieldSentence, showError, clearError, clearErrors, setStatus,
  clearStatus, announce, formatDuration, formatBytes, formatNumber, ordinal, stem, shellQuote,
  curlLines, copyText, clipboardImage, imagesFromTransfer, imageSize, thumbnail, extensionOf,
  auth, apiKey, keyMismatch, curlAuthLine, CURL_KEY_NOTE,
} from "./lib.js";
import { followEvents } from "./sse.js";
import * as store from "./store.js";

const LIVE = new Set(["queued", "running"]);
const RESTARTING = "The server is restarting: the job runs again when it is back. This page reconnects by itself.";
const FORM_OVERHEAD = 4096; // multipart framing and the option fields, in bytes

const S = {
  content: null, // {blob, name, url, size, exampleId, title}
  styles: [], // [{blob, name, url, weight, exampleId, title}]
  job: null, // {id, entryId, status, steps, before, final}
  events: null, // the job's event stream: {close()}
  queueTimer: null,
  queueText: "",
  result: null, // {url, blob, mediaType, width, height, name}
  zoom: "fit",
  split: 50,
};
let config = null;
let strengths = [];

const form = () => $("st-form");
const cfg = () => config.stylize;

// ---- set-up ----------------------------------------------------------------------------

export function init(appConfig) {
  config = appConfig;
  strengths = cfg().strengths;
  renderExamples();
  renderPresets();
  setupStrength();
  $("st-size").max = config.limits.max_size;
  $("st-steps").max = config.limits.max_steps;
  $("st-content-weight").placeholder = `${cfg().defaults.content_weight} (model default)`;
  $("st-tv-weight").placeholder = `${cfg().defaults.tv_weight} (model default)`;
  selectPreset(cfg().default_preset);
  wire();
  updateEstimate();
  if (!cfg().available) {
    showError("st-action-error", `Style transfer is unavailable on this server: ${cfg().message}`, null, { scroll: false });
    $("st-start").disabled = true;
  }
}

/** New measurements (after a job): refresh the time estimates. */
export function updateConfig(appConfig) {
  config = appConfig;
  const checked = form().querySelector("input[name=preset]:checked")?.value;
  renderPresets();
  const radio = $(`preset-${checked}`);
  if (radio) radio.checked = true;
  updateEstimate();
}

function exampleUrl(file) { return `/studio/examples/${file}`; }
function thumbUrl(file) { return `/studio/examples/${file.replace(/\.jpg$/, "-thumb.jpg")}`; }

function renderExamples() {
  const { content, style } = config.examples;
  $("content-examples").replaceChildren(...content.map((ex) => el("button", {
    type: "button", class: "example", "aria-pressed": "false", dataset: { example: ex.id },
    "aria-label": `Use example photo: ${ex.title}`, title: `${ex.title}. ${ex.credit} (${ex.licence})`,
    onclick: () => useExampleContent(ex),
  }, el("img", { src: thumbUrl(ex.file), alt: "", loading: "lazy" }), el("span", { text: ex.short || ex.title }))));
  $("style-presets").replaceChildren(...style.map((ex) => el("button", {
    type: "button", class: "example", "aria-pressed": "false", dataset: { example: ex.id },
    "aria-label": `Style: ${ex.title}`, title: `${ex.title}. ${ex.credit} (${ex.licence})`,
    onclick: () => toggleExampleStyle(ex),
  }, el("img", { src: thumbUrl(ex.file), alt: "", loading: "lazy" }), el("span", { text: ex.short || ex.title }))));
}

async function fetchExample(ex) {
  const response = await api(exampleUrl(ex.file));
  return response.blob();
}

async function useExampleContent(ex) {
  try {
    await setContent(await fetchExample(ex), ex.file, { exampleId: ex.id, title: ex.title });
  } catch (err) {
    showError("content-error", err.message, $("content-pick"));
  }
}

async function toggleExampleStyle(ex) {
  const index = S.styles.findIndex((s) => s.exampleId === ex.id);
  if (index >= 0) {
    S.styles.splice(index, 1);
    renderStyles();
    inputsChanged(["style-error"]);
    return;
  }
  try {
    await addStyles([await fetchExample(ex)], [ex.file], { exampleId: ex.id, title: ex.title });
  } catch (err) {
    showError("style-error", err.message, $("style-pick"));
  }
}

function wire() {
  const f = form();
  f.addEventListener("submit", (e) => { e.preventDefault(); start(); });
  f.addEventListener("input", (e) => {
    const t = e.target;
    if (t.name === "preset" || t.type === "file") return;
    inputsChanged([t.id.startsWith("blend-") ? "style-error" : t.id === "st-strength" ? "st-strength-error" : `${t.id}-error`]);
    if (t.id === "st-optimizer") updateEstimate();
  });
  f.addEventListener("change", (e) => { if (e.target.name === "preset") applyPreset(e.target.value); });
  $("st-size").addEventListener("input", matchPreset);
  $("st-steps").addEventListener("input", matchPreset);
  $("st-optimizer").addEventListener("change", updateEstimate);
  $("content-pick").addEventListener("click", () => $("content-file").click());
  $("style-pick").addEventListener("click", () => $("style-files").click());
  $("content-file").addEventListener("change", (e) => {
    const file = e.target.files[0];
    e.target.value = "";
    if (file) setContent(file, file.name);
  });
  $("style-files").addEventListener("change", (e) => {
    const files = [...e.target.files];
    e.target.value = "";
    if (files.length) addStyles(files, files.map((f) => f.name));
  });
  $("content-paste").addEventListener("click", () => pasteInto("content"));
  $("style-paste").addEventListener("click", () => pasteInto("style"));
  for (const [zone, onFiles] of [["content-drop", (files) => setContent(files[0], files[0].name)],
    ["style-drop", (files) => addStyles(files, files.map((f) => f.name))]]) {
    const node = $(zone);
    node.addEventListener("dragover", (e) => { e.preventDefault(); node.classList.add("over"); });
    node.addEventListener("dragleave", () => node.classList.remove("over"));
    node.addEventListener("drop", (e) => {
      e.preventDefault();
      node.classList.remove("over");
      const files = imagesFromTransfer(e.dataTransfer);
      if (files.length) onFiles(files);
    });
  }
  $("st-cancel").addEventListener("click", cancel);
  $("st-curl").addEventListener("click", copyCurl);
  $("st-compare").addEventListener("input", () => setSplit(Number($("st-compare").value)));
  for (const button of document.querySelectorAll("#st-tools [data-zoom]")) {
    button.addEventListener("click", () => setZoom(button.dataset.zoom));
  }
  $("st-reuse").addEventListener("click", () => {
    if (S.result) setContent(S.result.blob, S.result.name, { title: "Previous result" });
    $("content-field").scrollIntoView({ block: "center", behavior: "instant" });
  });
  dragToCompare();
}

/** Paste (Ctrl+V) anywhere on the panel: into the styles when focus is there, else content. */
export function onPaste(event) {
  const files = imagesFromTransfer(event.clipboardData);
  if (!files.length) return;
  event.preventDefault();
  const name = (file, i) => (file.name && file.name !== "image.png" ? file.name : `pasted-${i + 1}.${extensionOf(file.type)}`);
  if ($("style-field").contains(document.activeElement)) addStyles(files, files.map(name));
  else setContent(files[0], name(files[0], 0), { title: "Pasted image" });
}

async function pasteInto(target) {
  const slot = target === "content" ? "content-error" : "style-error";
  const control = $(target === "content" ? "content-paste" : "style-paste");
  clearError(slot);
  try {
    const blob = await clipboardImage();
    const name = `pasted.${extensionOf(blob.type)}`;
    if (target === "content") await setContent(blob, name, { title: "Pasted image" });
    else await addStyles([blob], [name], { title: "Pasted image" });
  } catch (err) {
    showError(slot, err.message, control);
  }
}

// ---- inputs ----------------------------------------------------------------------------

/** Something the next job would use changed: the errors about it (`slots`) and the statuses
 *  of the last action no longer hold. A running job's progress still does. */
function inputsChanged(slots = []) {
  for (const slot of slots) clearError(slot);
  clearError("st-action-error");
  clearStatus("st-curl-status");
  if (!jobActive()) clearStatus("st-action-status");
  markPressed();
}

function checkUpload(blob, name, slot, control) {
  if (!blob.type.startsWith("image/") && blob.type !== "") {
    showError(slot, `${name} is not an image (its type is ${blob.type}). Use a PNG, JPEG, WebP, BMP, TIFF or GIF file.`, control);
    return false;
  }
  const limit = config.limits.max_upload_bytes;
  if (blob.size + FORM_OVERHEAD > limit) {
    showError(slot, `${name} is too large to upload: it is ${formatBytes(blob.size)} and this server accepts at most ${formatBytes(limit)} (${limit} bytes) per job, all images together. Use a smaller or more compressed image.`, control);
    return false;
  }
  return true;
}

const BROWSER_FORMATS = /^image\/(png|jpeg|webp|gif|bmp|avif)$/;

async function setContent(blob, name, { exampleId = null, title = null } = {}) {
  clearError("content-error");
  if (!checkUpload(blob, name, "content-error", $("content-pick"))) return;
  const size = await imageSize(blob);
  if (!size && BROWSER_FORMATS.test(blob.type)) {
    showError("content-error", `${name} could not be read as an image: the file may be damaged. Choose another file.`, $("content-pick"));
    return;
  }
  // Object URLs of earlier images stay valid: a shown result may still compare against them.
  S.content = { blob, name, url: URL.createObjectURL(blob), size, exampleId, title: title || name };
  renderContent();
  inputsChanged(["content-error"]);
  updateEstimate();
}

function renderContent() {
  const thumb = $("content-thumb");
  const c = S.content;
  if (!c) {
    thumb.hidden = true;
    $("content-name").hidden = true;
    return;
  }
  thumb.hidden = !c.size;
  thumb.src = c.url;
  thumb.alt = `Content image: ${c.title}`;
  const details = c.size ? `${c.size.width} × ${c.size.height} px` : "no preview in this browser; the server reads it";
  $("content-name").textContent = `${c.title} · ${details} · ${formatBytes(c.blob.size)}`;
  $("content-name").hidden = false;
  $("content-pick").textContent = "Change";
}

async function addStyles(blobs, names, { exampleId = null, title = null } = {}) {
  clearError("style-error");
  const room = config.limits.max_style_images - S.styles.length;
  if (room <= 0) {
    showError("style-error", `At most ${config.limits.max_style_images} styles per job: remove one first.`, $("style-pick"));
    return;
  }
  for (let i = 0; i < Math.min(room, blobs.length); i++) {
    const blob = blobs[i];
    if (!checkUpload(blob, names[i], "style-error", $("style-pick"))) return;
    if (!(await imageSize(blob)) && BROWSER_FORMATS.test(blob.type)) {
      showError("style-error", `${names[i]} could not be read as an image: the file may be damaged.`, $("style-pick"));
      return;
    }
    S.styles.push({ blob, name: names[i], url: URL.createObjectURL(blob), weight: 1, exampleId, title: title || names[i] });
  }
  renderStyles();
  inputsChanged(["style-error"]);
  if (blobs.length > room) {
    showError("style-error", `Only ${room} more style${room === 1 ? "" : "s"} fit in one job (at most ${config.limits.max_style_images}).`, $("style-pick"));
  }
}

function weightText(weight) { return weight.toFixed(2); }

function renderStyles() {
  const list = $("style-list");
  const total = S.styles.reduce((sum, s) => sum + s.weight, 0) || 1;
  list.replaceChildren(...S.styles.map((entry, index) => {
    const item = el("li", {}, el("img", { src: entry.url, alt: "" }));
    const body = el("div", { class: "field" });
    if (S.styles.length > 1) {
      const id = `blend-${index}`;
      const share = Math.round((entry.weight / total) * 100);
      const out = el("output", { id: `${id}-out`, for: id, text: weightText(entry.weight) });
      const slider = el("input", {
        id, type: "range", min: "0", max: "1", step: "0.05", value: String(entry.weight),
        "aria-valuetext": `${weightText(entry.weight)}, ${share} % of the style mix`,
        "aria-describedby": `${id}-share`,
      });
      slider.addEventListener("input", () => {
        entry.weight = Number(slider.value);
        updateBlendLabels();
      });
      body.append(
        el("div", { class: "label-row" }, el("label", { for: id, class: "name", text: `Weight of ${entry.title}` }), out),
        slider,
        el("small", { id: `${id}-share`, class: "share", text: `${share} % of the style mix` }),
      );
    } else {
      body.append(el("span", { class: "name", text: entry.title }));
    }
    const remove = el("button", {
      type: "button", class: "quiet", text: "Remove", "aria-label": `Remove style ${entry.title}`,
      onclick: () => { S.styles.splice(index, 1); renderStyles(); inputsChanged(["style-error"]); },
    });
    item.append(body, remove);
    return item;
  }));
  markPressed();
}

function updateBlendLabels() {
  const total = S.styles.reduce((sum, s) => sum + s.weight, 0) || 1;
  S.styles.forEach((entry, index) => {
    const share = Math.round((entry.weight / total) * 100);
    const slider = $(`blend-${index}`);
    if (!slider) return;
    $(`blend-${index}-out`).textContent = weightText(entry.weight);
    slider.setAttribute("aria-valuetext", `${weightText(entry.weight)}, ${share} % of the style mix`);
    $(`blend-${index}-share`).textContent = `${share} % of the style mix`;
  });
}

function markPressed() {
  for (const button of $("content-examples").children) {
    button.setAttribute("aria-pressed", String(S.content?.exampleId === button.dataset.example));
  }
  for (const button of $("style-presets").children) {
    button.setAttribute("aria-pressed", String(S.styles.some((s) => s.exampleId === button.dataset.example)));
  }
}

// ---- presets, strength, estimate -------------------------------------------------------

function estimateSeconds(size, steps, optimizer = "lbfgs") {
  const fit = cfg().rate[optimizer];
  if (!fit || !size || !steps) return null;
  return steps * (fit.overhead_s + fit.per_px_s * size * size);
}

function renderPresets() {
  const box = $("presets");
  box.replaceChildren(...cfg().presets.map((p) => {
    const input = el("input", { type: "radio", name: "preset", value: p.id, id: `preset-${p.id}` });
    const seconds = estimateSeconds(p.size, p.steps);
    return el("label", { class: "preset", for: input.id, title: `For ${p.purpose}`, dataset: { preset: p.id, seconds: seconds ?? "" } },
      input,
      el("strong", { text: p.label }),
      el("span", { text: `${p.size} px · ${p.steps} steps` }),
      seconds != null ? el("span", { class: "time", text: `≈ ${formatDuration(seconds)}` }) : null);
  }));
}

function selectPreset(id) {
  const radio = $(`preset-${id}`) || $(`preset-${cfg().presets[0].id}`);
  radio.checked = true;
  applyPreset(radio.value);
}

function applyPreset(id) {
  const preset = cfg().presets.find((p) => p.id === id);
  if (preset) {
    $("st-size").value = preset.size;
    $("st-steps").value = preset.steps;
  }
  inputsChanged(["st-size-error", "st-steps-error"]);
  updateEstimate();
}

function matchPreset() {
  const size = Number($("st-size").value);
  const steps = Number($("st-steps").value);
  const match = cfg().presets.find((p) => p.size === size && p.steps === steps);
  for (const radio of form().querySelectorAll("input[name=preset]")) radio.checked = radio.value === match?.id;
  updateEstimate();
}

function updateEstimate() {
  const size = Number($("st-size").value);
  const steps = Number($("st-steps").value);
  const rate = cfg().rate;
  const seconds = estimateSeconds(size, steps, $("st-optimizer").value);
  const line = $("st-estimate");
  const preset = cfg().presets.find((p) => p.size === size && p.steps === steps);
  const label = preset ? preset.label : "Custom size and steps";
  if (seconds == null) {
    line.replaceChildren(el("strong", { text: `${label}.` }), " Time: no style job has run on this server yet; the first one measures its speed.");
  } else {
    line.replaceChildren(el("strong", { text: `${label}: about ${formatDuration(seconds)}` }),
      ` of compute on this server, measured from its last ${rate.samples} job${rate.samples === 1 ? "" : "s"}.`);
  }
  line.dataset.seconds = seconds == null ? "" : String(seconds);
}

function strengthValue() { return strengths[Number($("st-strength").value)]; }
function strengthText(value) { return String(value); }

function setupStrength() {
  const slider = $("st-strength");
  slider.max = String(strengths.length - 1);
  const index = strengths.indexOf(cfg().defaults.style_weight);
  slider.value = String(index >= 0 ? index : Math.floor(strengths.length / 2));
  slider.addEventListener("input", showStrength);
  showStrength();
  $("st-strength-help").textContent = `Weight of the style against the content (${strengths[0]} to ${strengths[strengths.length - 1]}; this model's default is ${strengthText(cfg().defaults.style_weight)}): higher paints more strongly.`;
}

function showStrength() {
  const text = strengthText(strengthValue());
  $("st-strength-out").textContent = text;
  $("st-strength").setAttribute("aria-valuetext", text);
}

// ---- settings: read, write, as API fields ----------------------------------------------

function readSettings() {
  return {
    preset: form().querySelector("input[name=preset]:checked")?.value || null,
    size: $("st-size").value.trim(),
    steps: $("st-steps").value.trim(),
    style_weight: strengthValue(),
    preserve_color: $("st-color").value,
    optimizer: $("st-optimizer").value,
    init: $("st-init").value,
    seed: $("st-seed").value.trim(),
    format: $("st-format").value,
    content_weight: $("st-content-weight").value.trim(),
    tv_weight: $("st-tv-weight").value.trim(),
    style_scale: $("st-style-scale").value.trim() || "1",
    previews: $("st-previews").value,
  };
}

function applySettings(s) {
  if (!s) return;
  $("st-size").value = s.size;
  $("st-steps").value = s.steps;
  const index = strengths.indexOf(Number(s.style_weight));
  if (index >= 0) $("st-strength").value = String(index);
  showStrength();
  for (const [id, key] of [["st-color", "preserve_color"], ["st-optimizer", "optimizer"], ["st-init", "init"],
    ["st-seed", "seed"], ["st-format", "format"], ["st-content-weight", "content_weight"],
    ["st-tv-weight", "tv_weight"], ["st-style-scale", "style_scale"], ["st-previews", "previews"]]) {
    if (s[key] != null) $(id).value = s[key];
  }
  matchPreset();
}

/** The form fields of POST /stylize for these settings, as [name, value] strings. */
function apiFields(s, styles, { previews = true } = {}) {
  const fields = [["size", s.size], ["steps", s.steps], ["style_weight", strengthText(s.style_weight)]];
  if (styles.length > 1) fields.push(["style_blend", styles.map((st) => weightText(st.weight)).join(",")]);
  if (s.preserve_color !== "none") fields.push(["preserve_color", s.preserve_color]);
  if (s.optimizer !== "lbfgs") fields.push(["optimizer", s.optimizer]);
  if (s.init !== "content") fields.push(["init", s.init]);
  if (s.seed !== "") fields.push(["seed", s.seed]);
  if (s.format !== "png") fields.push(["format", s.format]);
  if (s.content_weight !== "") fields.push(["content_weight", s.content_weight]);
  if (s.tv_weight !== "") fields.push(["tv_weight", s.tv_weight]);
  if (Number(s.style_scale) !== 1) fields.push(["style_scale", s.style_scale]);
  const every = Number(s.previews);
  if (previews && every > 0) fields.push(["preview_every", String(Math.max(1, Math.round(Number(s.steps) / every)))]);
  return fields;
}

const FIELD_SLOTS = {
  content: ["content-error", "content-pick"],
  style: ["style-error", "style-pick"],
  style_blend: ["style-error", "style-pick"],
  size: ["st-size-error", "st-size"],
  steps: ["st-steps-error", "st-steps"],
  style_weight: ["st-strength-error", "st-strength"],
  seed: ["st-seed-error", "st-seed"],
  content_weight: ["st-content-weight-error", "st-content-weight"],
  tv_weight: ["st-tv-weight-error", "st-tv-weight"],
  style_scale: ["st-style-scale-error", "st-style-scale"],
};

function slotFor(field) {
  const name = String(field).replace(/\[\d+\]$/, "");
  return FIELD_SLOTS[name] || ["st-action-error", "st-start"];
}

/** Problems the page can see before uploading: [slot, control, message]. */
function validate(s) {
  const problems = [];
  const limits = config.limits;
  if (!S.content) problems.push([...FIELD_SLOTS.content, "Choose a content image first: pick a file, an example, or paste one."]);
  if (!S.styles.length) problems.push([...FIELD_SLOTS.style, "Add a style: pick a painting above, or upload or paste your own."]);
  else if (S.styles.length > 1 && S.styles.every((st) => st.weight === 0)) problems.push([...FIELD_SLOTS.style, "Give at least one style a weight above 0."]);
  const int = (text) => (/^\d+$/.test(text) ? Number(text) : NaN);
  const size = int(s.size);
  if (!(size >= limits.min_size && size <= limits.max_size)) problems.push([...FIELD_SLOTS.size, `Size must be a whole number of pixels from ${limits.min_size} to ${limits.max_size}.`]);
  const steps = int(s.steps);
  if (!(steps >= 1 && steps <= limits.max_steps)) problems.push([...FIELD_SLOTS.steps, `Steps must be a whole number from 1 to ${limits.max_steps}.`]);
  if (s.seed !== "" && !(int(s.seed) <= 4294967295)) problems.push([...FIELD_SLOTS.seed, "The seed must be a whole number from 0 to 4294967295, or empty."]);
  for (const key of ["content_weight", "tv_weight"]) {
    if (s[key] !== "" && !(Number(s[key]) >= 0)) problems.push([...FIELD_SLOTS[key], "A weight must be a number of 0 or more, or empty for the model's default."]);
  }
  const scale = Number(s.style_scale);
  if (!(scale > 0 && scale <= 4)) problems.push([...FIELD_SLOTS.style_scale, "The style scale must be above 0 and at most 4."]);
  if (S.content && S.styles.length) {
    const total = S.content.blob.size + S.styles.reduce((sum, st) => sum + st.blob.size, 0) + FORM_OVERHEAD;
    if (total > limits.max_upload_bytes) {
      const biggest = [["content", S.content], ...S.styles.map((st) => ["style", st])].sort((a, b) => b[1].blob.size - a[1].blob.size)[0];
      problems.push([...FIELD_SLOTS[biggest[0]], `Too large to upload: the images total ${formatBytes(total)} and this server accepts at most ${formatBytes(limits.max_upload_bytes)} (${limits.max_upload_bytes} bytes) per job. ${biggest[1].name} is the largest (${formatBytes(biggest[1].blob.size)}): use a smaller image.`]);
    }
  }
  return problems;
}

function showProblems(problems) {
  problems.forEach(([slot, control, message], i) => {
    const slotNode = $(slot);
    const text = slotNode.hidden ? message : `${slotNode.textContent} ${message}`;
    showError(slot, text, $(control), { scroll: i === 0 });
  });
}

/** An API error beside the control it names (each field), else beside the action. */
function showApiError(err, action = "st-start") {
  if (err instanceof ApiError && err.fields.length) {
    showProblems(err.fields.map((item) => [...slotFor(item.field), fieldSentence(err, item)]));
    return;
  }
  if (err instanceof ApiError && err.status === 413 && S.content) {
    const biggest = [["content", S.content], ...S.styles.map((st) => ["style", st])].sort((a, b) => b[1].blob.size - a[1].blob.size)[0];
    showProblems([[...FIELD_SLOTS[biggest[0]], `${err.message} ${biggest[1].name} is the largest image (${formatBytes(biggest[1].blob.size)}).`]]);
    return;
  }
  showError("st-action-error", err.message, $(action));
}

// ---- jobs ------------------------------------------------------------------------------

function jobActive() { return S.job && !S.job.final; }

function titleOf() {
  return `${S.content.title} × ${S.styles.map((st) => st.title).join(" + ")}`;
}

async function start() {
  if (jobActive()) return;
  clearErrors(form());
  clearStatus("st-action-status");
  clearStatus("st-curl-status");
  const settings = readSettings();
  const problems = validate(settings);
  if (problems.length) return showProblems(problems);
  const body = new FormData();
  body.append("content", S.content.blob, S.content.name);
  for (const st of S.styles) body.append("style", st.blob, st.name);
  for (const [name, value] of apiFields(settings, S.styles)) body.append(name, value);
  $("st-start").disabled = true;
  setStatus("st-action-status", "Uploading…");
  let doc;
  try {
    doc = await (await api("/stylize", { method: "POST", body, headers: { Prefer: "respond-async" } })).json();
  } catch (err) {
    $("st-start").disabled = false;
    clearStatus("st-action-status");
    return showApiError(err);
  }
  const entry = {
    id: store.newId(), kind: "stylize", createdAt: Date.now(), status: doc.status, jobId: doc.id,
    title: titleOf(), settings, keyTag: auth.tag, // the job is visible to this key only
    inputs: {
      content: { blob: S.content.blob, name: S.content.name, exampleId: S.content.exampleId, title: S.content.title },
      styles: S.styles.map((st) => ({ blob: st.blob, name: st.name, weight: st.weight, exampleId: st.exampleId, title: st.title })),
    },
  };
  try {
    await store.put(entry);
  } catch (_) { /* no IndexedDB (private mode): the job runs all the same */ }
  attach(doc, entry.id, S.content.url, S.content.size);
}

/** Follow a job in the result pane: from a new submission, or found again after a reload. */
function attach(doc, entryId, beforeUrl, beforeSize, { resumed = false, keyTag = auth.tag } = {}) {
  closeEvents();
  S.job = { id: doc.id, entryId, status: doc.status, steps: doc.steps, before: beforeUrl, final: false,
    size: doc.options?.size, name: outputName(doc), keyTag };
  S.result = null;
  S.queueText = "";
  $("st-start").disabled = true;
  $("st-cancel").disabled = false;
  viewerReset(beforeUrl, beforeSize);
  $("st-caption").textContent = "Your photo: previews of the painting appear here as the job runs.";
  $("st-caption").hidden = !beforeUrl;
  $("st-summary").hidden = true;
  $("st-losses").hidden = true;
  if (!LIVE.has(doc.status)) return; // it ended while the page was away: finished() shows it
  showProgress(doc);
  if (resumed) announce("Found your running style job again.");
  follow(doc.id);
}

function outputName(doc) {
  const ext = extensionOf({ jpeg: "image/jpeg", webp: "image/webp" }[doc.options?.format] || "image/png");
  const content = S.content ? stem(S.content.name) : "stylized";
  const style = S.styles[0] ? stem(S.styles[0].name) : "style";
  return `${content}-${style}.${ext}`;
}

/** Follow the job's events (sse.js: with the API key; it reconnects by itself, resuming
 *  after the last event seen). */
function follow(jobId) {
  const handlers = {
    progress: showProgress,
    preview: showPreview,
    succeeded: finished,
    failed: finished,
    canceled: finished,
    interrupted: () => {
      // Re-queued by a restarting server: it starts again from step 0.
      Object.assign(S.job, { status: "queued", step: 0, previewStep: 0, restarting: true });
      setState("queued", RESTARTING);
    },
  };
  let lost = false;
  const events = followEvents(`/jobs/${jobId}/events`, {
    onEvent: (event) => {
      const handle = handlers[event.type];
      if (handle && S.events === events) handle(event.data ? JSON.parse(event.data) : {});
    },
    onState: (state) => {
      if (S.events !== events || !jobActive()) return;
      if (state === "reconnecting") {
        lost = true;
        if (!S.job.restarting) setState(S.job.status, "Connection lost: reconnecting…");
      } else if (lost) {
        lost = false;
        setState(S.job.status, S.job.restarting ? RESTARTING : progressLine(S.job.lastDoc || { status: S.job.status }));
      }
    },
    onError: async (err) => {
      if (S.events !== events || !jobActive()) return;
      // No key, a refused one, or no such job (expired, or another key's): say so.
      if (err.status === 401 || err.status === 404) return finishedUnknown(err);
      // Refused otherwise: ask once where the job stands.
      try {
        finished(await (await api(`/jobs/${jobId}`)).json());
      } catch (e) {
        finishedUnknown(e);
      }
    },
  });
  S.events = events;
}

function closeEvents() {
  if (S.events) S.events.close();
  S.events = null;
  clearTimeout(S.queueTimer);
  S.queueTimer = null;
}

function setState(status, text) {
  const chip = $("st-chip");
  chip.textContent = status;
  chip.className = `chip ${status}`;
  chip.hidden = false;
  const state = $("st-state");
  state.textContent = text;
  state.hidden = !text;
}

function progressLine(doc) {
  if (doc.status === "queued") return S.queueText || "Queued: waiting for a free worker…";
  if (doc.status === "running") {
    const eta = doc.eta_seconds != null && doc.step > 0 ? `, about ${formatDuration(doc.eta_seconds)} left` : "";
    return doc.step > 0 ? `Step ${doc.step} of ${doc.steps}${eta}.` : "Starting…";
  }
  return "";
}

function showProgress(doc) {
  // Final states are finished()'s: a job that ended while the page was away arrives here too.
  if (!S.job || S.job.final || !LIVE.has(doc.status)) return;
  // A stream opened on a running job replays its earlier events first: never step back.
  if (doc.status === S.job.status && doc.step != null && doc.step < (S.job.step || 0)) return;
  if (doc.status === "queued" && S.job.status === "running") return;
  S.job.status = doc.status;
  S.job.lastDoc = doc;
  S.job.restarting = false;
  if (doc.step != null) S.job.step = doc.step;
  $("st-progress-wrap").hidden = false;
  $("st-progress").value = doc.fraction || 0;
  const line = progressLine(doc);
  setState(doc.status, line);
  const action = doc.status === "queued" ? line : `Running: ${line[0].toLowerCase()}${line.slice(1)}`;
  setStatus("st-action-status", [`${action} `, el("a", { href: "#st-output", class: "narrow-only", text: "See the progress" })]);
  if (doc.status === "queued" && !S.queueTimer) pollQueue(doc.id);
  if (doc.status !== "queued") {
    clearTimeout(S.queueTimer);
    S.queueTimer = null;
  }
  if (S.job.entryId && S.job.stored !== doc.status) {
    S.job.stored = doc.status; // one write per status change, not one per step
    store.update(S.job.entryId, { status: doc.status, steps: doc.steps }).catch(() => {});
  }
}

async function pollQueue(jobId) {
  S.queueTimer = setTimeout(() => pollQueue(jobId), 1500);
  try {
    const q = await (await api(`/studio/jobs/${jobId}/queue`)).json();
    if (!S.job || S.job.id !== jobId || S.job.status !== "queued" || q.position == null) return;
    const wait = q.wait_seconds != null ? `, starts in about ${formatDuration(q.wait_seconds)}` : "";
    S.queueText = `Queued: ${ordinal(q.position)} in line${wait}.`;
    showProgress({ status: "queued", fraction: 0, id: jobId });
  } catch (_) { /* the next poll or event will tell */ }
}

function showPreview(data) {
  if (!S.job || S.job.final || data.step < (S.job.previewStep || 0)) return;
  S.job.previewStep = data.step;
  const after = $("st-after");
  after.src = data.data_url;
  after.hidden = false;
  after.alt = `Preview of the stylized image at step ${data.step}`;
  setSplit(0, { controls: false });
  $("st-caption").textContent = `Preview at step ${data.step} of ${S.job.steps}.`;
  $("st-caption").hidden = false;
  $("st-tools").hidden = false;
  S.job.lastPreview = data.data_url;
}

async function finished(doc) {
  if (!S.job || S.job.final || doc.id !== S.job.id) return;
  S.job.final = true;
  S.job.status = doc.status;
  closeEvents();
  $("st-cancel").disabled = true;
  $("st-start").disabled = !cfg().available;
  $("st-progress").value = doc.fraction || 0;
  const entryId = S.job.entryId;
  if (doc.status === "succeeded") {
    let blob;
    try {
      blob = await (await api(`/jobs/${doc.id}/result`)).blob();
    } catch (err) {
      setState("failed", "The result could not be fetched.");
      showError("st-action-error", err.message, $("st-start"));
      return;
    }
    await showResult(blob, doc, S.job.before);
    setState("succeeded", "");
    $("st-progress-wrap").hidden = true;
    setStatus("st-action-status", [`Done: ${doc.steps} steps in ${formatDuration(doc.seconds)}. `,
      el("a", { href: "#st-output", class: "narrow-only", text: "See the result" })], "ok");
    announce(`Done: ${doc.steps} steps in ${formatDuration(doc.seconds)}. The result is shown.`);
    const thumb = await thumbnail(blob);
    if (entryId) {
      store.update(entryId, { status: "succeeded", result: blob, mediaType: blob.type, thumb, seconds: doc.seconds,
        dims: [S.result.width, S.result.height], losses: doc.losses, step: doc.step, finishedAt: Date.now() }).catch(() => {});
    }
    app.events.dispatchEvent(new Event("measured"));
    return;
  }
  $("st-progress-wrap").hidden = true;
  if (doc.status === "canceled") {
    setState("canceled", "Canceled: the worker is free again.");
    setStatus("st-action-status", "Canceled.");
  } else {
    const error = doc.error ? `${doc.error.title}: ${doc.error.detail}` : "unknown error";
    setState("failed", "The job failed.");
    clearStatus("st-action-status");
    showError("st-action-error", `The job failed. ${error.replace(/([^.])$/, "$1.")}`, $("st-start"));
  }
  if (entryId) {
    const thumb = S.job.lastPreview ? await thumbnail(S.job.lastPreview) : null;
    store.update(entryId, { status: doc.status, error: doc.error, thumb, step: doc.step, finishedAt: Date.now() }).catch(() => {});
  }
}

function finishedUnknown(err) {
  if (!S.job || S.job.final) return;
  S.job.final = true;
  closeEvents();
  $("st-cancel").disabled = true;
  $("st-start").disabled = false;
  $("st-progress-wrap").hidden = true;
  if (err instanceof ApiError && err.status === 401) {
    // The job runs on: it is followed again once the key is there (studio.js).
    setState(S.job.status, "Waiting for the API key: this page follows the job again once the key is accepted.");
    showError("st-action-error", err.message, $("st-start"), { scroll: false });
    return;
  }
  const gone = err instanceof ApiError && err.status === 404;
  const entry = { kind: "stylize", keyTag: S.job.keyTag };
  const other = gone && keyMismatch(entry);
  if (other) {
    setState(S.job.status, `This job was ${other}, and the server shows a job only to the key that made it.`);
    clearStatus("st-action-status");
    return;
  }
  setState(gone ? "expired" : "failed", gone ? "The server no longer knows this job (it expired or the server's job store was reset)." : "");
  if (!gone) showError("st-action-error", err.message, $("st-start"));
  else clearStatus("st-action-status");
  if (S.job.entryId) store.update(S.job.entryId, { status: gone ? "expired" : "failed" }).catch(() => {});
}

async function cancel() {
  if (!jobActive()) return;
  const jobId = S.job.id;
  $("st-cancel").disabled = true;
  setStatus("st-action-status", "Canceling…");
  try {
    const doc = await (await api(`/jobs/${jobId}`, { method: "DELETE" })).json();
    if (doc.status === "canceled" || doc.status === "succeeded" || doc.status === "failed") finished(doc);
  } catch (err) {
    $("st-cancel").disabled = false;
    clearStatus("st-action-status");
    showError("st-action-error", `Could not cancel: ${err.message}`, $("st-cancel"));
  }
}

/** Cancel a job of the history: this panel's own, or one followed in the background. */
export async function cancelJob(jobId) {
  if (S.job && S.job.id === jobId && !S.job.final) return cancel();
  return (await api(`/jobs/${jobId}`, { method: "DELETE" })).json();
}

// ---- the viewer: before/after compare and zoom -----------------------------------------

function viewerReset(beforeUrl, size) {
  const before = $("st-before");
  const after = $("st-after");
  after.hidden = true;
  after.removeAttribute("src");
  $("st-divider").hidden = true;
  $("st-compare-field").hidden = true;
  $("st-download").hidden = true;
  $("st-reuse").hidden = true;
  $("st-tools").hidden = true;
  if (beforeUrl) before.src = beforeUrl;
  before.hidden = !beforeUrl;
  $("st-empty").hidden = !!beforeUrl;
  $("st-scroll").hidden = !beforeUrl;
  if (size) setRatio(size.width, size.height);
  setZoom("fit");
}

function setRatio(width, height) {
  const stage = $("st-stage");
  stage.style.setProperty("--ratio", `${width} / ${height}`);
  stage.style.setProperty("--ratio-n", String(width / height));
  stage.dataset.width = width;
  stage.dataset.height = height;
}

function setZoom(zoom) {
  S.zoom = zoom;
  const stage = $("st-stage");
  stage.classList.toggle("fit", zoom === "fit");
  if (zoom === "fit") stage.style.removeProperty("--stage-w");
  else stage.style.setProperty("--stage-w", `${Number(stage.dataset.width || 256) * Number(zoom)}px`);
  for (const button of document.querySelectorAll("#st-tools [data-zoom]")) {
    button.setAttribute("aria-pressed", String(button.dataset.zoom === zoom));
  }
}

function setSplit(value, { controls = true } = {}) {
  S.split = value;
  $("st-stage").style.setProperty("--split", `${value}%`);
  $("st-divider").hidden = value <= 0 || !controls;
  const text = `${value} % photo, ${100 - value} % result`;
  $("st-compare").value = String(value);
  $("st-compare").setAttribute("aria-valuetext", text);
  $("st-compare-out").textContent = `${value} / ${100 - value}`;
}

function dragToCompare() {
  const stage = $("st-stage");
  let dragging = false;
  const move = (e) => {
    if (!dragging) return;
    const box = stage.getBoundingClientRect();
    setSplit(Math.round(Math.min(100, Math.max(0, ((e.clientX - box.left) / box.width) * 100))));
  };
  stage.addEventListener("pointerdown", (e) => {
    if ($("st-compare-field").hidden || S.zoom !== "fit") return;
    dragging = true;
    stage.setPointerCapture(e.pointerId);
    move(e);
  });
  stage.addEventListener("pointermove", move);
  stage.addEventListener("pointerup", () => { dragging = false; });
  stage.addEventListener("pointercancel", () => { dragging = false; });
}

async function showResult(blob, doc, beforeUrl) {
  const url = URL.createObjectURL(blob);
  const size = (await imageSize(blob)) || { width: doc.options?.size || 256, height: doc.options?.size || 256 };
  S.result = { url, blob, mediaType: blob.type, width: size.width, height: size.height, name: S.job?.name || outputName(doc) };
  $("st-empty").hidden = true;
  $("st-scroll").hidden = false;
  setRatio(size.width, size.height);
  const before = $("st-before");
  const after = $("st-after");
  if (beforeUrl) before.src = beforeUrl;
  before.hidden = !beforeUrl;
  after.src = url;
  after.alt = "Stylized result";
  after.hidden = false;
  $("st-tools").hidden = false;
  $("st-compare-field").hidden = !beforeUrl;
  setSplit(beforeUrl ? 50 : 0, { controls: !!beforeUrl });
  setZoom("fit");
  const link = $("st-download");
  link.href = url;
  link.download = S.result.name;
  link.hidden = false;
  $("st-reuse").hidden = false;
  $("st-caption").textContent = beforeUrl
    ? "Drag the divider, or use the Compare slider, to see the photo under the painting."
    : "The stylized result.";
  $("st-caption").hidden = false;
  const format = (doc.options?.format || "png").toUpperCase();
  const seconds = doc.seconds != null ? ` in ${formatDuration(doc.seconds)}` : "";
  $("st-summary").textContent = `${doc.step} steps${seconds} · ${size.width} × ${size.height} px · ${format} · style strength ${formatNumber(doc.options?.style_weight)}`;
  $("st-summary").hidden = false;
  const losses = doc.losses || {};
  $("st-loss-rows").replaceChildren(...[["Content", losses.content], ["Style", losses.style], ["Smoothness (TV)", losses.tv], ["Total", losses.total]]
    .map(([name, value]) => el("tr", {}, el("td", { text: name }), el("td", { text: formatNumber(value) }))));
  $("st-losses").hidden = !doc.losses;
}

// ---- copy as curl ----------------------------------------------------------------------

function curlFile(name) { return /[;,"]/.test(name) ? `"${name.replace(/"/g, "")}"` : name; }

async function copyCurl() {
  clearErrors(form());
  const settings = readSettings();
  const problems = validate(settings);
  if (problems.length) return showProblems(problems);
  const origin = location.origin;
  const downloads = [S.content, ...S.styles].filter((img) => img.exampleId)
    .map((img) => `curl -sSO ${shellQuote(`${origin}/studio/examples/${img.name}`)}`);
  const ext = extensionOf({ jpeg: "image/jpeg", webp: "image/webp" }[settings.format] || "image/png");
  const output = `${stem(S.content.name)}-${stem(S.styles[0].name)}.${ext}`;
  const command = curlLines([
    `curl -sS --fail-with-body -X POST ${shellQuote(`${origin}/stylize`)}`,
    curlAuthLine(),
    `-F ${shellQuote(`content=@${curlFile(S.content.name)}`)}`,
    ...S.styles.map((st) => `-F ${shellQuote(`style=@${curlFile(st.name)}`)}`),
    ...apiFields(settings, S.styles, { previews: false }).map(([k, v]) => `-F ${shellQuote(`${k}=${v}`)}`),
    `-o ${shellQuote(output)}`,
  ].filter(Boolean));
  const text = [...downloads, command].join("\n");
  const copied = await copyText(text);
  const own = [S.content, ...S.styles].filter((img) => !img.exampleId).map((img) => img.name);
  const note = (own.length ? ` It reads ${own.join(", ")} from the current folder.` : "") + (curlAuthLine() ? CURL_KEY_NOTE : "");
  setStatus("st-curl-status", [
    copied ? `Copied the curl command for these settings.${note}` : "Your browser did not allow copying: select the command below.",
    el("details", { open: !copied }, el("summary", { text: "Show the command" }), el("pre", { class: "command", text })),
  ], copied ? "ok" : "");
}

// ---- history: open, re-run, reattach ---------------------------------------------------

async function restoreInputs(entry) {
  const { content, styles } = entry.inputs;
  S.content = { blob: content.blob, name: content.name, url: URL.createObjectURL(content.blob),
    size: await imageSize(content.blob), exampleId: content.exampleId, title: content.title || content.name };
  S.styles = styles.map((st) => ({ blob: st.blob, name: st.name, url: URL.createObjectURL(st.blob),
    weight: st.weight, exampleId: st.exampleId, title: st.title || st.name }));
  renderContent();
  renderStyles();
  applySettings(entry.settings);
  clearErrors(form());
  clearStatus("st-curl-status");
  if (!jobActive()) clearStatus("st-action-status");
}

/** Show a finished entry of the history in the panel (inputs and result). */
export async function open(entry) {
  if (jobActive()) {
    setStatus("st-action-status", "A job is running: its progress stays here. Open this entry again once it has finished.");
    return;
  }
  await restoreInputs(entry);
  S.job = null;
  $("st-progress-wrap").hidden = true;
  if (entry.result) {
    const doc = { id: entry.jobId, steps: entry.steps, step: entry.step || entry.steps, seconds: entry.seconds,
      losses: entry.losses, options: { size: Number(entry.settings.size), format: entry.settings.format, style_weight: entry.settings.style_weight } };
    await showResult(entry.result, doc, S.content.url);
    setState("succeeded", "");
  } else {
    viewerReset(null);
    $("st-caption").hidden = true;
    $("st-summary").hidden = true;
    $("st-losses").hidden = true;
    setState(entry.status, entry.status === "failed" && entry.error ? `Failed: ${entry.error.detail}` : "");
  }
}

export async function rerun(entry) {
  if (jobActive()) {
    showError("st-action-error", "A job is running: cancel it or wait for it before starting another.", $("st-cancel"));
    return;
  }
  await restoreInputs(entry);
  await start();
}

/** After a reload (or once an API key is accepted): follow the newest unfinished job of the
 *  history again; refresh the others' status in the background. Jobs another API key made
 *  are left alone: the server shows them to that key only (the history says so). */
export async function resume(entries) {
  if (auth.required && !apiKey()) return; // nothing on the server can be reached yet
  const live = entries.filter((e) => e.kind === "stylize" && LIVE.has(e.status) && !keyMismatch(e)
    && !(jobActive() && e.jobId === S.job.id));
  if (jobActive()) {
    for (const other of live) refreshEntry(other);
    return;
  }
  for (const other of live.slice(1)) refreshEntry(other);
  const entry = live[0];
  if (!entry) return;
  let doc;
  try {
    doc = await (await api(`/jobs/${entry.jobId}`)).json();
  } catch (err) {
    if (err instanceof ApiError && err.status === 404) await store.update(entry.id, { status: "expired" });
    return;
  }
  if (jobActive()) return; // a job started meanwhile
  await restoreInputs(entry);
  attach(doc, entry.id, S.content.url, S.content.size, { resumed: true, keyTag: entry.keyTag ?? null });
  if (!LIVE.has(doc.status)) finished(doc);
}

async function refreshEntry(entry) {
  if (keyMismatch(entry) || (auth.required && !apiKey())) return; // the key changed meanwhile
  try {
    const doc = await (await api(`/jobs/${entry.jobId}`)).json();
    const fields = { status: doc.status, step: doc.step };
    if (doc.status === "succeeded") {
      const blob = await (await api(`/jobs/${doc.id}/result`)).blob();
      Object.assign(fields, { result: blob, mediaType: blob.type, thumb: await thumbnail(blob), seconds: doc.seconds, losses: doc.losses });
    }
    await store.update(entry.id, fields);
    if (LIVE.has(doc.status)) setTimeout(() => refreshEntry(entry), 3000);
  } catch (err) {
    if (err instanceof ApiError && err.status === 404 && !keyMismatch(entry)) await store.update(entry.id, { status: "expired" });
  }
}

export function currentJobId() { return jobActive() ? S.job.id : null; }

/** A face from the Faces panel (or any image) as the content image. */
export function useAsContent(blob, name, title) {
  return setContent(blob, name, { title });
}

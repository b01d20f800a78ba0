// Atelier studio: the Faces panel (POST /generate) and the Latent walk panel
// (POST /generate/interpolate).
"use strict";

import {
  $, app, el, api, ApiError, fieldSentence, showError, clearError, clearErrors, setStatus, clearStatus,
  announce, formatNumber, shellQuote, curlLines, copyText, thumbnail, download, extensionOf,
  curlAuthLine, CURL_KEY_NOTE,
} from "./lib.js";
import * as store from "./store.js";
import * as stylize from "./stylize.js";

const MAX_SEED = 4294967295;
let config = null;
let dialogFace = null; // {seed, url}

const model = () => config.generate.models.find((m) => m.name === $("gen-model").value) || config.generate.models[0];

export function init(appConfig) {
  config = appConfig;
  const select = $("gen-model");
  select.replaceChildren(...config.generate.models.map((m) => {
    const option = new Option(`${m.title}${m.available ? "" : " (unavailable)"}`, m.name, m.default, m.default);
    option.disabled = !m.available;
    return option;
  }));
  $("gen-n").max = config.limits.max_images;
  applyModelDefaults();
  select.addEventListener("change", applyModelDefaults);
  $("gen-dice").addEventListener("click", () => {
    $("gen-seed").value = Math.floor(Math.random() * (MAX_SEED + 1));
    changed("gen", "gen-seed");
  });
  $("gen-form").addEventListener("submit", (e) => { e.preventDefault(); generate(); });
  $("gen-form").addEventListener("input", (e) => changed("gen", e.target.id));
  $("gen-truncation").addEventListener("input", truncationNote);
  $("gen-curl").addEventListener("click", () => copyCurl("gen"));
  $("walk-form").addEventListener("submit", (e) => { e.preventDefault(); walk(); });
  $("walk-form").addEventListener("input", (e) => changed("walk", e.target.id));
  $("walk-curl").addEventListener("click", () => copyCurl("walk"));
  $("face-close").addEventListener("click", () => $("face-dialog").close());
  $("face-stylize").addEventListener("click", () => { const f = dialogFace; $("face-dialog").close(); toStylize(f); });
  $("face-walk").addEventListener("click", () => { const f = dialogFace; $("face-dialog").close(); walkFrom(f.seed); });
  $("face-dialog").addEventListener("click", (e) => { if (e.target === $("face-dialog")) $("face-dialog").close(); });
  if (!config.generate.models.some((m) => m.available)) {
    const m = config.generate.models[0];
    showError("gen-action-error", `No face model is available on this server${m?.message ? `: ${m.message}` : "."}`, null, { scroll: false });
    $("gen-submit").disabled = true;
    $("walk-submit").disabled = true;
  }
}

/** The truncation the model's manifest recommends, and the range where it makes sense. */
function applyModelDefaults() {
  const m = model();
  if (!m) return;
  const value = m.truncation != null ? Number(m.truncation).toFixed(1) : "";
  $("gen-truncation").value = value;
  $("walk-truncation").value = value;
  const [lo, hi] = m.truncation_range || [];
  const range = lo != null ? ` Sensible range ${lo} to ${hi}.` : "";
  const note = m.truncation_note ? ` For this model: ${m.truncation_note}.` : "";
  $("gen-truncation-help").textContent = m.truncation != null
    ? `Recommended for ${m.title}: ${value}.${range}${note} Lower values give more typical, less varied faces.`
    : "Lower values give more typical, less varied faces.";
  truncationNote();
}

function truncationNote() {
  const m = model();
  const note = $("gen-truncation-note");
  const value = Number($("gen-truncation").value);
  const [lo, hi] = m?.truncation_range || [];
  if ($("gen-truncation").value === "" || lo == null || !(value > 0)) { note.hidden = true; return; }
  if (value < lo) note.textContent = `Below ${lo}, this model's faces turn into low-contrast mush.`;
  else if (value > hi) note.textContent = `Above ${hi}, truncation makes no visible difference on this model.`;
  else { note.hidden = true; return; }
  note.hidden = false;
}

/** An input changed (`id`; none: all of them): its error and the last action's statuses no
 *  longer hold. */
function changed(prefix, id = null) {
  if (id) clearError(`${id}-error`);
  else clearErrors($(`${prefix}-form`));
  clearError(`${prefix}-action-error`);
  clearStatus(`${prefix}-action-status`);
  clearStatus(`${prefix}-curl-status`);
}

// ---- requests -------------------------------------------------------------------------

const GEN_FIELDS = { n: "gen-n", seed: "gen-seed", truncation: "gen-truncation", model: "gen-model" };
const WALK_FIELDS = { seed_from: "walk-from", seed_to: "walk-to", steps: "walk-frames", frame_ms: "walk-ms", truncation: "walk-truncation", model: "gen-model" };

function intOrNull(text) { return /^\d+$/.test(text.trim()) ? Number(text) : NaN; }

function generateBody() {
  const body = { model: $("gen-model").value || null, n: intOrNull($("gen-n").value) };
  if ($("gen-seed").value.trim() !== "") body.seed = intOrNull($("gen-seed").value);
  if ($("gen-truncation").value.trim() !== "") body.truncation = Number($("gen-truncation").value);
  return body;
}

function walkBody() {
  const body = {
    model: $("gen-model").value || null,
    seed_from: intOrNull($("walk-from").value), seed_to: intOrNull($("walk-to").value),
    steps: intOrNull($("walk-frames").value), frame_ms: intOrNull($("walk-ms").value),
    format: $("walk-format").value,
  };
  if ($("walk-truncation").value.trim() !== "") body.truncation = Number($("walk-truncation").value);
  return body;
}

function validate(prefix, body) {
  const problems = [];
  const fields = prefix === "gen" ? GEN_FIELDS : WALK_FIELDS;
  const range = (key, lo, hi, what) => {
    if (body[key] !== undefined && !(body[key] >= lo && body[key] <= hi)) problems.push([fields[key], `${what} must be a whole number from ${lo} to ${hi}.`]);
  };
  if (prefix === "gen") {
    range("n", 1, config.limits.max_images, "Count");
    range("seed", 0, MAX_SEED, "The seed");
  } else {
    range("seed_from", 0, MAX_SEED, "The first seed");
    range("seed_to", 0, MAX_SEED, "The last seed");
    range("steps", 2, 64, "Frames");
    range("frame_ms", 20, 5000, "The frame duration");
  }
  if (body.truncation !== undefined && !(body.truncation > 0 && body.truncation <= 10)) {
    problems.push([fields.truncation, "Truncation must be above 0 and at most 10, or empty for none."]);
  }
  return problems;
}

function showProblems(problems) {
  problems.forEach(([controlId, message], i) => showError(`${controlId}-error`, message, $(controlId), { scroll: i === 0 }));
}

function showApiError(prefix, err) {
  const fields = prefix === "gen" ? GEN_FIELDS : WALK_FIELDS;
  if (err instanceof ApiError && err.fields.length) {
    const known = err.fields.filter((f) => fields[f.field]);
    if (known.length) return showProblems(known.map((f) => [fields[f.field], fieldSentence(err, f)]));
  }
  showError(`${prefix}-action-error`, err.message, $(prefix === "gen" ? "gen-submit" : "walk-submit"));
}

async function postJson(path, body, accept) {
  return api(path, {
    method: "POST",
    headers: { "Content-Type": "application/json", Accept: accept },
    body: JSON.stringify(body),
  });
}

// ---- faces ---------------------------------------------------------------------------

async function generate(body = generateBody()) {
  changed("gen");
  const problems = validate("gen", body);
  if (problems.length) return showProblems(problems);
  const button = $("gen-submit");
  button.disabled = true;
  setStatus("gen-action-status", "Generating…");
  const started = performance.now();
  try {
    const response = await postJson("/generate", body, "application/json");
    const { images, model: name } = await response.json();
    const seconds = (performance.now() - started) / 1000;
    showGallery(images);
    const seeds = images.length > 1 ? `seeds ${images[0].seed} to ${images[images.length - 1].seed}` : `seed ${images[0].seed}`;
    setStatus("gen-action-status", `${images.length} face${images.length === 1 ? "" : "s"} in ${seconds.toFixed(1)} s (${seeds}).`, "ok");
    announce(`${images.length} faces generated.`);
    await store.put({
      id: store.newId(), kind: "generate", createdAt: Date.now(), status: "done", model: name,
      title: `${images.length} face${images.length === 1 ? "" : "s"}, ${seeds}`,
      settings: { model: body.model, n: body.n, seed: images[0].seed, truncation: body.truncation ?? null },
      images: images.map((im) => ({ seed: im.seed, url: im.data_url })),
      thumb: images[0].data_url,
    }).catch(() => {});
  } catch (err) {
    clearStatus("gen-action-status");
    showApiError("gen", err);
  } finally {
    button.disabled = !config.generate.models.some((m) => m.available);
  }
}

function showGallery(images) {
  $("gen-empty").hidden = images.length > 0;
  $("gallery").replaceChildren(...images.map(({ seed, data_url: url, url: stored }) => {
    const src = url || stored;
    const face = { seed, url: src };
    return el("li", {},
      el("button", { type: "button", class: "face-open", "aria-label": `Open face, seed ${seed}`, onclick: () => openFace(face) },
        el("img", { src, alt: `Generated face, seed ${seed}` })),
      el("div", { class: "meta" },
        el("span", { class: "seed", text: `seed ${seed}` }),
        el("span", { class: "face-actions" },
          el("a", { class: "button", href: src, download: `face-${seed}.png`, text: "Download", "aria-label": `Download face, seed ${seed}` }),
          el("button", { type: "button", text: "Stylize", "aria-label": `Stylize face, seed ${seed}`, onclick: () => toStylize(face) }))));
  }));
}

function openFace(face) {
  dialogFace = face;
  $("face-dialog-title").textContent = `Face, seed ${face.seed}`;
  $("face-big").src = face.url;
  $("face-big").alt = `Generated face, seed ${face.seed}, enlarged`;
  $("face-download").href = face.url;
  $("face-download").download = `face-${face.seed}.png`;
  $("face-dialog").showModal();
}

async function toStylize(face) {
  const blob = await (await fetch(face.url)).blob();
  app.selectTab("stylize");
  await stylize.useAsContent(blob, `face-${face.seed}.png`, `Face, seed ${face.seed}`);
  $("content-field").scrollIntoView({ block: "center", behavior: "instant" });
}

function walkFrom(seed) {
  $("walk-from").value = seed;
  if (Number($("walk-to").value) === seed) $("walk-to").value = seed + 1;
  changed("walk");
  app.selectTab("walk");
  $("walk-from").focus();
}

// ---- latent walk -----------------------------------------------------------------------

async function walk(body = walkBody()) {
  changed("walk");
  const problems = validate("walk", body);
  if (problems.length) return showProblems(problems);
  const button = $("walk-submit");
  button.disabled = true;
  setStatus("walk-action-status", "Walking…");
  const started = performance.now();
  try {
    const response = await postJson("/generate/interpolate", body, "*/*");
    const blob = await response.blob();
    const seconds = (performance.now() - started) / 1000;
    showWalk(blob, body);
    setStatus("walk-action-status", `${body.steps} frames in ${seconds.toFixed(1)} s.`, "ok");
    announce("The latent walk is ready.");
    await store.put({
      id: store.newId(), kind: "walk", createdAt: Date.now(), status: "done",
      title: `Walk from seed ${body.seed_from} to ${body.seed_to}`, settings: body,
      result: blob, mediaType: blob.type, thumb: await thumbnail(blob, 176, true),
    }).catch(() => {});
  } catch (err) {
    clearStatus("walk-action-status");
    showApiError("walk", err);
  } finally {
    button.disabled = false;
  }
}

function showWalk(blob, body) {
  const url = URL.createObjectURL(blob);
  const image = $("walk-image");
  const animated = body.format === "webp" || body.format === "gif";
  image.src = url;
  image.className = animated ? "" : "strip";
  image.alt = animated
    ? `Animation of ${body.steps} frames from the face of seed ${body.seed_from} to that of seed ${body.seed_to}`
    : `Grid of ${body.steps} frames from the face of seed ${body.seed_from} to that of seed ${body.seed_to}`;
  $("walk-caption").textContent = animated
    ? `${body.steps} frames, ${body.frame_ms} ms each, seed ${body.seed_from} → ${body.seed_to}${body.truncation ? `, truncation ${formatNumber(body.truncation)}` : ""}.`
    : `${body.steps} frames, seed ${body.seed_from} → ${body.seed_to}, in reading order.`;
  $("walk-empty").hidden = true;
  $("walk-figure").hidden = false;
  $("walk-tools").hidden = false;
  const link = $("walk-download");
  link.href = url;
  link.download = `walk-${body.seed_from}-${body.seed_to}.${extensionOf(blob.type)}`;
}

// ---- copy as curl ----------------------------------------------------------------------

async function copyCurl(prefix) {
  changed(prefix);
  const body = prefix === "gen" ? generateBody() : walkBody();
  const problems = validate(prefix, body);
  if (problems.length) return showProblems(problems);
  const clean = Object.fromEntries(Object.entries(body).filter(([, v]) => v != null));
  const path = prefix === "gen" ? "/generate" : "/generate/interpolate";
  const output = prefix === "gen"
    ? (body.n > 1 ? "faces.png" : "face.png")
    : `walk.${body.format === "png" ? "png" : body.format}`;
  const command = curlLines([
    `curl -sS --fail-with-body -X POST ${shellQuote(location.origin + path)}`,
    curlAuthLine(),
    "-H 'Content-Type: application/json'",
    `-d ${shellQuote(JSON.stringify(clean))}`,
    `-o ${output}`,
  ].filter(Boolean));
  const copied = await copyText(command);
  setStatus(`${prefix}-curl-status`, [
    copied ? `Copied the curl command for these settings${prefix === "gen" && body.n > 1 ? " (several faces come back as one grid image)" : ""}.${curlAuthLine() ? CURL_KEY_NOTE : ""}` : "Your browser did not allow copying: select the command below.",
    el("details", { open: !copied }, el("summary", { text: "Show the command" }), el("pre", { class: "command", text: command })),
  ], copied ? "ok" : "");
}

// ---- history ---------------------------------------------------------------------------

function applyGenerate(settings) {
  if (settings.model) $("gen-model").value = settings.model;
  $("gen-n").value = settings.n;
  $("gen-seed").value = settings.seed;
  $("gen-truncation").value = settings.truncation ?? "";
  truncationNote();
  changed("gen");
}

function applyWalk(settings) {
  $("walk-from").value = settings.seed_from;
  $("walk-to").value = settings.seed_to;
  $("walk-frames").value = settings.steps;
  $("walk-ms").value = settings.frame_ms;
  $("walk-truncation").value = settings.truncation ?? "";
  $("walk-format").value = settings.format;
  changed("walk");
}

export function open(entry) {
  if (entry.kind === "generate") {
    applyGenerate(entry.settings);
    showGallery(entry.images);
  } else {
    applyWalk(entry.settings);
    showWalk(entry.result, entry.settings);
  }
}

export function rerun(entry) {
  if (entry.kind === "generate") {
    applyGenerate(entry.settings);
    return generate();
  }
  applyWalk(entry.settings);
  return walk();
}

/** All faces of a generation as one PNG grid, drawn here from the stored images. */
export async function gridOf(entry) {
  const bitmaps = await Promise.all(entry.images.map(async (im) => createImageBitmap(await (await fetch(im.url)).blob())));
  const cols = Math.ceil(Math.sqrt(bitmaps.length));
  const rows = Math.ceil(bitmaps.length / cols);
  const side = bitmaps[0].width;
  const canvas = el("canvas", { width: cols * side, height: rows * side });
  const ctx = canvas.getContext("2d");
  bitmaps.forEach((b, i) => ctx.drawImage(b, (i % cols) * side, Math.floor(i / cols) * side));
  return new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
}

export function downloadEntry(entry) {
  if (entry.kind === "walk") return download(entry.result, `walk-${entry.settings.seed_from}-${entry.settings.seed_to}.${extensionOf(entry.mediaType)}`);
  if (entry.images.length === 1) return download(entry.images[0].url, `face-${entry.images[0].seed}.png`);
  return gridOf(entry).then((blob) => download(blob, `faces-${entry.settings.seed}.png`));
}

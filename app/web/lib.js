// Atelier studio: shared helpers (DOM, API calls and their errors, messages, formatting).
"use strict";

export const $ = (id) => document.getElementById(id);

/** The page's shared state: the server's /studio/config and the tab switcher. */
export const app = { config: null, selectTab: () => {}, events: new EventTarget() };

export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value == null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key in node && !key.startsWith("aria") && key !== "role") node[key] = value;
    else node.setAttribute(key, value === true ? "" : value);
  }
  node.append(...children.filter((c) => c != null && c !== false));
  return node;
}

// ---- API calls -----------------------------------------------------------------------

/** A failed call, as a sentence; `fields` lists [{field, message}] when the server named them. */
export class ApiError extends Error {
  constructor(message, { status = 0, problem = null, retryAfter = null } = {}) {
    super(message);
    this.status = status;
    this.problem = problem;
    this.retryAfter = retryAfter;
    this.fields = problem?.errors?.filter((e) => e.field) || [];
  }
}

function sentence(text) {
  const trimmed = String(text).trim();
  if (!trimmed) return trimmed;
  const first = trimmed[0].toUpperCase() + trimmed.slice(1);
  return /[.!?)]$/.test(first) ? first : `${first}.`;
}

export async function api(path, options = {}) {
  let response;
  try {
    response = await fetch(path, options);
  } catch (err) {
    throw new ApiError(`Could not reach the service (${err.message}). Check that it is running, then try again.`);
  }
  if (response.ok) return response;
  let problem = null;
  try { problem = await response.json(); } catch (_) { /* not JSON */ }
  const retryAfter = response.headers.get("Retry-After");
  let text = problem
    ? sentence(`${problem.title || response.status}${problem.detail ? ": " + problem.detail : ""}`)
    : sentence(`${response.status} ${response.statusText}`);
  if (retryAfter) text += ` Try again in ${retryAfter} s.`;
  throw new ApiError(text, { status: response.status, problem, retryAfter });
}

/** The sentence for one field error of a problem document: "<title>: <message>." */
export function fieldSentence(error, item) {
  const title = error.problem?.title;
  const message = item.message.replace(/^Value error, /, "");
  return sentence(title && title !== "Invalid request" ? `${title}: ${message}` : message);
}

// ---- messages next to the control or action they concern ------------------------------

/** Show `message` in the error slot `slotId` beside `control`: in view, announced (the slot
 *  is role=alert), the control marked invalid and described by it. */
export function showError(slotId, message, control = null, { scroll = true } = {}) {
  const slot = $(slotId);
  slot.textContent = message;
  slot.hidden = false;
  const details = slot.closest("details");
  if (details) details.open = true;
  if (control) {
    control.setAttribute("aria-invalid", "true");
    const ids = new Set((control.getAttribute("aria-describedby") || "").split(/\s+/).filter(Boolean));
    ids.add(slotId);
    control.setAttribute("aria-describedby", [...ids].join(" "));
    slot.dataset.control = control.id;
  }
  if (scroll) {
    slot.scrollIntoView({ block: "center", inline: "nearest", behavior: "instant" });
    if (control && typeof control.focus === "function") control.focus({ preventScroll: true });
  }
}

export function clearError(slotId) {
  const slot = $(slotId);
  if (!slot || slot.hidden) return;
  slot.hidden = true;
  slot.textContent = "";
  const control = slot.dataset.control && $(slot.dataset.control);
  if (control) control.removeAttribute("aria-invalid");
  delete slot.dataset.control;
}

export function clearErrors(scope) {
  for (const slot of scope.querySelectorAll(".field-error")) clearError(slot.id);
}

/** A status line beside an action (role=status); `parts` are strings or nodes. */
export function setStatus(id, parts, kind = "") {
  const line = $(id);
  line.replaceChildren(...[].concat(parts));
  line.className = `action-status ${kind}`.trim();
  line.hidden = false;
}

export function clearStatus(id) {
  const line = $(id);
  line.hidden = true;
  line.replaceChildren();
}

export function announce(text) {
  const region = $("announcer");
  region.textContent = "";
  setTimeout(() => { region.textContent = text; }, 30);
}

// ---- formatting ----------------------------------------------------------------------

export function formatDuration(seconds) {
  if (seconds == null || !Number.isFinite(seconds)) return "";
  const s = Math.max(1, Math.round(seconds));
  if (s < 60) return `${s} s`;
  if (s < 3600) {
    const m = Math.floor(s / 60);
    const rest = s % 60;
    return m >= 10 || rest === 0 ? `${Math.round(s / 60)} min` : `${m} min ${rest} s`;
  }
  const h = Math.floor(s / 3600);
  return `${h} h ${Math.round((s % 3600) / 60)} min`;
}

export function formatBytes(n) {
  if (n < 1024) return `${n} bytes`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(n < 10240 ? 1 : 0)} KB`;
  return `${(n / 1024 / 1024).toFixed(1)} MB`;
}

/** Losses and weights: plain digits with separators, 3 significant digits. */
export function formatNumber(x) {
  if (x == null || !Number.isFinite(Number(x))) return "–";
  return Number(Number(x).toPrecision(3)).toLocaleString("en-US", { maximumFractionDigits: 3 });
}

export function ordinal(n) {
  const suffix = n % 100 >= 11 && n % 100 <= 13 ? "th" : ({ 1: "st", 2: "nd", 3: "rd" }[n % 10] || "th");
  return `${n}${suffix}`;
}

export function timeAgo(ms) {
  const s = (Date.now() - ms) / 1000;
  if (s < 60) return "just now";
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return new Date(ms).toLocaleDateString();
}

export function stem(name) {
  return String(name || "image").replace(/\.[^.]+$/, "").replace(/[^\w.-]+/g, "_").slice(0, 40) || "image";
}

// ---- shell commands and the clipboard -------------------------------------------------

export function shellQuote(text) {
  return /^[\w@%+=:,./-]+$/.test(text) ? text : `'${String(text).replace(/'/g, `'\\''`)}'`;
}

export function curlLines(lines) {
  return lines.join(" \\\n  ");
}

export async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch (_) {
    const area = el("textarea", { class: "visually-hidden", value: text });
    document.body.append(area);
    area.select();
    const done = document.execCommand("copy");
    area.remove();
    return done;
  }
}

/** The first image on the clipboard (Async Clipboard API), or an Error saying why not. */
export async function clipboardImage() {
  if (!navigator.clipboard?.read) throw new Error("This browser cannot read images from the clipboard here: press Ctrl+V (⌘V) instead.");
  let items;
  try {
    items = await navigator.clipboard.read();
  } catch (_) {
    throw new Error("The browser did not allow reading the clipboard: press Ctrl+V (⌘V) instead.");
  }
  for (const item of items) {
    const type = item.types.find((t) => t.startsWith("image/"));
    if (type) return item.getType(type);
  }
  throw new Error("There is no image on the clipboard: copy an image first.");
}

export function imagesFromTransfer(transfer) {
  if (!transfer) return [];
  const files = [...(transfer.files || [])];
  if (!files.length && transfer.items) {
    for (const item of transfer.items) if (item.kind === "file") files.push(item.getAsFile());
  }
  return files.filter((f) => f && f.type.startsWith("image/"));
}

// ---- images --------------------------------------------------------------------------

/** Width and height of an image blob, or null when the browser cannot decode it (TIFF...). */
export async function imageSize(blob) {
  try {
    const bitmap = await createImageBitmap(blob);
    const size = { width: bitmap.width, height: bitmap.height };
    bitmap.close();
    return size;
  } catch (_) {
    return null;
  }
}

/** A small JPEG data URL of an image (blob, object URL or data URL) for the history. */
export async function thumbnail(source, side = 176, pixelated = false) {
  try {
    const blob = source instanceof Blob ? source : await (await fetch(source)).blob();
    const bitmap = await createImageBitmap(blob);
    const scale = Math.min(1, side / Math.max(bitmap.width, bitmap.height));
    const up = pixelated && bitmap.width < side ? Math.floor(side / bitmap.width) : 1;
    const w = Math.max(1, Math.round(bitmap.width * scale * up));
    const h = Math.max(1, Math.round(bitmap.height * scale * up));
    const canvas = el("canvas", { width: w, height: h });
    const ctx = canvas.getContext("2d");
    ctx.imageSmoothingEnabled = !pixelated;
    ctx.drawImage(bitmap, 0, 0, w, h);
    bitmap.close();
    return canvas.toDataURL("image/jpeg", 0.82);
  } catch (_) {
    return null;
  }
}

export function download(blobOrUrl, filename) {
  const url = blobOrUrl instanceof Blob ? URL.createObjectURL(blobOrUrl) : blobOrUrl;
  const link = el("a", { href: url, download: filename });
  document.body.append(link);
  link.click();
  link.remove();
  if (blobOrUrl instanceof Blob) setTimeout(() => URL.revokeObjectURL(url), 60_000);
}

export function extensionOf(mediaType) {
  return { "image/jpeg": "jpg", "image/webp": "webp", "image/gif": "gif" }[mediaType] || "png";
}

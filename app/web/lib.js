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

// ---- errors of API calls ----------------------------------------------------------------

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

// ---- the API key, when the server asks for one ------------------------------------------
// Kept in sessionStorage (this tab, until it is closed), or in localStorage once the user
// ticks "Remember on this device"; sent only in the Authorization header of this page's own
// requests to its own server. Never put in a URL, never logged, never shown in a message.

const KEY_ITEM = "atelier-api-key";

/** `required`: this server asks for a key (from /studio/config, or learnt from a 401).
 *  `tag`: the id of the key in use (`keyTag`), null without one. */
export const auth = { required: false, tag: null };
let memoryKey = null; // when the browser allows no storage at all

function storage(kind) {
  try { return window[kind] || null; } catch (_) { return null; } // blocked: access throws
}

function readItem(kind) {
  try { return storage(kind)?.getItem(KEY_ITEM) || null; } catch (_) { return null; }
}

function removeItem(kind) {
  try { storage(kind)?.removeItem(KEY_ITEM); } catch (_) { /* nothing kept there */ }
}

/** The key this page sends: null while the server asks for none, or none is set. */
export function apiKey() {
  if (!auth.required) return null;
  return readItem("sessionStorage") || readItem("localStorage") || memoryKey;
}

/** Whether the key is kept on this device (localStorage) rather than in this tab. */
export function keyRemembered() {
  return readItem("localStorage") != null;
}

/** Keep `key`, in this tab only unless `remember`; the other storage is cleared. */
export function setApiKey(key, { remember = false } = {}) {
  removeItem("sessionStorage");
  removeItem("localStorage");
  memoryKey = null;
  try {
    storage(remember ? "localStorage" : "sessionStorage").setItem(KEY_ITEM, key);
  } catch (_) {
    memoryKey = key; // storage blocked or full: this page only
  }
  auth.tag = keyTag(key);
  app.events.dispatchEvent(new Event("key"));
}

export function forgetApiKey() {
  removeItem("sessionStorage");
  removeItem("localStorage");
  memoryKey = null;
  auth.tag = null;
  app.events.dispatchEvent(new Event("key"));
}

/** A key's id, as the server logs it (the first 12 hex digits of its SHA-256): stored with
 *  the history's jobs to know which key made them, without storing the key. */
export function keyTag(key) {
  return key ? sha256Hex(key).slice(0, 12) : null;
}

/** Why the server will not show this history entry's job to the key in use (it answers 404
 *  to any key but the one that made a job), or null when it will (or keys are off). */
export function keyMismatch(entry) {
  if (!auth.required || !auth.tag || entry.kind !== "stylize") return null;
  const tag = entry.keyTag || null;
  if (tag === auth.tag) return null;
  return tag ? "made with another API key" : "made before this server asked for an API key";
}

const ror = (x, n) => (x >>> n) | (x << (32 - n));

/** SHA-256 of a string, in hex. Here rather than crypto.subtle, which a page served over
 *  plain HTTP from another machine than this one (not a secure context) does not have. */
export function sha256Hex(text) {
  const K = [];
  const H = [];
  // The constants: fractional parts of the square and cube roots of the first primes.
  for (let n = 2; K.length < 64; n++) {
    let prime = true;
    for (let d = 2; d * d <= n; d++) if (n % d === 0) { prime = false; break; }
    if (!prime) continue;
    if (H.length < 8) H.push(((Math.sqrt(n) % 1) * 2 ** 32) | 0);
    K.push(((Math.cbrt(n) % 1) * 2 ** 32) | 0);
  }
  const bytes = new TextEncoder().encode(text);
  const padded = new Uint8Array(((bytes.length + 72) >> 6) << 6);
  padded.set(bytes);
  padded[bytes.length] = 0x80;
  const view = new DataView(padded.buffer);
  view.setUint32(padded.length - 8, Math.floor(bytes.length / 2 ** 29));
  view.setUint32(padded.length - 4, (bytes.length * 8) >>> 0);
  const w = new Int32Array(64);
  for (let offset = 0; offset < padded.length; offset += 64) {
    for (let i = 0; i < 16; i++) w[i] = view.getInt32(offset + i * 4);
    for (let i = 16; i < 64; i++) {
      const s0 = ror(w[i - 15], 7) ^ ror(w[i - 15], 18) ^ (w[i - 15] >>> 3);
      const s1 = ror(w[i - 2], 17) ^ ror(w[i - 2], 19) ^ (w[i - 2] >>> 10);
      w[i] = (w[i - 16] + s0 + w[i - 7] + s1) | 0;
    }
    let [a, b, c, d, e, f, g, h] = H;
    for (let i = 0; i < 64; i++) {
      const t1 = (h + (ror(e, 6) ^ ror(e, 11) ^ ror(e, 25)) + ((e & f) ^ (~e & g)) + K[i] + w[i]) | 0;
      const t2 = ((ror(a, 2) ^ ror(a, 13) ^ ror(a, 22)) + ((a & b) ^ (a & c) ^ (b & c))) | 0;
      [h, g, f, e, d, c, b, a] = [g, f, e, (d + t1) | 0, c, b, a, (t1 + t2) | 0];
    }
    [a, b, c, d, e, f, g, h].forEach((x, i) => { H[i] = (H[i] + x) | 0; });
  }
  return H.map((x) => (x >>> 0).toString(16).padStart(8, "0")).join("");
}

/** `headers` (any form fetch takes) plus the API key's Authorization, when one is set. */
export function authHeaders(headers = {}) {
  const merged = new Headers(headers);
  const key = apiKey();
  if (key && !merged.has("Authorization")) merged.set("Authorization", `Bearer ${key}`);
  return merged;
}

// ---- API calls -------------------------------------------------------------------------

/** Every call of the page to its server: with the API key when one is set. */
export async function api(path, options = {}) {
  const headers = authHeaders(options.headers);
  let response;
  try {
    response = await fetch(path, { ...options, headers });
  } catch (err) {
    throw new ApiError(`Could not reach the service (${err.message}). Check that it is running, then try again.`);
  }
  if (response.ok) return response;
  throw await responseError(response, headers.has("Authorization"));
}

/** The ApiError for a refused request (its problem document read). A 401 says whether the
 *  key was missing or refused (`sentKey`), and tells the page's key field (event
 *  "unauthorized"). */
export async function responseError(response, sentKey) {
  let problem = null;
  try { problem = await response.json(); } catch (_) { /* not JSON */ }
  const retryAfter = response.headers.get("Retry-After");
  let text;
  if (response.status === 401) {
    auth.required = true;
    app.events.dispatchEvent(new CustomEvent("unauthorized", { detail: { refused: sentKey } }));
    text = sentKey
      ? "The server refused the API key: check it in the API key field at the top of the page."
      : "This server needs an API key: enter it in the API key field at the top of the page.";
  } else {
    text = problem
      ? sentence(`${problem.title || response.status}${problem.detail ? ": " + problem.detail : ""}`)
      : sentence(`${response.status} ${response.statusText}`);
  }
  if (retryAfter) text += ` Try again in ${retryAfter} s.`;
  return new ApiError(text, { status: response.status, problem, retryAfter });
}

/** With API keys on, the header line a curl command needs (the key from the environment, as
 *  the CLI reads it: never the key itself on the clipboard); else null. */
export function curlAuthLine() {
  return auth.required ? `-H "Authorization: Bearer $ATELIER_API_KEY"` : null;
}

export const CURL_KEY_NOTE = " Set ATELIER_API_KEY to your API key first.";

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

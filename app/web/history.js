// Atelier studio: the History panel (this browser's jobs and generations).
"use strict";

import {
  $, app, el, setStatus, clearStatus, formatDuration, timeAgo, download, extensionOf, stem, keyMismatch,
} from "./lib.js";
import * as store from "./store.js";
import * as stylize from "./stylize.js";
import * as faces from "./faces.js";

const KIND = { stylize: "Style transfer", generate: "Faces", walk: "Latent walk" };
const TAB = { stylize: "stylize", generate: "faces", walk: "walk" };
let rendering = Promise.resolve();

export function init() {
  store.changes.addEventListener("change", () => { rendering = rendering.then(render, render); });
  // Another API key (or none): which jobs it can reach changes.
  app.events.addEventListener("key", () => { rendering = rendering.then(render, render); });
  $("history-clear").addEventListener("click", async () => {
    if (!window.confirm("Remove every entry of this browser's history? Running jobs carry on on the server.")) return;
    await store.clear();
    setStatus("history-status", "History cleared.");
  });
  rendering = render();
  return rendering;
}

function describe(entry) {
  const s = entry.settings || {};
  if (entry.kind === "stylize") {
    const parts = [`${s.size} px`, `${s.steps} steps`, `strength ${s.style_weight}`];
    if (entry.seconds != null) parts.push(`${formatDuration(entry.seconds)} of compute`);
    return parts.join(" · ");
  }
  if (entry.kind === "generate") return `${entry.model || s.model || "default model"} · truncation ${s.truncation ?? "none"}`;
  return `${s.steps} frames · ${s.frame_ms} ms · ${String(s.format).toUpperCase()}`;
}

function statusText(entry) {
  switch (entry.status) {
    case "queued": return "Queued";
    case "running": return entry.steps ? `Running (${entry.steps} steps)` : "Running";
    case "succeeded": return "Done";
    case "failed": return `Failed${entry.error ? `: ${entry.error.detail}` : ""}`;
    case "canceled": return "Canceled";
    case "expired": return "No longer on the server";
    default: return "";
  }
}

async function render() {
  let entries = [];
  try {
    entries = await store.all();
  } catch (_) {
    setStatus("history-status", "This browser does not keep a history here (IndexedDB is unavailable).");
  }
  const count = $("history-count");
  count.textContent = entries.length ? String(entries.length) : "";
  count.dataset.count = String(entries.length);
  $("history-empty").hidden = entries.length > 0;
  $("history-clear").disabled = entries.length === 0;
  $("history-list").replaceChildren(...entries.map(item));
}

function item(entry) {
  const live = entry.status === "queued" || entry.status === "running";
  // The server shows a job only to the key that made it: its result is kept here all the
  // same (Open, Download, Re-run with this key), but it cannot be followed or canceled.
  const otherKey = keyMismatch(entry);
  const title = entry.title || KIND[entry.kind];
  const thumb = entry.thumb
    ? el("img", { class: `thumb${entry.kind === "stylize" ? "" : " pixelated"}`, src: entry.thumb, alt: "" })
    : el("div", { class: "thumb", "aria-hidden": "true" });
  const actions = el("div", { class: "row" });
  if (!live) actions.append(el("button", { type: "button", text: "Open", "aria-label": `Open ${title}`, onclick: () => openEntry(entry) }));
  if (!live) actions.append(el("button", { type: "button", text: "Re-run", "aria-label": `Re-run ${title}`, onclick: () => rerunEntry(entry) }));
  if (entry.result || entry.images) {
    actions.append(el("button", { type: "button", text: "Download", "aria-label": `Download ${title}`, onclick: () => downloadEntry(entry) }));
  }
  if (live && !otherKey) {
    actions.append(el("button", { type: "button", text: "Show progress", onclick: () => app.selectTab("stylize") }));
    actions.append(el("button", { type: "button", text: "Cancel", "aria-label": `Cancel ${title}`, onclick: () => cancelEntry(entry) }));
  }
  actions.append(el("button", { type: "button", class: "quiet", text: "Delete", "aria-label": `Delete ${title} from the history`, onclick: () => store.remove(entry.id) }));
  const keyNote = otherKey && live
    ? el("p", { class: "key-note", text: "The server shows a job only to the API key that made it: use that key to follow or cancel this one." })
    : null;
  return el("li", { dataset: { kind: entry.kind, status: entry.status, id: entry.id, ...(otherKey ? { key: "other" } : {}) } },
    thumb,
    el("div", {},
      el("h3", { text: `${KIND[entry.kind]}: ${title}` }),
      el("p", { class: "meta", text: [timeAgo(entry.createdAt), statusText(entry), describe(entry), otherKey].filter(Boolean).join(" · ") }),
      keyNote,
      actions));
}

async function openEntry(entry) {
  clearStatus("history-status");
  app.selectTab(TAB[entry.kind]);
  if (entry.kind === "stylize") await stylize.open(entry);
  else faces.open(entry);
}

async function rerunEntry(entry) {
  clearStatus("history-status");
  app.selectTab(TAB[entry.kind]);
  if (entry.kind === "stylize") await stylize.rerun(entry);
  else await faces.rerun(entry);
}

function downloadEntry(entry) {
  if (entry.kind === "stylize") {
    const name = `${stem(entry.inputs?.content?.name)}-${stem(entry.inputs?.styles?.[0]?.name)}.${extensionOf(entry.mediaType)}`;
    return download(entry.result, name);
  }
  return faces.downloadEntry(entry);
}

async function cancelEntry(entry) {
  try {
    const doc = await stylize.cancelJob(entry.jobId);
    if (doc) await store.update(entry.id, { status: doc.status });
    setStatus("history-status", "Canceled.");
  } catch (err) {
    setStatus("history-status", `Could not cancel: ${err.message}`);
  }
}

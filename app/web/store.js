// Atelier studio: this browser's history of jobs and generations, in IndexedDB (blobs
// included: inputs, results, thumbnails), so that results survive a reload and running jobs
// can be found again.
"use strict";

const DB_NAME = "atelier-studio";
const STORE = "history";
const KEEP = 60; // entries kept; the oldest finished ones go first

let opening = null;

function open() {
  if (!opening) {
    opening = new Promise((resolve, reject) => {
      const request = indexedDB.open(DB_NAME, 1);
      request.onupgradeneeded = () => {
        const store = request.result.createObjectStore(STORE, { keyPath: "id" });
        store.createIndex("createdAt", "createdAt");
      };
      request.onsuccess = () => resolve(request.result);
      request.onerror = () => reject(request.error);
    });
  }
  return opening;
}

async function run(mode, action) {
  const db = await open();
  return new Promise((resolve, reject) => {
    const tx = db.transaction(STORE, mode);
    const request = action(tx.objectStore(STORE));
    tx.oncomplete = () => resolve(request ? request.result : undefined);
    tx.onerror = () => reject(tx.error);
    tx.onabort = () => reject(tx.error);
  });
}

export const changes = new EventTarget();

function changed(id) {
  changes.dispatchEvent(new CustomEvent("change", { detail: { id } }));
}

export function newId() {
  return `${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 8)}`;
}

/** Every entry, newest first. */
export async function all() {
  const entries = await run("readonly", (store) => store.getAll());
  return entries.sort((a, b) => b.createdAt - a.createdAt);
}

export function get(id) {
  return run("readonly", (store) => store.get(id));
}

export async function put(entry) {
  await run("readwrite", (store) => store.put(entry));
  changed(entry.id);
  await prune();
  return entry;
}

/** Merge `fields` into the stored entry (no-op when it was deleted meanwhile). */
export async function update(id, fields) {
  // Read and write in one transaction: two updates in flight must not undo each other.
  let entry = null;
  await run("readwrite", (store) => {
    const request = store.get(id);
    request.onsuccess = () => {
      if (!request.result) return;
      entry = Object.assign(request.result, fields);
      store.put(entry);
    };
    return null;
  });
  if (entry) changed(id);
  return entry;
}

export async function remove(id) {
  await run("readwrite", (store) => store.delete(id));
  changed(id);
}

export async function clear() {
  await run("readwrite", (store) => store.clear());
  changed(null);
}

async function prune() {
  const entries = await all();
  const live = (e) => e.status === "queued" || e.status === "running";
  const extra = entries.filter((e) => !live(e)).slice(Math.max(0, KEEP - entries.filter(live).length));
  if (!extra.length) return;
  await run("readwrite", (store) => { for (const e of extra) store.delete(e.id); return null; });
  changed(null);
}

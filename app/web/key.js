// Atelier studio: the API key field, shown when the server asks for a key (its
// /studio/config says so, or a request was answered 401). lib.js keeps the key and sends it.
"use strict";

import { $, app, auth, api, apiKey, setApiKey, forgetApiKey, keyRemembered, keyTag } from "./lib.js";

const TOKEN = /^[A-Za-z0-9\-._~+/]+=*$/; // what the server accepts as a key (RFC 6750)
const MISSING = "This server needs an API key: enter yours here, then try again.";
const REFUSED = "The server refused this API key: check it (keys are case-sensitive) and enter it again.";
let checks = 0; // the latest check of a key speaks; older ones are stale

export function init(config) {
  auth.required = Boolean(config.auth?.api_keys);
  wire();
  app.events.addEventListener("unauthorized", (e) => {
    show();
    say(e.detail.refused ? REFUSED : MISSING, "error");
  });
  if (!auth.required) return;
  show();
  if (apiKey()) check({ quiet: true });
}

function wire() {
  $("key-form").addEventListener("submit", (e) => {
    e.preventDefault();
    use();
  });
  $("api-key").addEventListener("input", () => {
    if ($("key-message").classList.contains("error")) say("");
  });
  $("key-remember").addEventListener("change", () => {
    const key = apiKey();
    if (!key) return; // it applies to the next key used
    const remember = $("key-remember").checked;
    setApiKey(key, { remember });
    say(remember ? "The key is remembered on this device until you forget it." : "The key is kept in this tab only.", "ok");
  });
  $("key-forget").addEventListener("click", () => {
    checks += 1;
    forgetApiKey();
    $("api-key").value = "";
    $("key-remember").checked = false;
    $("key-forget").disabled = true;
    say("Key forgotten: this browser no longer keeps it.", "ok");
    $("api-key").focus();
  });
}

/** Show the field (once), filled with the key kept in this browser, if any. */
function show() {
  const form = $("key-form");
  if (!form.hidden) return;
  auth.required = true;
  const key = apiKey();
  auth.tag = keyTag(key);
  $("api-key").value = key || "";
  $("key-remember").checked = keyRemembered();
  $("key-forget").disabled = !key;
  form.hidden = false;
}

function say(text, kind = "") {
  const line = $("key-message");
  line.textContent = text;
  line.className = `key-message ${kind}`.trim();
  line.hidden = !text;
  const input = $("api-key");
  if (kind === "error") input.setAttribute("aria-invalid", "true");
  else input.removeAttribute("aria-invalid");
}

async function use() {
  const input = $("api-key");
  const key = input.value.trim();
  if (!key || !TOKEN.test(key)) {
    say(key ? "That is not an API key: a key has only letters, digits and - . _ ~ + / =. Check what was pasted." : MISSING, "error");
    input.focus();
    return;
  }
  setApiKey(key, { remember: $("key-remember").checked });
  input.value = key;
  $("key-forget").disabled = false;
  if (await check()) app.events.dispatchEvent(new Event("key-accepted"));
}

/** Ask the server whether it takes the key (any call that needs one: the model list). */
async function check({ quiet = false } = {}) {
  const mine = ++checks;
  if (!quiet) say("Checking the key…");
  try {
    await api("/models", { cache: "no-store" });
  } catch (err) {
    // A 401 has spoken already (the "unauthorized" event): missing or refused.
    if (mine === checks && err.status !== 401) say(`The key could not be checked. ${err.message}`, "error");
    return false;
  }
  if (mine !== checks) return false;
  if (!quiet) say(keyRemembered() ? "Key accepted, and remembered on this device." : "Key accepted for this tab.", "ok");
  return true;
}

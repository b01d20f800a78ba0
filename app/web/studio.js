// Atelier studio: a client of the public HTTP API, as plain ES modules (no build step, no
// dependencies, nothing loaded from outside this server). This module wires the tabs, loads
// /studio/config and starts the panels.
"use strict";

import { $, app, el, api, showError } from "./lib.js";
import * as store from "./store.js";
import * as stylize from "./stylize.js";
import * as faces from "./faces.js";
import * as history from "./history.js";
import * as key from "./key.js";

const TABS = ["stylize", "faces", "walk", "history"];

function selectTab(name, { focus = false, push = true } = {}) {
  if (!TABS.includes(name)) name = "stylize";
  for (const tab of TABS) {
    const selected = tab === name;
    const button = $(`tab-${tab}`);
    button.setAttribute("aria-selected", String(selected));
    button.tabIndex = selected ? 0 : -1;
    $(`panel-${tab}`).hidden = !selected;
  }
  if (focus) $(`tab-${name}`).focus();
  if (push && location.hash !== `#${name}`) history_replace(`#${name}`);
  document.body.dataset.tab = name;
}

function history_replace(hash) {
  window.history.replaceState(null, "", hash);
}

function wireTabs() {
  for (const tab of TABS) {
    $(`tab-${tab}`).addEventListener("click", () => selectTab(tab));
  }
  $("tab-stylize").parentElement.addEventListener("keydown", (e) => {
    const current = TABS.findIndex((t) => $(`tab-${t}`).getAttribute("aria-selected") === "true");
    const next = { ArrowRight: current + 1, ArrowLeft: current - 1, Home: 0, End: TABS.length - 1 }[e.key];
    if (next === undefined) return;
    e.preventDefault();
    selectTab(TABS[(next + TABS.length) % TABS.length], { focus: true });
  });
  window.addEventListener("hashchange", () => {
    const name = location.hash.slice(1);
    if (TABS.includes(name)) selectTab(name, { push: false });
  });
  // In-page links to a panel's parts (e.g. "See the progress" on a phone).
  document.addEventListener("click", (e) => {
    const link = e.target.closest("a[href^='#st-']");
    if (!link) return;
    e.preventDefault();
    $(link.getAttribute("href").slice(1))?.scrollIntoView({ block: "start" });
  });
}

function credits(config) {
  const items = [...config.examples.content, ...config.examples.style].map((ex) => el("li", {},
    el("strong", { text: ex.title }), `: ${ex.credit}; `,
    ex.licence_url ? el("a", { href: ex.licence_url, rel: "license", text: ex.licence }) : ex.licence, "."));
  for (const m of config.generate.models) {
    items.push(el("li", {}, el("strong", { text: m.title }), `: ${m.license.attribution} (${m.license.name}).`));
  }
  $("credit-list").replaceChildren(...items);
  $("version").textContent = `Atelier ${config.version}`;
}

async function loadConfig() {
  return (await api("/studio/config", { cache: "no-store" })).json();
}

async function main() {
  wireTabs();
  const initial = location.hash.slice(1);
  selectTab(TABS.includes(initial) ? initial : "stylize", { push: false });
  app.selectTab = (name) => selectTab(name);
  let config;
  try {
    config = await loadConfig();
  } catch (err) {
    showError("service-error", `The studio could not load its settings from this server. ${err.message}`, null, { scroll: false });
    return;
  }
  app.config = config;
  key.init(config);
  stylize.init(config);
  faces.init(config);
  credits(config);
  document.addEventListener("paste", (e) => {
    if (document.body.dataset.tab === "stylize") stylize.onPaste(e);
  });
  app.events.addEventListener("measured", async () => {
    try {
      app.config = await loadConfig();
      stylize.updateConfig(app.config);
    } catch (_) { /* keep the old estimates */ }
  });
  await history.init();
  const resume = async () => {
    try {
      await stylize.resume(await store.all());
    } catch (_) { /* no IndexedDB: nothing to resume */ }
  };
  // A key accepted: the jobs it made can be followed now.
  app.events.addEventListener("key-accepted", resume);
  await resume();
  document.body.dataset.ready = "true";
}

main();

// The settings dropdown: response mode (stored as the session's default, so it sticks to the chat) and model
// (one of GET /api/v1/chat/models; remembered in this browser).

import { api } from "./api.js";
import { $, h, toast } from "./dom.js";
import { on, state } from "./state.js";

export const MODES = [
  { id: "strict", name: "Strict", about: "Only what your documents say, every claim cited; declines otherwise." },
  { id: "balanced", name: "Balanced", about: "Grounded in your documents, with clearly marked inferences." },
  { id: "creative", name: "Creative", about: "Uses your documents plus general knowledge, clearly separated." },
];

const button = $("#settings-button");
const panel = $("#settings-panel");
const select = $("#model-select");

export function initSettings() {
  $("#mode-options").replaceChildren(...MODES.map(option));
  button.addEventListener("click", () => toggle(panel.hidden));
  panel.addEventListener("change", (event) => {
    if (event.target.name === "mode") chooseMode(event.target.value);
  });
  select.addEventListener("change", () => {
    state.model = select.value;
    localStorage.setItem("citechat.model", select.value);
    summary();
  });
  document.addEventListener("click", (event) => {
    if (!panel.hidden && !event.target.closest(".dropdown")) toggle(false);
  });
  panel.addEventListener("keydown", (event) => {
    if (event.key === "Escape") {
      event.stopPropagation();
      toggle(false);
      button.focus();
    }
  });
  on("session-opened", (session) => {
    state.mode = session.mode ?? "balanced";
    for (const input of panel.querySelectorAll("input[name=mode]")) input.checked = input.value === state.mode;
    summary();
  });
}

function option(mode) {
  return h("label", { class: "mode-option" },
    h("input", { type: "radio", name: "mode", value: mode.id }),
    h("span", { class: "mode-text" },
      h("span", { class: "mode-name" }, mode.name),
      h("span", { class: "mode-about" }, mode.about)));
}

function toggle(open) {
  panel.hidden = !open;
  button.setAttribute("aria-expanded", String(open));
  if (open) panel.querySelector("input[name=mode]:checked, input[name=mode]")?.focus();
}

async function chooseMode(mode) {
  state.mode = mode;
  summary();
  const session = state.session;
  if (session && !session.is_archived) {
    try {
      const updated = await api(`/api/v1/chat/session/${session.id}`, { method: "PATCH", body: { mode } });
      if (state.session?.id === updated.id) state.session = { ...state.session, ...updated };
    } catch (error) {
      toast(`The mode applies to your next questions but was not saved: ${error.message}`, "warn");
      return;
    }
  }
  toast(`${MODES.find((m) => m.id === mode).name} mode`);
}

function summary() {
  const mode = MODES.find((m) => m.id === state.mode) ?? MODES[1];
  $("#settings-summary").textContent = mode.name;
  button.title = `Mode: ${mode.name}${state.model ? ` · Model: ${state.model}` : ""}`;
}

export async function loadModels() {
  const models = await api("/api/v1/chat/models");
  const saved = localStorage.getItem("citechat.model");
  state.model = models.models.includes(saved) ? saved : models.default;
  select.replaceChildren(...models.models.map((m) => h("option", { value: m, selected: m === state.model }, m)));
  select.disabled = models.models.length < 2;
  $("#model-note").textContent = models.provider === "extractive"
    ? "Extractive: answers are sentences quoted from your documents, no language model."
    : `Provider: ${models.provider}`;
  summary();
}

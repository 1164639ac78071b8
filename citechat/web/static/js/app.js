// The page's entry point: sign in, then open the active session (or the one this tab had open), and wire the
// composer, keyboard, theme and panels together.

import { DRAFT_PREFIX, api, auth } from "./api.js";
import { signIn } from "./auth.js";
import { ask, openSession, refreshLimits, stop, updateEmpty } from "./conversation.js";
import { initDocuments, refresh as refreshDocuments, setOpen as setDocumentsOpen } from "./documents.js";
import { $, hydrateIcons, setIcon, toast } from "./dom.js";
import { initScope } from "./scope.js";
import { initSettings, loadModels } from "./settings.js";
import { closeMenus, initSidebar, refresh as refreshSidebar } from "./sidebar.js";
import { on, state } from "./state.js";

const input = $("#composer-input");
const sendButton = $("#send-button");
const stopButton = $("#stop-button");

async function start() {
  hydrateIcons();
  initTheme();
  initSidebar();
  initSettings();
  initDocuments();
  initScope();
  initComposer();
  initKeyboard();
  window.addEventListener("citechat:unauthorized", () => {
    if (!$("#signin").hidden) return; // a token being tried on the sign-in screen
    auth.clear();
    boot("Your sign-in has expired or was refused. Sign in again.");
  });
  $("#sign-out").addEventListener("click", () => {
    auth.clear();
    sessionStorage.removeItem("citechat.session");
    boot();
  });
  on("answer-finished", refreshLimits);
  on("documents-changed", (documents) => {
    $("#empty-upload").hidden = documents.some((d) => d.status === "ready");
  });
  await boot();
}

async function boot(message = null) {
  if (!auth.token) await signIn(message);
  $("#app").hidden = false;
  showIdentity();
  try {
    await Promise.all([loadModels(), refreshDocuments(), openFirstSession()]);
    await refreshSidebar();
    refreshLimits();
  } catch (error) {
    if (error.status === 401) return; // the unauthorized handler signs in again
    toast(`Could not load: ${error.message}`, "error");
  }
  input.focus();
}

/** The session this tab had open (a reload keeps it), else the user's active session. */
async function openFirstSession() {
  const remembered = sessionStorage.getItem("citechat.session");
  if (remembered) {
    const sessions = await api("/api/v1/chat/sessions?limit=100");
    const session = sessions.find((s) => s.id === remembered);
    if (session) return openSession(session);
  }
  return openSession(await api("/api/v1/chat/session"));
}

function showIdentity() {
  const claims = auth.claims ?? {};
  const name = claims.name || claims.sub || "signed in";
  $("#who-name").textContent = name;
  $("#who-org").textContent = auth.org ?? (claims.orgs ?? []).join(", ");
  $("#who-avatar").textContent = name.slice(0, 1).toUpperCase();
}

function initComposer() {
  const form = $("#composer");
  const resize = () => {
    input.style.height = "auto";
    input.style.height = `${Math.min(input.scrollHeight, 220)}px`;
  };
  // What is typed is kept per chat until it is sent: a reload, a closed tab or a switch to another chat loses none.
  const draftKey = () => (state.session ? DRAFT_PREFIX + state.session.id : null);
  input.addEventListener("input", () => {
    resize();
    syncComposer();
    const key = draftKey();
    if (key && input.value.trim()) localStorage.setItem(key, input.value);
    else if (key) localStorage.removeItem(key);
  });
  let draftOf = null; // the chat whose draft the box holds: none until a first one opens
  on("session-opened", (session) => {
    if (draftOf === null && input.value.trim()) {
      localStorage.setItem(draftKey(), input.value); // typed while the page loaded: the newest words win
    } else {
      input.value = localStorage.getItem(draftKey()) ?? ""; // the last chat's draft stays with it
    }
    draftOf = session.id;
    resize();
  });
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      form.requestSubmit();
    }
  });
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const question = input.value.trim();
    if (!question || state.live) return;
    const key = draftKey();
    if (await ask(question)) {
      localStorage.removeItem(key);
      if (draftKey() === key) {
        input.value = "";
        resize();
        syncComposer();
      }
    }
  });
  stopButton.addEventListener("click", () => stop());
  on("live-changed", syncComposer);
  on("session-opened", syncComposer);
  on("sessions-changed", syncComposer);
  syncComposer();
}

/** Send or Stop, and whether asking is possible at all in this chat. */
function syncComposer() {
  const live = Boolean(state.live);
  const archived = Boolean(state.session?.is_archived);
  sendButton.hidden = live;
  stopButton.hidden = !live;
  sendButton.disabled = archived || !input.value.trim();
  input.disabled = archived;
  const note = $("#composer-note");
  note.hidden = !archived;
  note.textContent = archived ? "This chat is archived and read-only. Start a new chat to ask more." : "";
  updateEmpty();
}

function initKeyboard() {
  document.addEventListener("keydown", (event) => {
    if (event.key !== "Escape" || document.querySelector("dialog[open]")) return;
    closeMenus();
    if (state.live) {
      event.preventDefault();
      stop();
    } else if (document.body.classList.contains("documents-open")) {
      setDocumentsOpen(false);
    }
  });
}

function initTheme() {
  const button = $("#theme-toggle");
  const system = window.matchMedia("(prefers-color-scheme: dark)");
  const current = () => document.documentElement.dataset.theme ?? (system.matches ? "dark" : "light");
  const label = () => {
    const next = current() === "dark" ? "light" : "dark";
    button.setAttribute("aria-label", `Switch to ${next} theme`);
    button.title = `Switch to ${next} theme`;
    setIcon(button, next === "dark" ? "moon" : "sun");
  };
  button.addEventListener("click", () => {
    const next = current() === "dark" ? "light" : "dark";
    document.documentElement.dataset.theme = next;
    localStorage.setItem("citechat.theme", next);
    label();
  });
  system.addEventListener("change", label);
  label();
}

start();

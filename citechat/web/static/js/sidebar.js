// The history sidebar: the caller's sessions newest first (title, last activity), new chat, rename, archive, delete
// (after confirming), export (a Markdown file), a search over titles and messages, and a switch that shows archived
// ones. Collapsible; an overlay drawer on narrow screens.

import { api } from "./api.js";
import { openSession, updateEmpty } from "./conversation.js";
import { $, confirmDialog, h, icon, timeAgo, toast } from "./dom.js";
import { exportSession } from "./export.js";
import { emit, on, state } from "./state.js";

const CHAT = "/api/v1/chat";
const list = $("#session-list");
const showArchived = $("#show-archived");
const search = $("#history-search");
const SEARCH_DELAY_MS = 250; // typing pauses this long before the history is searched
let searchTimer = 0;
const narrow = window.matchMedia("(max-width: 860px)");
let sessions = [];

export function initSidebar() {
  $("#new-chat").addEventListener("click", newChat);
  showArchived.addEventListener("change", refresh);
  search.addEventListener("input", () => {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(() => refresh().catch((error) => toast(error.message, "error")), SEARCH_DELAY_MS);
  });
  $("#sidebar-open").addEventListener("click", () => setOpen(!isOpen()));
  $("#sidebar-close").addEventListener("click", () => setOpen(false));
  $("#sidebar-backdrop").addEventListener("click", () => setOpen(false));
  narrow.addEventListener("change", () => setOpen(!narrow.matches && localStorage.getItem("citechat.sidebar") !== "closed"));
  setOpen(!narrow.matches && localStorage.getItem("citechat.sidebar") !== "closed");
  document.addEventListener("click", (event) => {
    if (!event.target.closest(".session-menu, .session-more")) closeMenus();
  });
  on("sessions-changed", refresh);
  on("answer-finished", refresh);
  on("session-opened", (session) => {
    markCurrent();
    $("#chat-title").textContent = session.title;
    if (narrow.matches) setOpen(false);
  });
}

export function isOpen() {
  return !document.body.classList.contains("sidebar-collapsed");
}

export function setOpen(open) {
  document.body.classList.toggle("sidebar-collapsed", !open);
  const toggle = $("#sidebar-open");
  toggle.setAttribute("aria-expanded", String(open));
  toggle.setAttribute("aria-label", open ? "Hide the history" : "Show the history");
  toggle.title = toggle.getAttribute("aria-label");
  $("#sidebar-backdrop").hidden = !(open && narrow.matches);
  $("#sidebar").inert = !open;
  if (!narrow.matches) localStorage.setItem("citechat.sidebar", open ? "open" : "closed");
}

export async function refresh() {
  const query = new URLSearchParams({ include_archived: showArchived.checked, limit: 100 });
  if (search.value.trim()) query.set("q", search.value.trim());
  sessions = await api(`${CHAT}/sessions?${query}`);
  const current = sessions.find((s) => s.id === state.session?.id);
  if (current) {
    state.session = { ...state.session, ...current };
    $("#chat-title").textContent = current.title;
  }
  draw();
}

function draw() {
  list.replaceChildren(...sessions.map(item));
  const empty = $("#history-empty");
  empty.hidden = sessions.length > 0;
  empty.textContent = search.value.trim() ? "No chats match." : "No chats yet.";
  markCurrent();
}

function markCurrent() {
  for (const row of list.children) {
    const current = row.dataset.id === state.session?.id;
    row.classList.toggle("current", current);
    const open = row.querySelector(".session-open");
    if (current) open.setAttribute("aria-current", "page");
    else open.removeAttribute("aria-current");
  }
}

function item(session) {
  const when = session.last_message_at ?? session.updated_at;
  const more = h("button", {
    class: "icon-btn session-more", type: "button", "aria-haspopup": "menu", "aria-expanded": "false",
    "aria-label": `Actions for “${session.title}”`, title: "Actions",
  }, icon("dots"));
  const row = h("li", { class: `session${session.is_archived ? " archived" : ""}`, dataset: { id: session.id } },
    h("button", { class: "session-open", type: "button", onclick: () => open(session) },
      h("span", { class: "session-title" }, session.title),
      h("span", { class: "session-meta" },
        session.is_archived ? h("span", { class: "tag" }, "Archived") : null,
        h("time", { datetime: when, title: new Date(when).toLocaleString() }, timeAgo(when)))),
    more);
  more.addEventListener("click", (event) => {
    event.stopPropagation();
    const wasOpen = more.getAttribute("aria-expanded") === "true";
    closeMenus();
    if (!wasOpen) openMenu(row, more, session);
  });
  return row;
}

function openMenu(row, button, session) {
  const entry = (label, name, action, danger = false) => h("button", {
    class: `menu-item${danger ? " danger" : ""}`, type: "button", role: "menuitem",
    onclick: () => { closeMenus(); action(session); },
  }, icon(name), label);
  const menu = h("div", { class: "session-menu", role: "menu", "aria-label": `Actions for “${session.title}”` },
    entry("Rename", "pencil", rename),
    entry("Export", "download", exportSession),
    session.is_archived ? null : entry("Archive", "archive", archive),
    entry("Delete", "trash", remove, true));
  menu.addEventListener("keydown", (event) => {
    const items = [...menu.querySelectorAll(".menu-item")];
    const index = items.indexOf(document.activeElement);
    if (event.key === "ArrowDown") items[(index + 1) % items.length].focus();
    else if (event.key === "ArrowUp") items[(index - 1 + items.length) % items.length].focus();
    else if (event.key === "Escape") { closeMenus(); button.focus(); }
    else return;
    event.preventDefault();
  });
  button.setAttribute("aria-expanded", "true");
  row.append(menu);
  menu.querySelector(".menu-item").focus();
}

export function closeMenus() {
  for (const menu of list.querySelectorAll(".session-menu")) menu.remove();
  for (const button of list.querySelectorAll(".session-more[aria-expanded=true]")) {
    button.setAttribute("aria-expanded", "false");
  }
}

async function open(session) {
  if (session.id === state.session?.id) {
    if (narrow.matches) setOpen(false);
    return;
  }
  await openSession(session);
  $("#composer-input").focus();
}

/** A new chat, unless the open one is still empty (then it is the new chat). */
export async function newChat() {
  const empty = state.session && !state.session.is_archived && !document.querySelector("#messages .msg");
  if (!empty) {
    await openSession(await api(`${CHAT}/session/new`, { method: "POST" }));
    await refresh();
  } else if (narrow.matches) {
    setOpen(false);
  }
  updateEmpty();
  $("#composer-input").focus();
}

async function rename(session) {
  const dialog = $("#rename-dialog");
  const input = $("#rename-input");
  input.value = session.title;
  dialog.returnValue = "";
  dialog.showModal();
  input.select();
  dialog.addEventListener("close", async () => {
    const title = input.value.trim();
    if (dialog.returnValue !== "ok" || !title || title === session.title) return;
    await api(`${CHAT}/session/${session.id}`, { method: "PATCH", body: { title } });
    toast("Chat renamed");
    await refresh();
  }, { once: true });
}

async function archive(session) {
  await api(`${CHAT}/session/${session.id}/archive`, { method: "POST" });
  toast("Chat archived");
  await afterRemoval(session);
}

async function remove(session) {
  const confirmed = await confirmDialog({
    title: "Delete this chat?",
    text: `“${session.title}” and all its messages will be deleted for good.`,
  });
  if (!confirmed) return;
  await api(`${CHAT}/session/${session.id}`, { method: "DELETE" });
  toast("Chat deleted");
  await afterRemoval(session);
}

/** After archiving or deleting: if it was open, go to the active session (a new one when there is none). */
async function afterRemoval(session) {
  if (session.id === state.session?.id) {
    sessionStorage.removeItem("citechat.session");
    await openSession(await api(`${CHAT}/session`));
  }
  await refresh();
  emit("history-changed");
}

// The conversation: showing a session's messages, asking, and following an answer's event stream to its end,
// across lost connections (re-attaching with Last-Event-ID), Stop, Retry and quota refusals.

import { ApiError, NetworkError, api, events, openStream } from "./api.js";
import { $, announce, h, timeAgo, toast } from "./dom.js";
import { AnswerView, markUnsent, userMessage } from "./message-view.js";
import { scopeIds } from "./scope.js";
import { revealCard } from "./sources.js";
import { emit, sleep, state } from "./state.js";

const CHAT = "/api/v1/chat";
const PAGE = 50;
const messagesEl = $("#messages");
const conversationEl = $("#conversation");

let loads = 0;
let firstOpened;
let loading = new Promise((resolve) => { firstOpened = resolve; }); // until a first session is shown

/** Shows a session: its newest messages, and re-attaches to an answer still being written. */
export function openSession(session) {
  loading = load(session, ++loads);
  loading.finally(firstOpened).catch(() => {});
  return loading;
}

async function load(session, ticket) {
  detach();
  state.session = session;
  sessionStorage.setItem("citechat.session", session.id);
  messagesEl.replaceChildren();
  emit("session-opened", session);
  const messages = await api(`${CHAT}/session/${session.id}/messages?limit=${PAGE}`);
  if (ticket !== loads) return; // another session was opened meanwhile
  if (messages.length === PAGE) messagesEl.append(olderButton(messages[0].id));
  let last = null;
  for (const message of messages) last = drawStored(message, messagesEl);
  updateEmpty();
  scrollToEnd(false);
  const unfinished = messages.at(-1);
  if (unfinished?.role === "assistant" && ["pending", "streaming"].includes(unfinished.status)) {
    follow(newTurn(session, last, null, { assistantId: unfinished.id, attaching: true }));
  }
}

function olderButton(beforeId) {
  const button = h("button", { class: "btn btn-ghost btn-small older", type: "button" }, "Show earlier messages");
  button.addEventListener("click", async () => {
    const older = await api(`${CHAT}/session/${state.session.id}/messages?limit=${PAGE}&before=${beforeId}`);
    const fragment = document.createDocumentFragment();
    if (older.length === PAGE) fragment.append(olderButton(older[0].id));
    for (const message of older) drawStored(message, fragment);
    button.replaceWith(fragment);
  });
  return button;
}

function drawStored(message, parent) {
  if (message.role === "user") {
    parent.append(userMessage(message.content));
    return null;
  }
  const view = new AnswerView(message.id);
  parent.append(view.el);
  if (["pending", "streaming"].includes(message.status)) {
    view.text = message.content ?? "";
    view.render();
    view.thinking(message.status === "pending" ? "Searching your documents" : "Writing the answer");
  } else {
    view.show(message, { retry: () => retry(view) });
  }
  return view;
}

export function updateEmpty() {
  const empty = !messagesEl.querySelector(".msg");
  $("#empty-state").hidden = !empty;
  messagesEl.hidden = empty;
}

function scrollToEnd(smooth = true) {
  conversationEl.scrollTo({ top: conversationEl.scrollHeight, behavior: smooth ? "smooth" : "auto" });
}

/** True when the reader is near the bottom: streaming then keeps the newest text in view. */
const nearEnd = () => conversationEl.scrollHeight - conversationEl.scrollTop - conversationEl.clientHeight < 120;

// --- asking -------------------------------------------------------------------------------------------------

function newTurn(session, view, userEl, extra = {}) {
  // lastId: the SSE id of the last event seen (null: none), sent back as Last-Event-ID when re-attaching.
  return { session, view, userEl, assistantId: null, lastId: null, stopped: false, controller: new AbortController(),
    ...extra };
}

/** Sends a question; false when it cannot be sent now (an answer is streaming, or no session). */
export async function ask(question) {
  await loading.catch(() => {}); // a question typed while the chat loads goes after its history
  if (state.live || !state.session || state.session.is_archived) return false;
  const userEl = userMessage(question, { pending: true });
  const view = new AnswerView();
  messagesEl.append(userEl, view.el);
  updateEmpty();
  view.thinking();
  scrollToEnd();
  announce("Question sent. Answering…");
  const turn = newTurn(state.session, view, userEl, { question });
  const body = { question, mode: state.mode, model: state.model ?? undefined, document_ids: scopeIds() };
  follow(turn, () => openStream(`${CHAT}/message/stream?session_id=${turn.session.id}`, {
    body, signal: turn.controller.signal,
  }));
  return true;
}

/** Asks again for a failed or stopped answer: the same message is written anew. */
export async function retry(view) {
  if (state.live || !view.id) return;
  const turn = newTurn(state.session, view, null, { assistantId: view.id, isRetry: true });
  view.text = "";
  view.final = false;
  view.render();
  view.setSources([]);
  view.thinking();
  announce("Retrying…");
  const body = { mode: state.mode, model: state.model ?? undefined };
  follow(turn, () => openStream(`${CHAT}/message/${view.id}/retry/stream`, { body, signal: turn.controller.signal }));
}

/** Stops the answer being written: the server keeps what was written so far. */
export async function stop() {
  const turn = state.live;
  if (!turn || turn.stopped) return;
  turn.stopped = true;
  turn.controller.abort();
  const retryIt = turn.view.id || turn.assistantId ? () => retry(turn.view) : null;
  turn.view.show({ content: turn.view.text, status: "stopped", sources: turn.view.sources }, { retry: retryIt });
  let message = null;
  if (turn.assistantId) {
    try {
      message = await api(`${CHAT}/message/${turn.assistantId}/cancel`, { method: "POST" });
    } catch {
      message = await storedAnswer(turn).catch(() => null); // it may have finished just before
    }
  }
  if (message && ["completed", "failed", "stopped"].includes(message.status)) {
    turn.view.show(message, { retry: () => retry(turn.view) }); // what the server kept (or finished first)
  }
  announce("Stopped.");
  emit("answer-finished");
}

/** Stops listening (another session was opened); the answer itself goes on and is saved. */
export function detach() {
  const turn = state.live;
  if (!turn) return;
  turn.detached = true;
  turn.controller.abort();
  setLive(null);
}

function setLive(turn) {
  state.live = turn;
  emit("live-changed", Boolean(turn));
}

/** Runs one answer's stream to its end: ``open()`` starts it (send or retry); without it, re-attaches. */
async function follow(turn, open = null) {
  setLive(turn);
  try {
    let outcome = "lost";
    if (open) {
      try {
        outcome = await consume(turn, await open());
      } catch (error) {
        outcome = refused(turn, error);
      }
    }
    while (outcome === "lost" && !turn.stopped && !turn.detached) outcome = await resume(turn);
  } catch (error) {
    turn.view.error(`Something went wrong showing this answer (${error.message}). Reload to see it.`, null);
  } finally {
    if (state.live === turn) setLive(null);
    turn.view.reconnecting(false);
  }
}

/** Reads events until done/error ("ended"), the reader was stopped ("aborted") or the connection broke ("lost"). */
async function consume(turn, response) {
  try {
    for await (const event of events(response)) {
      if (event.id !== null) turn.lastId = event.id;
      turn.view.reconnecting(false);
      if (handle(turn, event)) return "ended";
    }
  } catch (error) {
    if (error.name === "AbortError" || turn.stopped || turn.detached) return "aborted";
    if (error instanceof NetworkError) return "lost";
    throw error;
  }
  return turn.stopped || turn.detached ? "aborted" : "lost";
}

/** Applies one event; true when it ends the answer. */
function handle(turn, { event, data }) {
  const { view } = turn;
  const stick = nearEnd();
  switch (event) {
    case "user_message":
      if (turn.userEl) {
        turn.userEl.classList.remove("pending");
        turn.userEl.dataset.id = data.id;
      }
      if (data.assistant_message_id) turn.assistantId = data.assistant_message_id;
      if (turn.assistantId) view.setId(turn.assistantId);
      emit("sessions-changed");
      break;
    case "sources":
      view.setSources(data.sources);
      break;
    case "token":
      view.appendToken(data.delta);
      break;
    case "done":
      turn.assistantId = data.id;
      view.show(data, { retry: () => retry(view) });
      announce(`Answer: ${data.content.slice(0, 400)}`);
      emit("answer-finished");
      break;
    case "error":
      turn.assistantId ||= data.message_id;
      if (turn.assistantId) view.setId(turn.assistantId);
      view.error(data.detail, data.retryable === false ? null : () => retry(view));
      announce(`The answer failed: ${data.detail}`);
      emit("answer-finished");
      break;
    default:
      return false;
  }
  if (stick) scrollToEnd(false);
  return event === "done" || event === "error";
}

/** The request was refused before any event (HTTP error) or never reached the server. */
function refused(turn, error) {
  if (error.name === "AbortError") return "aborted";
  const { view, userEl } = turn;
  const again = () => {
    userEl?.remove();
    view.el.remove();
    ask(turn.question);
  };
  const retryAction = turn.isRetry ? () => retry(view) : again;
  if (!(error instanceof ApiError)) {
    view.error("Could not reach the server. Check your connection.", retryAction);
    if (userEl) markUnsent(userEl, "Not sent");
    return "ended";
  }
  if (error.status === 429) {
    view.rateLimited(limitText(error));
    if (userEl) markUnsent(userEl, "Not sent");
    announce(limitText(error));
    restoreQuestion(turn.question);
  } else if (error.status === 409 && !turn.isRetry) {
    userEl?.remove();
    view.el.remove();
    toast(error.message || "An answer is still being written in this chat.", "warn");
    restoreQuestion(turn.question);
    setLive(null);
    openSession(turn.session); // shows, and follows, the answer in progress
  } else if (error.status === 401) {
    view.error("Your sign-in has expired.", null);
  } else {
    view.error(error.message, error.status >= 500 || error.status === 409 ? retryAction : null);
    if (userEl && !turn.isRetry) markUnsent(userEl, "Not sent");
  }
  return "ended";
}

function restoreQuestion(question) {
  const input = $("#composer-input");
  if (question && !input.value.trim()) {
    input.value = question;
    input.dispatchEvent(new Event("input"));
  }
}

/** "You have reached … You can ask again at 14:05 (in 12 minutes)." */
export function limitText(error) {
  const body = error.body ?? {};
  const who = body.limit === "organization" ? "Your organization has" : "You have";
  let reset = body.reset_at ? new Date(body.reset_at) : null;
  if ((!reset || Number.isNaN(reset.getTime())) && error.retryAfter !== null) {
    reset = new Date(Date.now() + error.retryAfter * 1000);
  }
  const base = `${who} reached the message limit.`;
  if (!reset || Number.isNaN(reset.getTime())) return `${base} Try again later.`;
  const sameDay = reset.toDateString() === new Date().toDateString();
  const at = reset.toLocaleString([], sameDay ? { hour: "2-digit", minute: "2-digit" }
    : { weekday: "short", hour: "2-digit", minute: "2-digit" });
  return `${base} You can ask again at ${at} (${timeAgo(reset.toISOString())}).`;
}

/** A note above the composer when few messages are left in a quota (GET /limits; absent on older servers). */
export async function refreshLimits() {
  let limits;
  try {
    limits = await api(`${CHAT}/limits`);
  } catch {
    return;
  }
  const low = ["user", "organization"]
    .map((scope) => ({ scope, ...limits?.[scope] }))
    .filter((l) => typeof l.remaining === "number" && l.remaining <= Math.max(3, Math.ceil((l.limit ?? 0) * 0.1)));
  const note = $("#quota-note");
  note.hidden = !low.length;
  if (!low.length) return;
  const { scope, remaining, reset_at: resetAt } = low.sort((a, b) => a.remaining - b.remaining)[0];
  const whose = scope === "organization" ? " for your organization" : "";
  const until = resetAt ? `, until ${new Date(resetAt).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })}` : "";
  note.textContent = `${remaining} message${remaining === 1 ? "" : "s"} left${whose}${until}.`;
}

// --- reconnecting -------------------------------------------------------------------------------------------

/** Re-attaches after a lost connection, replaying what was missed; polls the stored message when the server
 * cannot replay (or the answer's id is not known yet). */
async function resume(turn) {
  turn.view.reconnecting(!turn.attaching); // re-attaching on opening a session is not a lost connection
  let delay = 500;
  while (!turn.stopped && !turn.detached) {
    await online();
    if (turn.assistantId) {
      try {
        const response = await openStream(`${CHAT}/message/${turn.assistantId}/stream`, {
          method: "GET", lastEventId: turn.lastId, signal: turn.controller.signal,
        });
        if (!turn.lastId) turn.view.text = ""; // no text seen yet: the replay brings all of it
        turn.attaching = false;
        return await consume(turn, response);
      } catch (error) {
        if (error.name === "AbortError") return "aborted";
        if (error instanceof ApiError && [404, 405].includes(error.status)) return poll(turn);
        if (error instanceof ApiError && error.status < 500) {
          turn.view.error(error.message, () => retry(turn.view));
          return "ended";
        }
      }
    } else {
      return poll(turn);
    }
    turn.attaching = false;
    turn.view.reconnecting(true);
    await sleep(delay);
    delay = Math.min(delay * 2, 8000);
  }
  return "aborted";
}

/** Reads the answer from the session's messages until it is final. */
async function poll(turn) {
  while (!turn.stopped && !turn.detached) {
    await online();
    const message = await storedAnswer(turn).catch(() => null);
    if (message) {
      turn.assistantId = message.id;
      turn.view.setId(message.id);
      if (!["pending", "streaming"].includes(message.status)) {
        turn.view.show(message, { retry: () => retry(turn.view) });
        emit("answer-finished");
        return "ended";
      }
      if (message.content && message.content !== turn.view.text) {
        turn.view.text = message.content;
        turn.view.render();
      }
    }
    await sleep(1500);
  }
  return "aborted";
}

async function storedAnswer(turn) {
  const messages = await api(`${CHAT}/session/${turn.session.id}/messages?limit=10`);
  if (turn.assistantId) return messages.find((m) => m.id === turn.assistantId) ?? null;
  const userId = turn.userEl?.dataset.id;
  const index = userId ? messages.findIndex((m) => m.id === userId) : -1;
  return (index >= 0 ? messages.slice(index + 1) : messages).find((m) => m.role === "assistant") ?? null;
}

function online() {
  if (navigator.onLine) return Promise.resolve();
  return new Promise((resolve) => window.addEventListener("online", resolve, { once: true }));
}

// --- citations ----------------------------------------------------------------------------------------------

messagesEl.addEventListener("click", (event) => {
  const link = event.target.closest("a.cite");
  if (!link) return;
  event.preventDefault();
  const card = document.getElementById(link.getAttribute("href").slice(1));
  if (card) revealCard(card);
});

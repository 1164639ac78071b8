// What the page knows right now, shared by its modules, and a bus for "something changed" news between them.

export const state = {
  session: null, // the open chat session (API ChatSession)
  mode: "balanced",
  model: null, // null: the server's default
  live: null, // the answer being streamed, if any (conversation.js)
  documents: [],
  scope: new Map(), // the documents the next questions are asked about (id -> name); empty: all of them
};

export const bus = new EventTarget();

export const emit = (name, detail) => bus.dispatchEvent(new CustomEvent(name, { detail }));
export const on = (name, handler) => bus.addEventListener(name, (event) => handler(event.detail));

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

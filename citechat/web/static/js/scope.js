// Asking about some documents only: the documents panel's checkboxes choose them, a chip above the question box says
// which, and every question sent while it shows is searched in those documents alone (``document_ids``).

import { $, h, icon } from "./dom.js";
import { emit, on, state } from "./state.js";

const chip = $("#scope-chip");

export function initScope() {
  on("scope-changed", draw);
  on("documents-changed", (documents) => {
    // A document deleted (or no longer ready) leaves the scope: a question about it could only be refused.
    const ready = new Set(documents.filter((d) => d.status === "ready").map((d) => d.id));
    const gone = [...state.scope.keys()].filter((id) => !ready.has(id));
    for (const id of gone) state.scope.delete(id);
    if (gone.length) emit("scope-changed");
  });
  draw();
}

export function setInScope(document, chosen) {
  if (chosen) state.scope.set(document.id, document.name);
  else state.scope.delete(document.id);
  emit("scope-changed");
}

/** The ``document_ids`` of the next question, or undefined for all documents. */
export function scopeIds() {
  return state.scope.size ? [...state.scope.keys()] : undefined;
}

function draw() {
  const names = [...state.scope.values()];
  chip.hidden = names.length === 0;
  if (!names.length) return chip.replaceChildren();
  const shown = names.length === 1 ? names[0] : `${names[0]} and ${names.length - 1} more`;
  chip.replaceChildren(icon("file"), h("span", { class: "scope-text", title: names.join(", ") }, `Asking about ${shown} only`),
    h("button", {
      class: "icon-btn scope-clear", type: "button", "aria-label": "Ask about all documents again",
      title: "Ask about all documents", onclick: () => { state.scope.clear(); emit("scope-changed"); },
    }, icon("x")));
}

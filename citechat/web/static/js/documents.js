// The documents panel: upload by drag and drop or picker (with progress), the organization's documents with their
// status (processing, ready, failed with the reason), open the original, and delete. Statuses are polled while any
// is in progress.

import { api, upload } from "./api.js";
import { $, confirmDialog, formatBytes, h, icon, timeAgo, toast } from "./dom.js";
import { openDocument } from "./open-document.js";
import { setInScope } from "./scope.js";
import { emit, on, state } from "./state.js";

const panel = $("#documents-panel");
const toggleButton = $("#documents-button");
const dropzone = $("#dropzone");
const fileInput = $("#file-input");
const uploads = $("#upload-list");
const list = $("#document-list");
let pollTimer = 0;

export function initDocuments() {
  toggleButton.addEventListener("click", () => setOpen(panel.hidden));
  $("#documents-close").addEventListener("click", () => setOpen(false));
  $("#empty-upload").addEventListener("click", () => setOpen(true));
  dropzone.addEventListener("click", () => fileInput.click());
  dropzone.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") {
      event.preventDefault();
      fileInput.click();
    }
  });
  fileInput.addEventListener("change", () => {
    uploadAll([...fileInput.files]);
    fileInput.value = "";
  });
  for (const name of ["dragenter", "dragover"]) {
    dropzone.addEventListener(name, (event) => {
      event.preventDefault();
      dropzone.classList.add("dragging");
    });
  }
  for (const name of ["dragleave", "drop"]) dropzone.addEventListener(name, () => dropzone.classList.remove("dragging"));
  dropzone.addEventListener("drop", (event) => {
    event.preventDefault();
    uploadAll([...event.dataTransfer.files]);
  });
  // Files dropped anywhere else on the page open the panel and upload too (instead of the browser opening them).
  window.addEventListener("dragover", (event) => event.preventDefault());
  window.addEventListener("drop", (event) => {
    event.preventDefault();
    if (event.dataTransfer?.files.length && !dropzone.contains(event.target)) {
      setOpen(true);
      uploadAll([...event.dataTransfer.files]);
    }
  });
  panel.addEventListener("keydown", (event) => {
    if (event.key === "Escape") {
      event.stopPropagation();
      setOpen(false);
      toggleButton.focus();
    }
  });
}

export function setOpen(open) {
  panel.hidden = !open;
  toggleButton.setAttribute("aria-expanded", String(open));
  document.body.classList.toggle("documents-open", open);
  if (open) {
    refresh();
    dropzone.focus();
  }
}

on("scope-changed", () => {
  for (const box of list.querySelectorAll("input.doc-scope")) {
    box.checked = state.scope.has(box.closest(".document").dataset.id);
  }
});

export async function refresh() {
  clearTimeout(pollTimer);
  const documents = await api("/api/v1/documents?limit=200");
  state.documents = documents;
  list.replaceChildren(...documents.map(row));
  $("#documents-empty").hidden = documents.length > 0;
  const count = $("#documents-count");
  count.hidden = documents.length === 0;
  count.textContent = String(documents.length);
  emit("documents-changed", documents);
  if (documents.some((d) => d.status === "pending" || d.status === "processing")) {
    pollTimer = setTimeout(() => refresh().catch(() => {}), 1500);
  }
}

const STATUS = { pending: "Queued", processing: "Processing", ready: "Ready", failed: "Failed" };

function row(doc) {
  const meta = [formatBytes(doc.size_bytes)];
  if (doc.pages) meta.push(`${doc.pages} page${doc.pages === 1 ? "" : "s"}`);
  if (doc.status === "ready") meta.push(`${doc.chunks} passages`);
  meta.push(timeAgo(doc.created_at));
  const busy = doc.status === "pending" || doc.status === "processing";
  return h("li", { class: `document status-${doc.status}`, dataset: { id: doc.id } },
    h("span", { class: "doc-icon" }, icon("file")),
    h("div", { class: "doc-main" },
      h("span", { class: "doc-name", title: doc.name }, doc.name),
      h("span", { class: "doc-meta muted small" }, meta.join(" · ")),
      doc.status === "failed" && doc.error
        ? h("span", { class: "doc-error small" }, doc.error) : null),
    doc.status === "ready" ? h("input", {
      type: "checkbox", class: "doc-scope", title: "Ask about this document only (with the others chosen)",
      "aria-label": `Ask about ${doc.name}`, checked: state.scope.has(doc.id),
      onchange: (event) => setInScope(doc, event.target.checked),
    }) : h("span", { class: "doc-scope" }),
    h("span", { class: `badge badge-${doc.status}` },
      busy ? h("span", { class: "spinner", "aria-hidden": "true" }) : null, STATUS[doc.status] ?? doc.status),
    h("button", {
      class: "icon-btn doc-open", type: "button", "aria-label": `Open ${doc.name}`, title: "Open the original",
      // A PDF opens at its first page, and gets its tab before the download (see openDocument).
      onclick: () => openDocument(doc.id, doc.name, doc.content_type === "application/pdf" ? 1 : null),
    }, icon("external")),
    h("button", {
      class: "icon-btn doc-delete", type: "button", "aria-label": `Delete ${doc.name}`, title: "Delete",
      onclick: () => remove(doc),
    }, icon("trash")));
}

async function remove(doc) {
  const confirmed = await confirmDialog({
    title: "Delete this document?",
    text: `“${doc.name}” leaves the index at once; answers already given keep their citations.`,
  });
  if (!confirmed) return;
  await api(`/api/v1/documents/${doc.id}`, { method: "DELETE" });
  toast("Document deleted");
  await refresh();
}

async function uploadAll(files) {
  await Promise.all(files.map(uploadOne));
  await refresh();
}

async function uploadOne(file) {
  const bar = h("span", { class: "progress-fill" });
  const status = h("span", { class: "upload-status small muted" }, "Uploading…");
  const progress = h("span", {
    class: "progress", role: "progressbar", "aria-label": `Uploading ${file.name}`,
    "aria-valuemin": "0", "aria-valuemax": "100", "aria-valuenow": "0",
  }, bar);
  const item = h("li", { class: "upload" }, h("span", { class: "upload-name" }, file.name), progress, status);
  uploads.append(item);
  try {
    const doc = await upload(file, (fraction) => {
      const percent = Math.round(fraction * 100);
      bar.style.width = `${percent}%`;
      progress.setAttribute("aria-valuenow", String(percent));
      status.textContent = percent < 100 ? `${percent}%` : "Processing…";
    });
    bar.style.width = "100%";
    item.remove();
    toast(doc.status === "ready" ? `“${doc.name}” is already here` : `“${doc.name}” uploaded`);
  } catch (error) {
    item.classList.add("failed");
    status.textContent = error.message;
    status.classList.remove("muted");
    item.append(h("button", {
      class: "icon-btn", type: "button", "aria-label": `Dismiss ${file.name}`, onclick: () => item.remove(),
    }, icon("x")));
  }
}

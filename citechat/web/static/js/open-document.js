// Opening a document's original file (``GET /api/v1/documents/{id}/file``) from the page: from a source card, at
// the cited page, or from the documents panel.

import { documentFile } from "./api.js";
import { download, toast } from "./dom.js";

// The newest blob URL of each document opened: replaced (and released) when it is opened again, so a page open
// all day holds one copy of each document it showed, not one per click. All are released with the page.
const openedUrls = new Map();

/** Opens a document in a new tab, to check a passage against the original: a PDF at ``page`` when given
 * (``#page=N``, which browsers' PDF viewers honour), Markdown and text as plain text. HTML and DOCX are downloaded
 * instead: shown from a blob of this page, an uploaded HTML page would run as part of citechat. */
export async function openDocument(id, name, page = null) {
  // A PDF (the only format with pages) gets its tab now, while the click still counts as the user's: after a long
  // download a popup blocker would stop it. Other files are small, and may be downloaded rather than shown.
  const tab = page ? window.open("", "_blank") : null;
  try {
    const file = await documentFile(id);
    const pdf = file.type === "application/pdf";
    if (!pdf && file.type !== "text/plain" && file.type !== "text/markdown") {
      tab?.close();
      download(file.blob, file.name);
      return;
    }
    const url = URL.createObjectURL(new Blob([file.blob], { type: pdf ? file.type : "text/plain;charset=utf-8" }));
    URL.revokeObjectURL(openedUrls.get(id));
    openedUrls.set(id, url);
    const target = pdf && page ? `${url}#page=${page}` : url;
    const shown = tab ?? window.open("", "_blank");
    if (!shown) {
      toast("Allow pop-ups for this site to open documents in a new tab.", "error");
      return;
    }
    shown.opener = null;
    shown.location.href = target;
  } catch (error) {
    tab?.close();
    const reason = error.status === 404 ? "it has been deleted" : error.message;
    toast(`Could not open ${name}: ${reason}.`, "error");
  }
}

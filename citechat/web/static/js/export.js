// A chat saved as a Markdown file: every question and answer, each answer followed by the sources it cites (the
// same text Copy puts on the clipboard), so that the file reads on its own.

import { api } from "./api.js";
import { download, toast } from "./dom.js";
import { answerWithSources } from "./message-view.js";

const PAGE = 200; // messages per request (the API's largest page)

/** Downloads ``session`` as ``<title>.md``. */
export async function exportSession(session) {
  try {
    const text = markdown(session, await allMessages(session.id));
    download(new Blob([text], { type: "text/markdown;charset=utf-8" }), `${fileName(session.title)}.md`);
  } catch (error) {
    toast(`Could not export the chat: ${error.message}`, "error");
  }
}

/** Every message of the session, oldest first (the API hands them out newest page first). */
async function allMessages(sessionId) {
  const pages = [];
  let before = null;
  for (;;) {
    const query = new URLSearchParams({ limit: PAGE });
    if (before) query.set("before", before);
    const page = await api(`/api/v1/chat/session/${sessionId}/messages?${query}`);
    pages.unshift(page);
    if (page.length < PAGE) return pages.flat();
    before = page[0].id;
  }
}

function markdown(session, messages) {
  const parts = [`# ${session.title}`, `Exported from citechat on ${new Date().toLocaleString()}.`];
  for (const message of messages) {
    if (message.role === "user") parts.push(`**You:** ${message.content}`);
    else if (message.status === "failed") parts.push(`**citechat:** (the answer failed: ${message.error_message})`);
    else parts.push(`**citechat:** ${answerWithSources(message).trimEnd()}`);
  }
  return `${parts.join("\n\n")}\n`;
}

/** A title as a file name: no path separators or characters file systems refuse. */
function fileName(title) {
  return (title.replace(/[\\/:*?"<>|\u0000-\u001f]+/g, " ").trim() || "chat").slice(0, 100);
}

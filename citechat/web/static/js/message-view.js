// How one message looks: the user's question, and an answer that goes thinking -> streaming -> completed, failed,
// stopped or rate-limited. Views only draw; conversation.js decides what happens.

import { h, icon, timeAgo, toast } from "./dom.js";
import { renderMarkdown } from "./markdown.js";
import { cardId, isUnsupported, pageText, sourcesBlock } from "./sources.js";

let counter = 0;

export function userMessage(text, { pending = false } = {}) {
  return h("article", { class: `msg msg-user${pending ? " pending" : ""}`, "aria-label": "Your question" },
    h("div", { class: "bubble" }, text));
}

export function markUnsent(el, reason) {
  el.classList.remove("pending");
  el.classList.add("unsent");
  el.append(h("p", { class: "unsent-note" }, reason));
}

export class AnswerView {
  constructor(id = null) {
    this.id = id;
    this.key = `a${++counter}`; // DOM ids of this answer's cards
    this.text = "";
    this.sources = [];
    this.final = false;
    this.frame = 0;
    this.status = h("div", { class: "answer-status" });
    this.content = h("div", { class: "markdown" });
    this.notice = h("div", { class: "answer-notice" });
    this.sourcesSlot = h("div", { class: "sources-slot" });
    this.el = h("article", { class: "msg msg-assistant", "aria-label": "Answer", dataset: { key: this.key } },
      h("div", { class: "avatar-bot", "aria-hidden": "true" }, icon("logo")),
      h("div", { class: "answer-body" }, this.status, this.content, this.notice, this.sourcesSlot));
    if (id) this.el.dataset.id = id;
  }

  setId(id) {
    this.id = id;
    this.el.dataset.id = id;
  }

  /** The animated "thinking" line shown until the first token. */
  thinking(label = "Searching your documents") {
    this.el.setAttribute("aria-busy", "true");
    this.el.dataset.state = "thinking";
    this.notice.replaceChildren();
    this.status.replaceChildren(h("span", { class: "thinking" },
      h("span", { class: "dots", "aria-hidden": "true" }, h("i"), h("i"), h("i")), label));
  }

  setSources(sources, final = false) {
    this.sources = sources ?? [];
    this.sourcesSlot.replaceChildren(sourcesBlock(this.sources, { key: this.key, final }) ?? "");
    if (!final && this.el.dataset.state === "thinking") this.thinking("Writing the answer");
  }

  appendToken(delta) {
    if (this.el.dataset.state !== "streaming") {
      this.el.dataset.state = "streaming";
      this.status.replaceChildren();
    }
    this.text += delta;
    if (!this.frame) this.frame = requestAnimationFrame(() => this.render());
  }

  render() {
    cancelAnimationFrame(this.frame);
    this.frame = 0;
    renderMarkdown(this.content, this.text, (n) => this.citation(n));
  }

  citation(n) {
    const source = this.sources.find((s) => s.rank === n);
    if (!source) return null;
    const page = pageText(source);
    const unsupported = this.final && isUnsupported(source);
    const label = `Source ${n}: ${source.document_name}${page ? `, ${page}` : ""}` +
      (unsupported ? " (not clearly supported)" : "");
    return { href: `#${cardId(this.key, n)}`, label, unsupported };
  }

  /** Shows a stored or just finished message in whatever state it is in. */
  show(message, handlers = {}) {
    if (message.id) this.setId(message.id);
    this.text = message.content ?? "";
    this.final = ["completed", "failed", "stopped"].includes(message.status);
    this.sources = message.sources ?? [];
    this.render();
    this.setSources(message.status === "failed" ? [] : this.sources, this.final); // a failed answer cites nothing
    this.status.replaceChildren();
    this.notice.replaceChildren();
    this.el.dataset.state = message.status;
    this.el.removeAttribute("aria-busy");
    if (message.status === "failed") {
      this.error(message.error_message || "The answer failed.", handlers.retry);
    } else if (message.status === "stopped") {
      this.notice.append(h("div", { class: "stopped-note" }, "Stopped.",
        handlers.retry ? retryButton(handlers.retry, "Regenerate") : null));
    } else if (message.status === "completed") {
      this.footer(message);
    }
  }

  footer(message) {
    const bits = [];
    if (message.metadata?.mode) bits.push(capitalize(message.metadata.mode));
    if (message.model_used) bits.push(message.model_used);
    const asked = message.metadata?.documents?.length;
    if (asked) bits.push(`asked about ${asked} document${asked === 1 ? "" : "s"}`);
    if (message.processing_time_ms) bits.push(`${(message.processing_time_ms / 1000).toFixed(1)} s`);
    if (message.created_at) bits.push(timeAgo(message.created_at));
    const copy = h("button", {
      class: "icon-btn copy-answer", type: "button", title: "Copy the answer with its sources",
      "aria-label": "Copy the answer with its sources", onclick: () => copyAnswer(message),
    }, icon("copy"));
    this.notice.append(h("div", { class: "answer-footer" },
      bits.length ? h("p", { class: "answer-meta muted small" }, bits.join(" · ")) : null, copy));
  }

  error(detail, retry) {
    this.el.dataset.state = "failed";
    this.el.removeAttribute("aria-busy");
    this.status.replaceChildren();
    this.sourcesSlot.replaceChildren();
    this.notice.replaceChildren(h("div", { class: "error-box", role: "alert" },
      icon("alert"), h("div", { class: "error-text" }, h("strong", {}, "The answer failed. "), capitalize(detail)),
      retry ? retryButton(retry) : null));
  }

  /** A 429: what the limit is and when it resets. */
  rateLimited(text) {
    this.el.dataset.state = "limited";
    this.el.removeAttribute("aria-busy");
    this.status.replaceChildren();
    this.notice.replaceChildren(h("div", { class: "error-box warn", role: "alert" },
      icon("alert"), h("div", { class: "error-text rate-limit" }, text)));
  }

  reconnecting(on) {
    this.el.classList.toggle("reconnecting", on);
    const existing = this.el.querySelector(".reconnect-note");
    if (!on) return existing?.remove();
    if (!existing) {
      this.status.after(h("p", { class: "reconnect-note", role: "status" }, icon("wifi"),
        "Connection lost. Reconnecting…"));
    }
  }
}

/** The answer as its Markdown, followed by the sources it cites ("[1] name, page 3"), so that the citations
 * still point somewhere once pasted into a report. */
export function answerWithSources(message) {
  const cited = (message.sources ?? []).filter((s) => s.cited).sort((a, b) => (a.rank ?? 0) - (b.rank ?? 0));
  const lines = cited.map((s) => {
    const page = pageText(s);
    return `[${s.rank}] ${s.document_name}${page ? `, ${page}` : ""}${isUnsupported(s) ? " (not clearly supported)" : ""}`;
  });
  return lines.length ? `${message.content}\n\nSources:\n${lines.join("\n")}\n` : `${message.content}\n`;
}

async function copyAnswer(message) {
  const text = answerWithSources(message);
  try {
    await navigator.clipboard.writeText(text);
  } catch {
    // No clipboard API (a page served over plain HTTP by another name than localhost): the older way.
    const area = h("textarea", { class: "sr-only", readonly: "" }, text);
    document.body.append(area);
    area.select();
    const copied = document.execCommand("copy");
    area.remove();
    if (!copied) return toast("Could not copy: the browser refused.", "error");
  }
  toast("Answer copied with its sources");
}

function retryButton(onClick, label = "Retry") {
  return h("button", { class: "btn btn-small btn-outline retry", type: "button", onclick: onClick }, icon("retry"), label);
}

const capitalize = (text) => text.charAt(0).toUpperCase() + text.slice(1);

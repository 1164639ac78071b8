// Source cards under an answer: document, page or page range, passage, relevance; cited ones first, the others
// folded away; a citation the passage does not back is flagged on the card and on its inline link.

import { h, icon } from "./dom.js";
import { openDocument } from "./open-document.js";

/** "page 3", "pages 3–4", "page iv (PDF page 5)", or null for formats without pages. */
export function pageText(source) {
  const first = source.page_number;
  if (first === null || first === undefined) return null;
  const last = source.end_page;
  if (last && last !== first) return `pages ${first}–${last}`;
  const label = source.page_label;
  if (label && label !== String(first)) return `page ${label} (PDF page ${first})`;
  return `page ${first}`;
}

export function relevanceText(score) {
  if (typeof score !== "number") return null;
  return score >= 0 && score <= 1 ? `${Math.round(score * 100)}%` : score.toFixed(2);
}

export const isUnsupported = (source) => source.cited && source.supported === false;

/** The sources block of one answer. ``final``: the answer is done, so cited/uncited is known. */
export function sourcesBlock(sources, { key, final }) {
  if (!sources?.length) return null;
  const ordered = [...sources].sort((a, b) => (a.rank ?? 0) - (b.rank ?? 0));
  if (!final) {
    return h("details", { class: "sources sources-pending" },
      h("summary", {}, `Found ${ordered.length} passage${ordered.length === 1 ? "" : "s"}`),
      h("ul", { class: "source-grid" }, ordered.map((s) => card(s, key, false))));
  }
  const cited = ordered.filter((s) => s.cited);
  const other = ordered.filter((s) => !s.cited);
  const flagged = cited.filter(isUnsupported).length;
  const block = h("section", { class: "sources", "aria-label": "Sources" });
  const heading = h("h3", { class: "sources-title" }, icon("quote"),
    cited.length ? `Sources · ${cited.length} cited` : "No sources cited");
  if (flagged) heading.append(h("span", { class: "flag-count" }, icon("alert"), `${flagged} not clearly supported`));
  block.append(heading);
  if (cited.length) block.append(h("ul", { class: "source-grid" }, cited.map((s) => card(s, key, true))));
  if (other.length) {
    const label = `${other.length} more passage${other.length === 1 ? "" : "s"} retrieved, not cited`;
    block.append(h("details", { class: "more-sources" }, h("summary", {}, label),
      h("ul", { class: "source-grid" }, other.map((s) => card(s, key, true)))));
  }
  return block;
}

export const cardId = (key, rank) => `src-${key}-${rank}`;

function card(source, key, final) {
  const page = pageText(source);
  const relevance = relevanceText(source.relevance_score);
  const unsupported = final && isUnsupported(source);
  const classes = ["source", final ? (source.cited ? "cited" : "uncited") : "", unsupported ? "unsupported" : ""];
  const text = source.chunk_text ?? "";
  const passage = h("p", { class: "source-text" }, text);
  // The page is the way to the original: it opens the document there (formats without pages open at the top).
  const open = source.ragie_document_id ? h("button", {
    class: `source-open${page ? " source-page" : ""}`,
    type: "button",
    title: "Open the document to check the passage",
    "aria-label": `Open ${source.document_name}${page ? ` at ${page}` : ""}`,
    onclick: () => openDocument(source.ragie_document_id, source.document_name, source.page_number),
  }, page ?? "Open document", icon("external")) : null;
  const details = h("span", { class: "source-details" },
    open ?? (page ? h("span", { class: "source-page" }, page) : null),
    relevance ? h("span", { class: "source-score", title: "Relevance to the question" },
      h("span", { class: "meter", "aria-hidden": "true" }, h("span", { class: "meter-fill" })),
      `${relevance} relevant`) : null);
  const item = h("li", { class: classes.join(" ").trim(), id: cardId(key, source.rank), tabindex: "-1" },
    h("div", { class: "source-top" },
      h("span", { class: "source-rank", "aria-label": `Source ${source.rank}` }, String(source.rank ?? "")),
      h("span", { class: "source-icon" }, icon("file")),
      h("div", { class: "source-title" },
        h("span", { class: "source-name", title: source.document_name }, source.document_name),
        details)),
    passage);
  const fill = item.querySelector(".meter-fill");
  if (fill && typeof source.relevance_score === "number") {
    fill.style.width = `${Math.max(4, Math.min(100, source.relevance_score * 100))}%`;
  }
  if (unsupported) {
    item.append(h("p", { class: "source-flag" }, icon("alert"),
      "The sentence citing this is not clearly supported by the passage."));
  }
  if (text.length > 180) {
    const toggle = h("button", { class: "source-expand", type: "button", "aria-expanded": "false" }, "Show full passage");
    toggle.addEventListener("click", () => {
      const open = item.classList.toggle("expanded");
      toggle.setAttribute("aria-expanded", String(open));
      toggle.textContent = open ? "Show less" : "Show full passage";
    });
    item.append(toggle);
  }
  return item;
}

let highlightTimer = 0;

/** Scrolls to card ``n`` of an answer, unfolding it if needed, and highlights it for a moment. */
export function revealCard(card) {
  const folded = card.closest("details");
  if (folded) folded.open = true;
  const smooth = !window.matchMedia("(prefers-reduced-motion: reduce)").matches;
  card.scrollIntoView({ behavior: smooth ? "smooth" : "auto", block: "center" });
  for (const lit of document.querySelectorAll(".source.highlight")) lit.classList.remove("highlight");
  clearTimeout(highlightTimer);
  card.classList.add("highlight");
  highlightTimer = setTimeout(() => card.classList.remove("highlight"), 2000);
  card.focus({ preventScroll: true });
}

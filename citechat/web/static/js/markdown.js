// Answers are Markdown. marked turns them into HTML in which any raw HTML of the answer is escaped (so a document
// that says "<script>" shows those characters), and DOMPurify then keeps only a short list of formatting tags and
// attributes, as a second lock. Citation markers "[1]" / "[1, 3]" become links to the source cards, built as nodes.

import { Marked } from "../vendor/marked.js";
import DOMPurify from "../vendor/purify.js";

const escapeHtml = (text) =>
  text.replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);

const marked = new Marked({
  gfm: true,
  breaks: false,
  renderer: {
    html: ({ text }) => escapeHtml(text), // raw HTML in an answer is shown as text, never parsed
    image: ({ text }) => escapeHtml(text || ""), // no remote images: they would leak who reads what
  },
});

const PURIFY = {
  ALLOWED_TAGS: [
    "p", "br", "strong", "em", "del", "code", "pre", "blockquote", "ul", "ol", "li", "a", "hr",
    "h1", "h2", "h3", "h4", "h5", "h6", "table", "thead", "tbody", "tr", "th", "td",
  ],
  ALLOWED_ATTR: ["href", "title", "start", "align"],
  ALLOWED_URI_REGEXP: /^(?:https?:|mailto:|#)/i,
  RETURN_DOM_FRAGMENT: true,
};

const MARKERS = /\[\s*\d+(?:\s*,\s*\d+)*\s*\]/g;
const HAS_MARKER = /\[\s*\d+(?:\s*,\s*\d+)*\s*\]/;

/**
 * Renders ``text`` into ``container`` (replacing what was there).
 * ``cite(n)`` returns {href, label, unsupported} for a citation number, or null when there is no such source.
 */
export function renderMarkdown(container, text, cite) {
  const fragment = DOMPurify.sanitize(marked.parse(text ?? ""), PURIFY);
  for (const link of fragment.querySelectorAll("a[href]")) {
    link.target = "_blank";
    link.rel = "noopener noreferrer nofollow";
  }
  linkCitations(fragment, cite);
  container.replaceChildren(fragment);
}

function linkCitations(root, cite) {
  const walker = document.createTreeWalker(root, NodeFilter.FILTER_SHOW_TEXT, {
    acceptNode: (node) =>
      node.parentElement?.closest("code, pre, a") ? NodeFilter.FILTER_REJECT : NodeFilter.FILTER_ACCEPT,
  });
  const nodes = [];
  while (walker.nextNode()) if (HAS_MARKER.test(walker.currentNode.nodeValue)) nodes.push(walker.currentNode);
  for (const node of nodes) node.replaceWith(splitMarkers(node.nodeValue, cite));
}

function splitMarkers(text, cite) {
  const out = document.createDocumentFragment();
  let last = 0;
  for (const match of text.matchAll(MARKERS)) {
    out.append(text.slice(last, match.index));
    const numbers = match[0].match(/\d+/g).map(Number);
    const group = document.createElement("span");
    group.className = "cites";
    for (const n of numbers) {
      const target = cite(n);
      if (!target) {
        group.append(document.createTextNode(`[${n}]`));
        continue;
      }
      const link = document.createElement("a");
      link.className = target.unsupported ? "cite unsupported" : "cite";
      link.href = target.href;
      link.dataset.cite = String(n);
      link.textContent = String(n);
      link.setAttribute("aria-label", target.label);
      link.title = target.label;
      group.append(link);
    }
    out.append(group);
    last = match.index + match[0].length;
  }
  out.append(text.slice(last));
  return out;
}

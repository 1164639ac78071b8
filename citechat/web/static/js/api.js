// The HTTP side of the page: JSON calls with the bearer token, Server-Sent Events read from fetch (EventSource can
// neither POST nor send headers), and uploads through XMLHttpRequest (fetch reports no upload progress).

const TOKEN_KEY = "citechat.token";
const ORG_KEY = "citechat.org";
export const DRAFT_PREFIX = "citechat.draft."; // + session id: a question typed and not sent yet

export const auth = {
  token: localStorage.getItem(TOKEN_KEY),
  org: localStorage.getItem(ORG_KEY),

  get claims() {
    return this.token ? decodeClaims(this.token) : null;
  },

  save(token, org) {
    this.token = token;
    this.org = org;
    localStorage.setItem(TOKEN_KEY, token);
    if (org) localStorage.setItem(ORG_KEY, org);
    else localStorage.removeItem(ORG_KEY);
  },

  clear() {
    this.token = this.org = null;
    localStorage.removeItem(TOKEN_KEY);
    localStorage.removeItem(ORG_KEY);
    for (const key of Object.keys(localStorage)) {
      if (key.startsWith(DRAFT_PREFIX)) localStorage.removeItem(key); // unsent questions leave with the user
    }
  },
};

/** The token's claims, unverified (the server verifies; the page only shows who and which organizations). */
export function decodeClaims(token) {
  try {
    const payload = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const json = decodeURIComponent(
      [...atob(payload)].map((c) => "%" + c.charCodeAt(0).toString(16).padStart(2, "0")).join(""),
    );
    const claims = JSON.parse(json);
    return typeof claims === "object" && claims ? claims : null;
  } catch {
    return null;
  }
}

/** A refused request: ``status``, the server's ``detail`` as text, and the rest of its JSON body. */
export class ApiError extends Error {
  constructor(status, body, headers) {
    super(describe(status, body));
    this.status = status;
    this.body = body ?? {};
    const retryAfter = Number(headers?.get?.("Retry-After") ?? this.body.retry_after);
    this.retryAfter = Number.isFinite(retryAfter) ? retryAfter : null;
  }
}

/** The connection itself failed (offline, server gone): worth trying again. */
export class NetworkError extends Error {}

function describe(status, body) {
  const detail = body?.detail;
  if (typeof detail === "string") return detail;
  if (Array.isArray(detail)) {
    return detail.map((d) => (d.loc ? `${d.loc.filter((p) => p !== "body").join(".")}: ${d.msg}` : d.msg)).join("; ");
  }
  return status >= 500 ? "the server had a problem; try again" : `request failed (${status})`;
}

function headers(extra = {}) {
  const result = { ...extra };
  if (auth.token) result.Authorization = `Bearer ${auth.token}`;
  if (auth.org) result["X-Organization-ID"] = auth.org;
  return result;
}

function unauthorized() {
  window.dispatchEvent(new CustomEvent("citechat:unauthorized"));
}

async function request(path, { method = "GET", body, signal, extraHeaders } = {}) {
  const init = { method, signal, headers: headers(extraHeaders) };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["Content-Type"] = "application/json";
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new NetworkError("no connection to the server");
  }
  if (!response.ok) {
    const data = await response.json().catch(() => null);
    if (response.status === 401 && auth.token) unauthorized();
    throw new ApiError(response.status, data, response.headers);
  }
  return response;
}

/** JSON in, JSON out; null for 204. */
export async function api(path, options = {}) {
  const response = await request(path, options);
  if (response.status === 204) return null;
  return response.json();
}

/** A document's file as uploaded: ``{blob, type, name}`` (``type`` without parameters, ``name`` as the server
 * suggests saving it). Fetched with the token, which a plain link could not send. */
export async function documentFile(id) {
  const response = await request(`/api/v1/documents/${encodeURIComponent(id)}/file`);
  const type = (response.headers.get("Content-Type") ?? "").split(";")[0].trim();
  const named = /filename\*=UTF-8''([^;]+)/.exec(response.headers.get("Content-Disposition") ?? "");
  return { blob: await response.blob(), type, name: named ? decodeURIComponent(named[1]) : "document" };
}

/** Opens an event stream (POST with a JSON body, or GET); the caller reads it with ``events()``. */
export async function openStream(path, { method = "POST", body, lastEventId, signal } = {}) {
  const extraHeaders = { Accept: "text/event-stream" };
  if (lastEventId !== null && lastEventId !== undefined) extraHeaders["Last-Event-ID"] = String(lastEventId);
  return request(path, { method, body, signal, extraHeaders });
}

/** The events of a text/event-stream response: {id, event, data}. Comments (heartbeats) are skipped. Ends when
 * the server closes the stream; throws NetworkError when the connection breaks. */
export async function* events(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  try {
    for (;;) {
      let chunk;
      try {
        chunk = await reader.read();
      } catch (error) {
        if (error.name === "AbortError") throw error;
        throw new NetworkError("the connection was lost");
      }
      if (chunk.done) return;
      buffer += chunk.value.replace(/\r\n?/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const event = parseBlock(block);
        if (event) yield event;
      }
    }
  } finally {
    reader.cancel().catch(() => {});
  }
}

function parseBlock(block) {
  let id = null;
  let name = "message";
  const data = [];
  for (const line of block.split("\n")) {
    if (!line || line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (field === "id") id = Number(value);
    else if (field === "event") name = value;
    else if (field === "data") data.push(value);
  }
  if (!data.length) return null;
  try {
    return { id, event: name, data: JSON.parse(data.join("\n")) };
  } catch {
    return null;
  }
}

/** Uploads one file as multipart ``file``; ``onProgress(fraction)`` while it is sent. Resolves the document JSON. */
export function upload(file, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", "/api/v1/documents");
    for (const [name, value] of Object.entries(headers())) xhr.setRequestHeader(name, value);
    xhr.responseType = "json";
    xhr.upload.addEventListener("progress", (event) => {
      if (event.lengthComputable) onProgress(event.loaded / event.total);
    });
    xhr.addEventListener("load", () => {
      if (xhr.status >= 200 && xhr.status < 300) return resolve(xhr.response);
      if (xhr.status === 401) unauthorized();
      const retry = { get: (name) => xhr.getResponseHeader(name) };
      reject(new ApiError(xhr.status, xhr.response, retry));
    });
    xhr.addEventListener("error", () => reject(new NetworkError("the upload was interrupted")));
    const form = new FormData();
    form.append("file", file, file.name);
    xhr.send(form);
  });
}

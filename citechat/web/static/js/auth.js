// Signing in: paste a bearer token (checked by one API call), or, when the server offers it (local embedded mode
// only), get a development token for a named user.

import { ApiError, api, auth, decodeClaims } from "./api.js";
import { $, h } from "./dom.js";

const screen = $("#signin");
const notice = $("#signin-notice");
const tokenInput = $("#token-input");
const orgSelect = $("#token-org");

/** Shows the sign-in screen; resolves once signed in. */
export function signIn(message = null) {
  screen.hidden = false;
  $("#app").hidden = true;
  notice.hidden = !message;
  notice.textContent = message ?? "";
  offerDevTokens();
  return new Promise((resolve) => {
    const done = () => {
      screen.hidden = true;
      resolve();
    };
    $("#token-form").onsubmit = (event) => {
      event.preventDefault();
      useToken(tokenInput.value.trim(), orgSelect.value || null).then((ok) => ok && done());
    };
    $("#dev-form").onsubmit = async (event) => {
      event.preventDefault();
      const user = $("#dev-user").value.trim();
      const org = $("#dev-org").value.trim();
      try {
        const issued = await api("/api/v1/auth/dev-token", { method: "POST", body: { user, org } });
        localStorage.setItem("citechat.dev", JSON.stringify({ user, org }));
        if (await useToken(issued.token, org)) done();
      } catch (error) {
        show(error.message);
      }
    };
  });
}

tokenInput.addEventListener("input", () => {
  const orgs = decodeClaims(tokenInput.value.trim())?.orgs;
  const several = Array.isArray(orgs) && orgs.length > 1;
  $("#token-org-label").hidden = !several;
  orgSelect.replaceChildren(...(several ? orgs.map((o) => h("option", { value: o }, o)) : []));
});

async function offerDevTokens() {
  const saved = JSON.parse(localStorage.getItem("citechat.dev") ?? "null");
  if (saved) {
    $("#dev-user").value = saved.user;
    $("#dev-org").value = saved.org;
  }
  try {
    await api("/api/v1/auth/dev-token");
    $("#dev-signin").hidden = false;
    $("#dev-user").focus();
  } catch {
    $("#dev-signin").hidden = true; // 404: not local embedded mode
    tokenInput.focus();
  }
}

function show(message) {
  notice.hidden = false;
  notice.textContent = message;
}

/** Checks the token against the API (and the organization it picks) before keeping it. */
async function useToken(token, org) {
  const claims = decodeClaims(token);
  if (!claims) {
    show("That is not a token: it should look like eyJ… with two dots.");
    return false;
  }
  if (claims.exp && claims.exp * 1000 < Date.now()) {
    show("That token has expired. Make a new one.");
    return false;
  }
  const orgs = Array.isArray(claims.orgs) ? claims.orgs : [];
  const chosen = org ?? (orgs.length === 1 ? orgs[0] : null);
  const previous = { token: auth.token, org: auth.org };
  auth.token = token;
  auth.org = chosen;
  try {
    await api("/api/v1/chat/models");
  } catch (error) {
    auth.token = previous.token;
    auth.org = previous.org;
    show(error instanceof ApiError ? `Not accepted: ${error.message}` : error.message);
    return false;
  }
  auth.save(token, chosen);
  tokenInput.value = "";
  return true;
}

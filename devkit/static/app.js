// The development page's script: the cookie mode's smallest client. Every call is a plain
// fetch with the session cookie (same origin) and `X-CSRF: 1`; no token is ever seen here.
"use strict";

const $ = (id) => document.getElementById(id);

async function call(method, path, body) {
  const headers = { "X-CSRF": "1", Accept: "application/json, application/problem+json" };
  const init = { method, headers, credentials: "same-origin", cache: "no-store" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  const type = response.headers.get("Content-Type") || "";
  const data = type.includes("json") ? await response.json().catch(() => null) : null;
  return { status: response.status, ok: response.ok, data };
}

// A problem+json body as one readable message: title, detail, then one line per field.
function describe(result) {
  const problem = result.data || {};
  const lines = [`${problem.title || "Request failed"} (HTTP ${result.status})`];
  if (problem.detail) lines.push(problem.detail);
  for (const error of problem.errors || []) lines.push(`${error.field}: ${error.message}`);
  if (problem.request_id) lines.push(`request id ${problem.request_id}`);
  return lines.join("\n");
}

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

function showSignedOut(reason) {
  $("who").textContent = reason || "You are not signed in.";
  $("who").dataset.state = "signed-out";
  $("details").hidden = true;
  $("signin").hidden = false;
  $("signout").hidden = true;
  $("records").hidden = true;
  $("remote").hidden = true;
  $("remote-result").textContent = "";
  $("remote-result").dataset.state = "idle";
  $("patients").replaceChildren();
}

function showSignedIn(session) {
  const user = session.user || {};
  $("who").textContent = `Signed in as ${user.name || user.sub}`;
  $("who").dataset.state = "signed-in";
  $("who-sub").textContent = user.sub;
  $("who-email").textContent =
    (user.email || "no email") + (user.email_verified ? " (verified)" : " (not verified)");
  const when = (time) => (time ? new Date(time).toLocaleString() : "?");
  $("who-expires").textContent =
    `${when(session.idle_expires_at)} unless used; at the latest ${when(session.absolute_expires_at)}`;
  $("details").hidden = false;
  $("signin").hidden = true;
  $("signout").hidden = false;
  $("records").hidden = false;
  $("remote").hidden = false;
}

// The session is gone (signed out elsewhere, expired, back-channel logout): say so.
function handleUnauthorized(result) {
  if (result.status !== 401) return false;
  showSignedOut("Your session has ended. Sign in again.");
  return true;
}

async function loadSession() {
  let result;
  try {
    result = await call("GET", "/auth/session");
  } catch (error) {
    showSignedOut("The service does not answer.");
    showError(String(error));
    return false;
  }
  if (result.status === 401) {
    showSignedOut();
    return false;
  }
  if (!result.ok) {
    showSignedOut("Could not check your session.");
    showError(describe(result));
    return false;
  }
  showSignedIn(result.data);
  return true;
}

function patientItem(patient) {
  const item = document.createElement("li");
  item.dataset.id = patient.id;
  item.textContent = `${patient.family_name}, ${patient.given_name} (born ${patient.birth_date})`;
  return item;
}

async function loadPatients() {
  $("patients-status").textContent = "Loading…";
  const result = await call("GET", "/api/patients?limit=50");
  if (handleUnauthorized(result)) return;
  if (!result.ok) {
    $("patients-status").textContent = "";
    showError(describe(result));
    return;
  }
  const items = result.data.items || [];
  $("patients").replaceChildren(...items.map(patientItem));
  $("patients-status").textContent =
    items.length ? `${items.length} patient(s)${result.data.next_cursor ? " (first page)" : ""}`
      : "No patients yet.";
}

async function createPatient(event) {
  event.preventDefault();
  showError("");
  const form = $("create-form");
  const body = {
    given_name: form.elements.given_name.value,
    family_name: form.elements.family_name.value,
    birth_date: form.elements.birth_date.value,
  };
  $("create").disabled = true;
  try {
    const result = await call("POST", "/api/patients", body);
    if (handleUnauthorized(result)) return;
    if (!result.ok) {
      showError(describe(result));
      return;
    }
    form.reset();
    await loadPatients();
  } finally {
    $("create").disabled = false;
  }
}

// The stand-in lab system (devkit/upstream.py) answers who called it, from the token the
// service attached: its subject, audience and scheme, and the token's hash, never the token.
async function callRemote() {
  showError("");
  const box = $("remote-result");
  box.dataset.state = "loading";
  box.textContent = "Calling…";
  const result = await call("GET", "/remote/labs/whoami");
  if (handleUnauthorized(result)) return;
  if (!result.ok) {
    box.dataset.state = "failed";
    box.textContent = "";
    showError(describe(result));
    return;
  }
  const claims = (result.data && result.data.claims) || {};
  const audience = Array.isArray(claims.aud) ? claims.aud[0] : claims.aud;
  box.textContent =
    `The labs API was called for ${claims.sub} with a ${result.data.scheme} token for ` +
    `${audience} (SHA-256 ${String(result.data.token_sha256).slice(0, 12)}…).`;
  box.dataset.state = "done";
}

async function signOut() {
  showError("");
  const result = await call("POST", "/auth/logout");
  if (!result.ok) {
    if (!handleUnauthorized(result)) showError(describe(result));
    return;
  }
  showSignedOut("Signing out…");
  if (result.data && result.data.logout_url) {
    window.location.assign(result.data.logout_url);
  } else {
    showSignedOut("You are signed out.");
  }
}

document.addEventListener("DOMContentLoaded", async () => {
  $("create-form").addEventListener("submit", createPatient);
  $("signout").addEventListener("click", signOut);
  $("remote-call").addEventListener("click", callRemote);
  $("reload").addEventListener("click", () => {
    showError("");
    loadPatients();
  });
  if (await loadSession()) await loadPatients();
});

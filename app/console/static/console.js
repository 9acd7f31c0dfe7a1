// The console's one script: shows every UTC time also in the browser's timezone, and checks
// an event's inclusion proof in the browser (`checkProof`). The pages read without it;
// changes (POST with X-CSRF: 1) go through `consolePost`.
"use strict";

function showLocalTimes() {
  const format = new Intl.DateTimeFormat(undefined, {
    dateStyle: "medium",
    timeStyle: "medium",
  });
  for (const node of document.querySelectorAll("time[datetime]")) {
    const when = new Date(node.getAttribute("datetime"));
    if (Number.isNaN(when.getTime()) || node.dataset.local) {
      continue;
    }
    const local = document.createElement("span");
    local.className = "local";
    local.textContent = ` (${format.format(when)} local)`;
    node.after(local);
    node.dataset.local = "1";
  }
}

async function consolePost(path, body) {
  const response = await fetch(path, {
    method: "POST",
    credentials: "same-origin",
    headers: { "Content-Type": "application/json", "X-CSRF": "1" },
    body: JSON.stringify(body),
  });
  return response;
}

// Buttons with `data-post`: POST there (with `{roles: [...]}` when they name a role), say
// what happened in the #status live region, and show the page anew when it worked.
async function sendChange(button) {
  const status = document.getElementById("status");
  let role = button.dataset.role;
  if (button.dataset.roleFrom) {
    role = document.getElementById(button.dataset.roleFrom).value;
  }
  button.disabled = true;
  const response = await consolePost(button.dataset.post, role ? { roles: [role] } : {});
  if (response.ok) {
    status.textContent = "Done.";
    window.location.reload();
    return;
  }
  let detail = `${response.status}`;
  try {
    const problem = await response.json();
    detail = `${response.status}: ${problem.detail || problem.title}`;
  } catch (_) {
    // not a problem+json body: the status says enough
  }
  status.textContent = `Refused (${detail}).`;
  status.className = "error";
  button.disabled = false;
}

function wireButtons() {
  for (const button of document.querySelectorAll("button[data-post]")) {
    button.addEventListener("click", () => sendChange(button));
  }
}

// --- An event's inclusion proof, checked here (RFC 9162 2.1.3.2, C2SP signed notes) ---------

class ProofFailed extends Error {}

function fromBase64(text) {
  const binary = atob(text);
  return Uint8Array.from(binary, (c) => c.charCodeAt(0));
}

function fromHex(text) {
  if (!/^[0-9a-f]{64}$/.test(text)) {
    throw new ProofFailed("the event's hash on this page is not 32 bytes of hex");
  }
  return Uint8Array.from(text.match(/../g), (pair) => parseInt(pair, 16));
}

function joined(...parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.length;
  }
  return out;
}

function same(a, b) {
  return a.length === b.length && a.every((byte, i) => byte === b[i]);
}

async function sha256(...parts) {
  return new Uint8Array(await crypto.subtle.digest("SHA-256", joined(...parts)));
}

// The root that `path` leads to from leaf `index` (hash `leaf`) of the tree of `size`.
async function rootFromPath(index, size, leaf, path) {
  if (!(index >= 0 && index < size)) {
    throw new ProofFailed(`leaf ${index} is not in a tree of ${size} events`);
  }
  let fn = index;
  let sn = size - 1;
  let r = leaf;
  for (const p of path) {
    if (p.length !== 32) {
      throw new ProofFailed("a hash of the proof is not 32 bytes");
    }
    if (sn === 0) {
      throw new ProofFailed("the proof is longer than the tree allows");
    }
    if (fn % 2 === 1 || fn === sn) {
      r = await sha256(Uint8Array.of(1), p, r);
      if (fn % 2 === 0) {
        while (fn % 2 === 0 && fn !== 0) {
          fn = Math.floor(fn / 2);
          sn = Math.floor(sn / 2);
        }
      }
    } else {
      r = await sha256(Uint8Array.of(1), r, p);
    }
    fn = Math.floor(fn / 2);
    sn = Math.floor(sn / 2);
  }
  if (sn !== 0) {
    throw new ProofFailed("the proof is shorter than the tree needs");
  }
  return r;
}

// A signed note's text (origin, size, root lines) and its signature lines.
function readNote(note) {
  const cut = note.indexOf("\n\n");
  if (cut < 0 || !note.endsWith("\n")) {
    throw new ProofFailed("the checkpoint is not a signed note");
  }
  const text = note.slice(0, cut + 1);
  const [origin, size, root] = text.split("\n");
  if (!/^(0|[1-9][0-9]*)$/.test(size || "")) {
    throw new ProofFailed("the checkpoint's size line is malformed");
  }
  const signatures = note
    .slice(cut + 2, -1)
    .split("\n")
    .map((line) => line.match(/^\u2014 (\S+) (\S+)$/))
    .filter(Boolean)
    .map((m) => ({ name: m[1], stamp: m[2] }));
  return { text, origin, size: Number(size), root: fromBase64(root), signatures };
}

async function canVerifyEd25519() {
  try {
    const pair = await crypto.subtle.generateKey({ name: "Ed25519" }, false, ["sign", "verify"]);
    return Boolean(pair.publicKey);
  } catch (_) {
    return false;
  }
}

// The signer's kid when one of the published keys signed the note's text; else ProofFailed.
async function checkSignature(note) {
  const response = await fetch("/.well-known/audit-keys", { credentials: "same-origin" });
  if (!response.ok) {
    throw new ProofFailed(`the published keys could not be read (${response.status})`);
  }
  const keys = (await response.json()).keys || [];
  const text = new TextEncoder().encode(note.text);
  for (const { name, stamp } of note.signatures) {
    const jwk = keys.find((k) => k.kid === name && k.crv === "Ed25519");
    if (!jwk) {
      continue; // a witness's cosignature, or a key not published
    }
    const raw = fromBase64(jwk.x.replace(/-/g, "+").replace(/_/g, "/").padEnd(44, "="));
    const bytes = fromBase64(stamp);
    const hint = (await sha256(new TextEncoder().encode(`${name}\n`), Uint8Array.of(1), raw))
      .slice(0, 4);
    if (bytes.length !== 68 || !same(bytes.slice(0, 4), hint)) {
      continue;
    }
    const key = await crypto.subtle.importKey("raw", raw, { name: "Ed25519" }, false, ["verify"]);
    if (await crypto.subtle.verify({ name: "Ed25519" }, key, bytes.slice(4), text)) {
      return name;
    }
    throw new ProofFailed(`the checkpoint's signature by ${name} does not hold`);
  }
  throw new ProofFailed("the checkpoint carries no signature by a published key");
}

async function problemOf(response) {
  try {
    const problem = await response.json();
    return problem.detail || problem.title || `${response.status}`;
  } catch (_) {
    return `${response.status}`;
  }
}

async function proofVerdict(section) {
  const interval = Number(section.dataset.interval || 0);
  const next = interval
    ? `a checkpoint is issued with the next digest, within ${Math.ceil(interval / 60)} minute(s)`
    : "a checkpoint is issued with the next digest (python -m app audit digest)";
  const got = await fetch("/console/audit/checkpoint", { credentials: "same-origin" });
  if (got.status === 404) {
    return { state: "pending", text: `Not checked yet: your scope has no checkpoint; ${next}.` };
  }
  if (!got.ok) {
    throw new ProofFailed(`the checkpoint could not be read: ${await problemOf(got)}`);
  }
  const checkpoint = await got.json();
  const note = readNote(checkpoint.note);
  const path = `/console/audit/events/${section.dataset.event}/inclusion?size=${note.size}`;
  const answer = await fetch(path, { credentials: "same-origin" });
  if (answer.status === 404) {
    const why = await problemOf(answer);
    return { state: "pending", text: `Not checked yet: ${why}; ${next}.` };
  }
  if (!answer.ok) {
    throw new ProofFailed(`the proof could not be read: ${await problemOf(answer)}`);
  }
  const proof = await answer.json();
  if (proof.event_id !== section.dataset.event) {
    throw new ProofFailed("the proof is for another event");
  }
  if (proof.tree_size !== note.size) {
    throw new ProofFailed(`the proof is for ${proof.tree_size} events, the checkpoint ${note.size}`);
  }
  const leaf = await sha256(Uint8Array.of(0), fromHex(section.dataset.hash));
  if (!same(fromBase64(proof.leaf_hash), leaf)) {
    throw new ProofFailed("the proof is for another leaf than this event's hash");
  }
  let path_;
  try {
    path_ = proof.audit_path.map(fromBase64);
  } catch (_) {
    throw new ProofFailed("a hash of the proof is not base64");
  }
  const root = await rootFromPath(proof.leaf_index, proof.tree_size, leaf, path_);
  if (!same(root, note.root)) {
    throw new ProofFailed("the proof does not lead to the checkpoint's root");
  }
  const where = `checkpoint ${checkpoint.digest} (size ${note.size})`;
  const leafText = `leaf ${proof.leaf_index} of ${note.size}`;
  if (!(await canVerifyEd25519())) {
    return { state: "offline", text: `Path verified against ${where}, ${leafText}; the signature is checked offline (below).` };
  }
  const signer = await checkSignature(note);
  return { state: "verified", text: `Verified against ${where}: ${leafText}, signed by ${signer}.` };
}

async function checkProof(section, button) {
  const status = document.getElementById("proof-status");
  const offline = document.getElementById("proof-offline");
  button.disabled = true;
  status.className = "";
  status.textContent = "Checking…";
  try {
    const verdict = await proofVerdict(section);
    status.textContent = verdict.text;
    status.className = verdict.state === "pending" ? "" : "status-intact";
    offline.hidden = verdict.state !== "offline";
  } catch (error) {
    const reason = error instanceof ProofFailed ? error.message : `the check stopped (${error})`;
    status.textContent = `Check failed: ${reason}.`;
    status.className = "status-broken";
  }
  button.disabled = false;
}

function wireProof() {
  const section = document.getElementById("proof");
  const button = document.getElementById("check-proof");
  if (section && button) {
    button.addEventListener("click", () => checkProof(section, button));
  }
}

window.consolePost = consolePost;
document.addEventListener("DOMContentLoaded", () => {
  showLocalTimes();
  wireButtons();
  wireProof();
});

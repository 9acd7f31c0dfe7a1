// The console's one script: shows every UTC time also in the browser's timezone. The pages
// read without it; changes (POST with X-CSRF: 1) go through `consolePost`.
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

window.consolePost = consolePost;
document.addEventListener("DOMContentLoaded", () => {
  showLocalTimes();
  wireButtons();
});

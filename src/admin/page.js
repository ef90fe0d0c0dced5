// The admin page's script (page.html): served as a file of its own, so the page's policy
// allows no inline script.
"use strict";
// Everything shown comes from the API and is written with textContent: no markup from data.
const tokenKey = "usersync-admin-token";
const token = () => sessionStorage.getItem(tokenKey) || "";

async function api(method, path, body) {
  const headers = { "Accept": "application/json" };
  if (token()) headers["Authorization"] = "Bearer " + token();
  // Every call that changes something says it is JSON, with or without a body: the admin
  // server refuses any other, which is what keeps a form of another site from posting here.
  if (method !== "GET") headers["Content-Type"] = "application/json";
  const response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const json = await response.json().catch(() => ({}));
  if (response.status === 401) document.getElementById("token-dialog").classList.add("shown");
  return { status: response.status, ok: response.ok, json };
}

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  if (cls) node.className = cls;
  return node;
}

function renderCard(connection, checklist) {
  const card = document.getElementById("card-" + connection.side);
  card.replaceChildren();
  card.append(el("h3", connection.side === "salesforce" ? "Salesforce" : "Outreach"));
  const state = el("span", connection.state.replace("_", " "), "state " + connection.state);
  state.dataset.state = connection.state;
  card.append(state);
  if (connection.reason) card.append(" ", el("span", connection.reason, "reason"));
  if (connection.identity) card.append(el("p", "Authorized as " + connection.identity.username));
  card.append(el("p", "Since " + new Date(connection.since).toLocaleString()));
  if (connection.advice) card.append(el("p", connection.advice, "advice"));
  if (connection.upstream_error) card.append(el("p", "Upstream: " + connection.upstream_error));
  const lease = connection.subscriber;
  if (lease) {
    const words = lease.role === "active" ? `Subscriber ${lease.instance}: active, lease epoch ${lease.epoch}`
      : lease.role === "standby" ? `Subscriber ${lease.instance}: standby; ${lease.holder || "another instance"} streams`
      : `Subscriber ${lease.instance}: active (no lease kept)`;
    const line = el("p", words, "subscriber " + lease.role);
    line.dataset.role = lease.role;
    card.append(line);
  }
  const menu = el("div", undefined, "menu");
  const toggle = el("button", "…");
  toggle.setAttribute("aria-label", connection.side + " actions");
  toggle.onclick = () => menu.classList.toggle("open");
  const list = el("ul");
  const actions = [["Reconnect", "reconnect"], ["Authorize as another user…", "authorize"], ["Test connection", "test"], ["Disconnect", "disconnect"]];
  if (connection.side === "salesforce") actions.push(["Replay from…", "replay"]);
  for (const [label, action] of actions) {
    const item = el("li");
    const button = el("button", label);
    button.dataset.action = action;
    button.onclick = () => { menu.classList.remove("open"); act(connection.side, action); };
    item.append(button);
    list.append(item);
  }
  menu.append(toggle, list);
  card.append(menu);
  // The last checklist: the one just asked for, else the one kept on the connection (run at
  // start, after each reconnect, or by an earlier "Test connection").
  checklist = checklist || connection.last_check;
  if (checklist) {
    const verdict = checklist.passed ? "passed" : "failed";
    card.append(el("p", `Connection test ${verdict} at ${new Date(checklist.ran_at).toLocaleString()}`, "checked " + verdict));
    const steps = el("ul", undefined, "checklist");
    for (const step of checklist.steps) {
      const words = [step.step, step.detail, step.upstream_error].filter(Boolean).join(" — ");
      const line = el("li", words, step.outcome);
      steps.append(line);
    }
    card.append(steps);
  }
}

async function act(side, action) {
  if (action === "replay") { openReplay(); return; }
  if (action === "authorize") {
    // The provider's consent page; it sends the browser back to /oauth/{side}/callback.
    const answer = await api("GET", `/api/v1/connections/${side}/authorize`);
    if (answer.ok) location.assign(answer.json.authorize_url);
    else notice(answer.json.error ? answer.json.error.message : "Authorization could not start.", false);
    return;
  }
  const answer = await api("POST", `/api/v1/connections/${side}/${action}`);
  if (answer.json.connection) renderCard(answer.json.connection, answer.json.checklist);
  else if (answer.json.checklist) refreshStatus(side, answer.json.checklist);
}

// "Replay from…": the plan the API answers is shown first; Confirm sends the very same `from`.
// Changing the choice hides Confirm until the plan of the new choice is shown.
const replayDialog = document.getElementById("replay-dialog");
let replayPlanned = null;

function replayChoice() {
  const chosen = replayDialog.querySelector("input[name=replay-from]:checked").value;
  return chosen === "id" ? document.getElementById("replay-id").value.trim() : chosen;
}

function replayMessage(text, ok) {
  const message = document.getElementById("replay-message");
  message.textContent = text;
  message.className = "message " + (ok ? "ok" : "error");
}

function resetReplay() {
  replayPlanned = null;
  document.getElementById("replay-plan-text").replaceChildren();
  document.getElementById("replay-confirm").hidden = true;
  replayMessage("", true);
}

function openReplay() {
  resetReplay();
  replayDialog.hidden = false;
}

function planLine(label, text) {
  const line = el("p");
  line.append(el("span", label + ": ", "label"), text);
  return line;
}

for (const input of replayDialog.querySelectorAll("input")) input.addEventListener("input", resetReplay);
document.getElementById("replay-cancel").onclick = () => { resetReplay(); replayDialog.hidden = true; };
document.getElementById("replay-plan").onclick = async () => {
  resetReplay();
  const from = replayChoice();
  const answer = await api("POST", "/api/v1/replay", { from });
  if (!answer.ok) { replayMessage(answer.json.error ? answer.json.error.message : "No plan.", false); return; }
  const plan = answer.json.plan;
  const lines = document.getElementById("replay-plan-text");
  lines.append(el("p", `Replay from ${plan.from}.`), planLine("Now", plan.now), planLine("Read again", plan.rereads));
  if (plan.skipped) lines.append(planLine("Not read", plan.skipped));
  if (plan.checked) lines.append(planLine("Checked", plan.checked));
  lines.append(planLine("Then", plan.then));
  replayPlanned = from;
  document.getElementById("replay-confirm").hidden = false;
};
document.getElementById("replay-confirm").onclick = async () => {
  if (replayPlanned === null) return;
  const from = replayPlanned;
  const answer = await api("POST", "/api/v1/replay", { from, confirm: true });
  document.getElementById("replay-confirm").hidden = true;
  replayPlanned = null;
  if (answer.ok) replayMessage(`Replay requested: the Salesforce stream starts again from ${answer.json.plan.from}.`, true);
  else replayMessage(answer.json.error ? answer.json.error.message : "Not requested.", false);
};

async function refreshStatus(side, checklist) {
  const answer = await api("GET", "/api/v1/status");
  if (!answer.ok) return;
  for (const s of ["salesforce", "outreach"]) renderCard(answer.json.connections[s], s === side ? checklist : undefined);
}

const form = document.getElementById("settings");
async function loadSettings() {
  const answer = await api("GET", "/api/v1/settings");
  if (!answer.ok) return;
  const s = answer.json.settings;
  for (const name of ["inbound_create", "inbound_update", "auto_remap_on_inactive", "lock_when_inactive"]) form.elements[name].checked = s.user_mapping[name];
  form.elements.mirror_id_field.value = s.user_mapping.mirror_id_field;
  form.elements.dedupe.value = s.email_field.dedupe;
}
form.onsubmit = async (event) => {
  event.preventDefault();
  const body = {
    user_mapping: {
      inbound_create: form.elements.inbound_create.checked,
      inbound_update: form.elements.inbound_update.checked,
      auto_remap_on_inactive: form.elements.auto_remap_on_inactive.checked,
      lock_when_inactive: form.elements.lock_when_inactive.checked,
      mirror_id_field: form.elements.mirror_id_field.value,
    },
    email_field: { dedupe: form.elements.dedupe.value },
  };
  const answer = await api("PUT", "/api/v1/settings", body);
  const message = document.getElementById("settings-message");
  if (answer.ok) { message.textContent = "Saved."; message.className = "message ok"; }
  else { message.textContent = answer.json.error ? answer.json.error.message : "Not saved."; message.className = "message error"; await loadSettings(); }
};

// Each side's connection as the feed last showed it.
const lastSeen = {};

// " by <name>" for what an admin did by hand (the name of the token that asked); nothing for
// the processor's decisions.
const by = (actor) => actor ? " by " + actor : "";

// An admin action in words: what, on which side or from where.
function adminActionWords(a) {
  const side = a.detail && a.detail.side ? " " + a.detail.side : "";
  const from = a.detail && a.detail.from ? " from " + a.detail.from : "";
  return `${a.action}${side}${from}`;
}

function feedLine(message) {
  if (message.type === "decision") {
    const d = message.decision;
    const line = el("li", `${d.action} ${d.email || ""} — ${d.message}${by(d.actor)}`);
    line.dataset.action = d.action;
    return line;
  }
  if (message.type === "connection") {
    const c = message.connection;
    renderCard(c);
    const before = lastSeen[c.side];
    lastSeen[c.side] = c;
    // A checklist that ran is announced as the same connection with a newer last_check.
    const sameState = before && before.state === c.state && before.reason === c.reason;
    if (sameState && c.last_check && (!before.last_check || before.last_check.ran_at !== c.last_check.ran_at)) {
      return el("li", `connection test ${c.side}: ${c.last_check.passed ? "passed" : "failed"}`);
    }
    return el("li", `connection ${c.side}: ${c.state}${c.reason ? " (" + c.reason + ")" : ""}`);
  }
  if (message.type === "admin_action") {
    const a = message.admin_action;
    const line = el("li", `admin ${adminActionWords(a)}${by(a.actor)}`);
    line.dataset.adminAction = a.action;
    showAdminAction(a, true);
    return line;
  }
  return el("li", JSON.stringify(message));
}

// One feed socket at a time: a retry after a close and a start after the token was given
// must not open a second one (every line would show twice).
let feedSocket = null;
function follow() {
  if (feedSocket && feedSocket.readyState <= WebSocket.OPEN) return;
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const query = token() ? "?access_token=" + encodeURIComponent(token()) : "";
  const socket = new WebSocket(`${scheme}//${location.host}/api/v1/feed${query}`);
  feedSocket = socket;
  const feed = document.getElementById("feed");
  socket.onmessage = (event) => {
    feed.prepend(feedLine(JSON.parse(event.data)));
    if (JSON.parse(event.data).type === "decision") loadConflicts();
  };
  socket.onclose = () => {
    if (feedSocket !== socket) return;
    feedSocket = null;
    setTimeout(follow, 2000);
  };
}

// The admin-action log: when, what, and by whom, newest first.
function showAdminAction(a, newest) {
  const rows = document.getElementById("admin-actions");
  const empty = rows.querySelector("tr.empty");
  if (empty) empty.remove();
  const row = el("tr");
  row.dataset.sequence = a.sequence;
  row.append(el("td", new Date(a.at).toLocaleString()), el("td", adminActionWords(a)), el("td", a.actor || "", "actor"));
  if (newest) rows.prepend(row); else rows.append(row);
}

async function loadAdminActions() {
  const answer = await api("GET", "/api/v1/admin-actions?limit=20");
  if (!answer.ok) return;
  const rows = document.getElementById("admin-actions");
  rows.replaceChildren();
  if (answer.json.admin_actions.length === 0) rows.append(el("tr", "No admin actions yet.", "empty"));
  for (const a of answer.json.admin_actions) showAdminAction(a, false);
}

async function loadConflicts() {
  const answer = await api("GET", "/api/v1/conflicts");
  if (!answer.ok) return;
  const rows = document.getElementById("conflicts");
  rows.replaceChildren();
  if (answer.json.conflicts.length === 0) rows.append(el("tr", "No open conflicts."));
  for (const { decision } of answer.json.conflicts) {
    const row = el("tr");
    row.append(el("td", decision.email || ""), el("td", decision.message));
    rows.append(row);
  }
}

document.getElementById("mapping-search").onsubmit = async (event) => {
  event.preventDefault();
  const email = event.target.elements.email.value;
  const answer = await api("GET", "/api/v1/mappings?email=" + encodeURIComponent(email));
  const rows = document.getElementById("mappings");
  rows.replaceChildren();
  if (!answer.ok) { rows.append(el("tr", answer.json.error ? answer.json.error.message : "Search failed.")); return; }
  if (answer.json.mappings.length === 0) rows.append(el("tr", "No mapping matches."));
  for (const m of answer.json.mappings) {
    const row = el("tr");
    row.append(el("td", "Outreach user " + m.outreach_user_id), el("td", "Salesforce user " + m.salesforce_user_id));
    rows.append(row);
  }
};

document.getElementById("token-save").onclick = () => {
  sessionStorage.setItem(tokenKey, document.getElementById("token").value);
  document.getElementById("token-dialog").classList.remove("shown");
  start();
};

function notice(text, ok) {
  const line = document.getElementById("notice");
  line.textContent = text;
  line.className = "message " + (ok ? "ok" : "error");
}

// Back from a provider's consent page: say how it went, then drop the query from the URL.
function authorizationOutcome() {
  const query = new URLSearchParams(location.search);
  const title = (side) => side === "salesforce" ? "Salesforce" : "Outreach";
  if (query.has("authorized")) notice(`${title(query.get("authorized"))} authorized; reconnecting with the new authorization.`, true);
  else if (query.has("authorization_failed")) notice(`${title(query.get("authorization_failed"))} not authorized: ${query.get("reason") || "no reason given"}`, false);
  else return;
  history.replaceState(null, "", location.pathname);
}

async function start() {
  authorizationOutcome();
  await refreshStatus();
  await loadSettings();
  await loadConflicts();
  await loadAdminActions();
  follow();
}
start();

// keyledger console: a plain client of the public /v1 API, served by keyledger
// itself. No framework and no build step. Everything that comes from the API is
// put on the page with textContent and DOM calls, never parsed as HTML.
//
// The management token comes from the user (pasted) or from the URL fragment
// (`keyledger token --open` prints `<url>/#token=<jwt>`). Fragments never reach a
// server; the fragment is removed from the address at once. A link's token is used
// only after the user, told which tenant and subject it is for, says so: anyone
// can send a link, and a silent sign-in would put the victim's tab in the sender's
// tenant (login CSRF), where keys created and copied are the sender's.

const TOKEN_KEY = 'keyledger.token';
const PAGE_SIZE = 50;
const AUDIT_PAGE_SIZE = 100;
const EVENT_TYPES = [
  'KeyCreated', 'KeyUpdated', 'KeyDeactivated', 'KeyReactivated',
  'KeyDeleted', 'KeyExpirySet', 'KeyUsageRecorded', 'KeyCreditsChanged', 'KeyCreditsReserved',
  'KeyExpiryNoticed', 'KeyLeakReported', 'TenantPolicySet', 'WebhookCreated', 'WebhookUpdated', 'WebhookSecretRotated', 'WebhookDeleted',
];
/** Units a rate limit's window is entered and shown in, largest first. */
const WINDOW_UNITS = [
  { ms: 86_400_000, short: 'd', long: 'days' },
  { ms: 3_600_000, short: 'h', long: 'hours' },
  { ms: 60_000, short: 'min', long: 'minutes' },
  { ms: 1000, short: 's', long: 'seconds' },
];
const MAX_RATELIMITS = 5;
/** The key list shows each key's trend (one request per key) up to this many rows. */
const TREND_ROWS = 50;

// ---------------------------------------------------------------- DOM helpers

/** Creates an element; attributes are set as attributes, children as nodes/text. */
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === 'class') el.className = value;
    else if (name === 'text') el.textContent = value;
    else if (name.startsWith('on')) el.addEventListener(name.slice(2), value);
    else if (value === true) el.setAttribute(name, '');
    else el.setAttribute(name, String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child);
  }
  return el;
}

const $ = (selector, root = document) => root.querySelector(selector);

const dateFormat = new Intl.DateTimeFormat(undefined, {
  year: 'numeric', month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit',
});
const numberFormat = new Intl.NumberFormat();

/** A <time> element for an RFC 3339 timestamp, or `empty` text when null. */
function time(value, empty = '—') {
  if (!value) return h('span', { class: 'muted', text: empty });
  const date = new Date(value);
  if (Number.isNaN(date.getTime())) return h('span', { text: value });
  return h('time', { datetime: value, title: value, text: dateFormat.format(date) });
}

function badge(kind, value) {
  return h('span', { class: `badge badge-${kind}-${value}`, text: value });
}

/** A "leaked" mark for a key reported leaked (`leaked_at`); none otherwise. */
function leakedBadge(key) {
  if (!key.leaked_at) return null;
  return h('span', { class: 'badge badge-leaked', title: `Reported leaked ${key.leaked_at}`, text: 'leaked' });
}

function keyLink(id, label) {
  return h('a', { href: `#/keys/${encodeURIComponent(id)}`, text: label ?? id });
}

/** A random Idempotency-Key (crypto.randomUUID needs a secure context). */
function randomId() {
  if (crypto.randomUUID) return crypto.randomUUID();
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

// ---------------------------------------------------------------- token

/**
 * The token of a `#token=` fragment, or null. The fragment leaves the address bar
 * and the history at once, whatever the user answers later; the session is not
 * touched here (see offerToken).
 */
function takeTokenFromFragment() {
  if (!location.hash.startsWith('#token=')) return null;
  const token = new URLSearchParams(location.hash.slice(1)).get('token');
  history.replaceState(null, '', location.pathname + location.search);
  return token && token.trim() ? token.trim() : null;
}

function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

/** The token's claims, for display only (the server checks the signature). */
function claims(jwt) {
  try {
    const part = jwt.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    const binary = atob(part.padEnd(Math.ceil(part.length / 4) * 4, '='));
    const bytes = Uint8Array.from(binary, (c) => c.charCodeAt(0));
    return JSON.parse(new TextDecoder().decode(bytes));
  } catch {
    return null;
  }
}

function signOut() {
  sessionStorage.removeItem(TOKEN_KEY);
  history.replaceState(null, '', location.pathname + location.search);
  render();
}

// ---------------------------------------------------------------- API

class ApiError extends Error {
  constructor(status, code, message, details) {
    super(message);
    this.status = status;
    this.code = code;
    this.details = details;
  }
}

/** Calls the API with the management token; resolves to the JSON body (null for 204). */
async function api(method, path, { body, headers = {} } = {}) {
  const init = {
    method,
    cache: 'no-store',
    headers: { Accept: 'application/json', Authorization: `Bearer ${token()}`, ...headers },
  };
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (e) {
    throw new ApiError(0, 'network_error', `the server could not be reached (${e.message})`);
  }
  if (response.status === 204) return null;
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!response.ok) {
    const error = data && data.error;
    throw new ApiError(
      response.status,
      error?.code ?? `http_${response.status}`,
      error?.message ?? (text.slice(0, 200) || response.statusText),
      error?.details,
    );
  }
  return data;
}

const ERROR_HEADINGS = {
  unauthorized: 'The server did not accept the management token.',
  api_key_not_allowed: 'An API key cannot manage keys; use a management token.',
  key_not_found: 'No such key (it may have been deleted).',
  conflict: 'The key changed at the same moment; look again and retry.',
  validation_failed: 'The server did not accept this.',
  idempotency_key_reused: 'This request was already sent with different values.',
  key_limit_reached: 'This workspace holds as many keys as it may.',
  payload_too_large: 'The request is too large.',
  rate_limited: 'Too many requests; wait a minute.',
  store_unavailable: 'The store is unavailable; nothing was changed. Try again shortly.',
  network_error: 'The server could not be reached.',
  internal: 'The server failed unexpectedly.',
};

/** The words shown for an error: a heading, the server's message, the code. */
function errorContent(error) {
  if (!(error instanceof ApiError)) {
    return [h('strong', { text: 'Something went wrong in the console.' }), ' ', String(error?.message ?? error)];
  }
  // The console's own checks (status 0) asked nothing of the server.
  const heading = error.status === 0 && error.code === 'validation_failed'
    ? 'This cannot be sent as it is.'
    : ERROR_HEADINGS[error.code] ?? 'The request failed.';
  const where = error.status ? `${error.code}, HTTP ${error.status}` : error.code;
  return [
    h('strong', { text: heading }), ' ',
    h('span', { class: 'error-message', text: error.message }), ' ',
    h('span', { class: 'error-code', text: `(${where})` }),
  ];
}

function showError(error) {
  const alerts = $('#alerts');
  const actions = [];
  if (error instanceof ApiError && error.status === 401) {
    actions.push(h('button', { type: 'button', class: 'button-quiet', onclick: signOut, text: 'Use another token' }));
  }
  const dismiss = h('button', {
    type: 'button', class: 'button-quiet', 'aria-label': 'Dismiss this message', text: 'Dismiss',
    onclick: (e) => e.currentTarget.closest('.alert').remove(),
  });
  alerts.replaceChildren(h('div', { class: 'alert', role: 'alert' },
    h('p', {}, errorContent(error)), h('div', { class: 'alert-actions' }, actions, dismiss)));
}

function clearErrors() {
  $('#alerts').replaceChildren();
}

let toastTimer;
function announce(message) {
  $('#status').textContent = message;
  const toast = $('#toast');
  toast.textContent = message;
  toast.classList.add('visible');
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => toast.classList.remove('visible'), 4000);
}

// ---------------------------------------------------------------- dialogs

document.addEventListener('click', (event) => {
  const closer = event.target.closest('[data-close]');
  if (closer) closer.closest('dialog')?.close('cancel');
});

/** Opens a modal dialog; resolves when it closes, giving focus back to `returnTo`. */
function openDialog(dialog, returnTo, focus) {
  return new Promise((resolve) => {
    dialog.addEventListener('close', () => {
      const target = returnTo?.isConnected ? returnTo : $('#main h1') ?? $('#main');
      target?.focus();
      resolve(dialog.returnValue);
    }, { once: true });
    dialog.returnValue = '';
    dialog.showModal();
    (focus ?? dialog.querySelector('input, select, textarea, button'))?.focus();
  });
}

// Escape closes a dialog unless it is waiting for the server.
for (const dialog of document.querySelectorAll('dialog')) {
  dialog.addEventListener('cancel', (event) => {
    if (dialog.dataset.busy) event.preventDefault();
  });
}

function setBusy(dialog, button, busy, label) {
  if (busy) {
    dialog.dataset.busy = '1';
    button.dataset.label = button.textContent;
    button.textContent = label;
  } else {
    delete dialog.dataset.busy;
    button.textContent = button.dataset.label ?? button.textContent;
  }
  button.disabled = busy;
}

function dialogError(box, error) {
  if (!error) {
    box.hidden = true;
    box.replaceChildren();
    return;
  }
  box.replaceChildren(...errorContent(error));
  box.hidden = false;
}

/**
 * Asks before an action. `run(values)` performs it; an error is shown in the
 * dialog, which stays open. Resolves to what `run` returned, or null if cancelled.
 */
function confirmAction({ title, message, confirm, danger = false, reason = false, grace = false, run, returnTo }) {
  const dialog = $('#confirm-dialog');
  const form = $('#confirm-form');
  const submit = $('#confirm-submit');
  $('#confirm-title').textContent = title;
  $('#confirm-message').textContent = message;
  submit.textContent = confirm;
  submit.className = danger ? 'button-danger' : 'button-primary';
  $('#confirm-reason-field').hidden = !reason;
  $('#confirm-reason').value = '';
  $('#confirm-grace-field').hidden = !grace;
  $('#confirm-grace').value = '86400';
  dialogError($('#confirm-error'), null);
  let result = null;
  form.onsubmit = async (event) => {
    event.preventDefault();
    setBusy(dialog, submit, true, 'Working…');
    try {
      result = await run({
        reason: $('#confirm-reason').value.trim(),
        grace: Number($('#confirm-grace').value),
      });
      setBusy(dialog, submit, false);
      dialog.close('confirm');
    } catch (error) {
      setBusy(dialog, submit, false);
      dialogError($('#confirm-error'), error);
    }
  };
  const first = reason ? $('#confirm-reason') : grace ? $('#confirm-grace') : danger ? $('#confirm-dialog [data-close]') : submit;
  return openDialog(dialog, returnTo, first).then(() => result);
}

// ---------------------------------------------------------------- sign-in links

/**
 * A claim as it is shown: text (never HTML), with control and invisible
 * formatting characters written as \u{…}, so that a right-to-left override or a
 * zero-width space cannot make one tenant's name look like another's. null when
 * the claim is missing or not a string.
 */
function shownClaim(value) {
  if (typeof value !== 'string' || !value.trim()) return null;
  return value.replace(/[\p{Cc}\p{Cf}\p{Zl}\p{Zp}]/gu, (c) => `\\u{${c.codePointAt(0).toString(16)}}`);
}

/** "subject in tenant" of a token's claims, as shown in the top bar. */
function who(c) {
  return `${shownClaim(c?.sub) ?? '?'} in ${shownClaim(c?.tenant) ?? '?'}`;
}

let offerOpen = false;

/**
 * Asks whether the token of a `#token=` link may replace the session, naming the
 * tenant and subject it is for (read from the token, unverified: the server
 * checks the signature when it is used), and the session it would end. Only
 * "Sign in" / "Switch" stores it; Cancel, Escape or closing keep what there was.
 * It asks when no one is signed in too: a victim without a session would
 * otherwise be signed in to the sender's tenant unawares.
 */
async function offerToken(offered) {
  const current = token();
  if (offered === current) return;
  const dialog = $('#switch-dialog');
  // While one question is open, another link (e.g. a window this one was opened
  // from navigating it again) is dropped rather than changing what the open
  // question offers under the user's pointer.
  if (offerOpen) {
    announce('A second sign-in link was ignored: answer the open question first.');
    return;
  }
  offerOpen = true;
  const c = claims(offered);
  const tenant = shownClaim(c?.tenant);
  const subject = shownClaim(c?.sub);
  const mine = current ? claims(current) : null;
  const claimText = (el, value) => {
    el.textContent = value ?? 'unknown: the token does not say';
    el.classList.toggle('claim-unknown', value === null);
  };
  $('#switch-title').textContent = current ? 'Switch to the token of this link?' : 'Sign in with the token of this link?';
  $('#switch-message').textContent = c
    ? 'The link you opened carries a management token for the tenant below. Use it only if you asked for this link: anyone can make one that signs you in to a tenant of theirs, where the keys you create would be in their hands.'
    : 'The link you opened carries a token the console cannot read: it does not say which tenant it is for. The server will most likely refuse it.';
  claimText($('#switch-tenant'), tenant);
  claimText($('#switch-subject'), subject);
  const expires = $('#switch-expires');
  expires.replaceChildren(typeof c?.exp === 'number'
    ? (c.exp * 1000 <= Date.now() ? h('span', { class: 'identity-expired', text: 'expired' }) : time(new Date(c.exp * 1000).toISOString()))
    : h('span', { class: 'muted', text: 'unknown' }));
  const session = $('#switch-session');
  if (current) {
    const other = tenant !== null && tenant !== shownClaim(mine?.tenant);
    session.className = 'warning';
    session.textContent = `You are signed in as ${who(mine)}. Switching ends that session in this tab${other ? ' and shows another tenant' : ''}.`;
  } else {
    session.className = 'hint';
    session.textContent = 'You are not signed in. Nothing happens unless you choose to sign in.';
  }
  $('#switch-keep').textContent = current ? 'Keep current session' : 'Cancel';
  const accept = $('#switch-accept');
  accept.textContent = current ? 'Switch' : 'Sign in';
  $('#switch-form').onsubmit = (event) => {
    event.preventDefault();
    dialog.close('switch');
  };
  // The safe answer has focus, so that Enter pressed in passing keeps the session.
  const answer = await openDialog(dialog, null, $('#switch-keep'));
  offerOpen = false;
  if (answer === 'switch') {
    sessionStorage.setItem(TOKEN_KEY, offered);
    history.replaceState(null, '', '#/keys');
    announce(`Signed in as ${who(c)}.`);
    render();
  } else if (current) {
    announce(`Kept the session of ${who(mine)}; the link's token was not used.`);
  } else {
    announce("Not signed in: the link's token was not used.");
    $('#token-input')?.focus();
  }
}

/** Shows a raw key once, with a copy button; forgets it when closed. */
async function showSecret(created, heading, returnTo) {
  const dialog = $('#secret-dialog');
  const value = $('#secret-value');
  $('#secret-title').textContent = heading;
  $('#secret-for').replaceChildren(
    h('span', { text: created.name }), ' · ',
    h('span', { class: 'mono', text: created.prefix }), ' · ', badge('env', created.environment));
  value.value = created.key;
  $('#secret-copied').textContent = '';
  $('#secret-details').href = `#/keys/${encodeURIComponent(created.id)}`;
  await openDialog(dialog, returnTo, $('#secret-copy'));
  value.value = '';
  $('#secret-copied').textContent = '';
}

$('#secret-copy').addEventListener('click', async () => {
  const value = $('#secret-value');
  let copied = false;
  try {
    await navigator.clipboard.writeText(value.value);
    copied = true;
  } catch {
    value.focus();
    value.select();
    try {
      copied = document.execCommand('copy');
    } catch {
      copied = false;
    }
  }
  $('#secret-copied').textContent = copied
    ? 'Copied to the clipboard.'
    : 'The browser did not allow copying: the key is selected, press Ctrl+C (⌘C) to copy it.';
});

$('#secret-value').addEventListener('focus', (event) => event.target.select());
$('#secret-details').addEventListener('click', () => $('#secret-dialog').close());

/** Permissions as typed: separated by spaces or commas. */
function permissionList(text) {
  return text.split(/[\s,]+/).filter(Boolean);
}

/** JSON with object keys sorted, to tell whether two values are the same. */
function canonicalJson(value) {
  const sort = (v) => {
    if (Array.isArray(v)) return v.map(sort);
    if (v && typeof v === 'object') return Object.fromEntries(Object.keys(v).sort().map((k) => [k, sort(v[k])]));
    return v;
  };
  return JSON.stringify(sort(value));
}

function clearInvalid(form) {
  for (const field of form.querySelectorAll('[aria-invalid]')) field.removeAttribute('aria-invalid');
}

/** Marks `input` as the one at fault (opening its <details>) and moves focus there. */
function markInvalid(input) {
  if (!(input instanceof HTMLElement)) return;
  if (input.matches('input:not([type="checkbox"]), select, textarea')) input.setAttribute('aria-invalid', 'true');
  const details = input.closest('details');
  if (details) details.open = true;
  input.focus();
}

/**
 * Edits a key's name, description, permissions, expiry and metadata (PATCH,
 * only what changed); `focus` names the field to start in (`expires`, to set an
 * expiry). Resolves to the new view, or null when nothing was saved.
 */
async function editKey(key, returnTo, { focus = 'name' } = {}) {
  const dialog = $('#edit-dialog');
  const form = $('#edit-form');
  const submit = $('#edit-submit');
  const input = {
    name: $('#edit-name'), description: $('#edit-description'), permissions: $('#edit-permissions'),
    expires_at: $('#edit-expires'), metadata: $('#edit-metadata'),
  };
  $('#edit-title').textContent = `Edit “${key.name}”`;
  clearInvalid(form);
  dialogError($('#edit-error'), null);
  input.name.value = key.name;
  input.description.value = key.description ?? '';
  input.permissions.value = key.permissions.join(' ');
  input.expires_at.value = toLocalInput(key.expires_at);
  input.metadata.value = key.metadata ? JSON.stringify(key.metadata, null, 2) : '';
  const clearExpiry = $('#edit-expires-clear');
  const syncClear = () => { clearExpiry.hidden = !input.expires_at.value; };
  input.expires_at.oninput = syncClear;
  clearExpiry.onclick = () => {
    input.expires_at.value = '';
    syncClear();
    input.expires_at.focus();
  };
  syncClear();
  const local = (field, message) => {
    const error = inputError(input[field], message);
    error.details = { field };
    return error;
  };
  let saved = null;
  form.onsubmit = async (event) => {
    event.preventDefault();
    clearInvalid(form);
    dialogError($('#edit-error'), null);
    const body = {};
    try {
      const name = input.name.value.trim();
      if (!name) throw local('name', 'name: give the key a name');
      if (name !== key.name) body.name = name;
      const description = input.description.value.trim() || null;
      if (description !== (key.description || null)) body.description = description;
      const permissions = permissionList(input.permissions.value);
      if (canonicalJson(permissions) !== canonicalJson(key.permissions)) body.permissions = permissions;
      const expires = input.expires_at.value;
      if (expires !== toLocalInput(key.expires_at)) {
        const date = new Date(expires);
        if (expires && Number.isNaN(date.getTime())) throw local('expires_at', 'expires: give a date and a time');
        body.expires_at = expires ? date.toISOString() : null;
      }
      const text = input.metadata.value.trim();
      let metadata = null;
      if (text) {
        try {
          metadata = JSON.parse(text);
        } catch (e) {
          throw local('metadata', `metadata: not JSON (${e.message})`);
        }
        if (!metadata || typeof metadata !== 'object' || Array.isArray(metadata)) {
          throw local('metadata', 'metadata: give a JSON object, e.g. {"team": "payments"}, or nothing');
        }
      }
      if (canonicalJson(metadata) !== canonicalJson(key.metadata ?? null)) body.metadata = metadata;
    } catch (error) {
      dialogError($('#edit-error'), error);
      markInvalid(error.input);
      return;
    }
    saved = (await patchFromDialog(dialog, submit, key, body, $('#edit-error'), (error) => {
      // The server names the field at fault (`details.field`).
      const at = input[error.details?.field];
      if (at) markInvalid(at);
      else input.name.focus();
    })) ?? saved;
  };
  await openDialog(dialog, returnTo, input[focus === 'expires' ? 'expires_at' : focus] ?? input.name);
  return saved;
}

/**
 * Sends a dialog's PATCH of `key` (only what changed: `body`), closing the
 * dialog when saved or when nothing changed. Returns the saved key, or
 * undefined; on an API error shows it in `errorBox` and calls `failed`.
 */
async function patchFromDialog(dialog, submit, key, body, errorBox, failed) {
  if (!Object.keys(body).length) {
    dialog.close('unchanged');
    announce('Nothing was changed.');
    return undefined;
  }
  setBusy(dialog, submit, true, 'Saving…');
  try {
    const saved = await api('PATCH', `/v1/keys/${encodeURIComponent(key.id)}`, { body });
    setBusy(dialog, submit, false);
    dialog.close('saved');
    return saved;
  } catch (error) {
    setBusy(dialog, submit, false);
    dialogError(errorBox, error);
    failed(error);
    return undefined;
  }
}

async function createKey(returnTo) {
  const dialog = $('#create-dialog');
  const form = $('#create-form');
  const submit = $('#create-submit');
  form.reset();
  for (const field of form.querySelectorAll('[aria-invalid]')) field.removeAttribute('aria-invalid');
  dialogError($('#create-error'), null);
  const limits = limitsFields('create');
  $('#create-limits').replaceChildren(limits.element);
  $('#create-limits-more').open = false;
  // One per dialog: a retry after a lost answer returns the first key, not a second.
  const idempotencyKey = randomId();
  let created = null;
  form.onsubmit = async (event) => {
    event.preventDefault();
    for (const field of form.querySelectorAll('[aria-invalid]')) field.removeAttribute('aria-invalid');
    const data = new FormData(form);
    const name = String(data.get('name')).trim();
    if (!name) {
      $('#create-name').setAttribute('aria-invalid', 'true');
      dialogError($('#create-error'), new ApiError(0, 'validation_failed', 'name: give the key a name'));
      $('#create-name').focus();
      return;
    }
    const body = { name, environment: String(data.get('environment')) };
    const description = String(data.get('description')).trim();
    if (description) body.description = description;
    const permissions = permissionList(String(data.get('permissions')));
    if (permissions.length) body.permissions = permissions;
    const expires = String(data.get('expires_at'));
    if (expires) body.expires_at = new Date(expires).toISOString();
    let usage;
    try {
      usage = limits.read();
    } catch (error) {
      limits.fail(error);
      dialogError($('#create-error'), error);
      return;
    }
    if (usage.owner) body.owner = usage.owner;
    if (usage.ratelimits.length) body.ratelimits = usage.ratelimits;
    if (usage.credits) body.credits = usage.credits;
    setBusy(dialog, submit, true, 'Creating…');
    try {
      created = await api('POST', '/v1/keys', { body, headers: { 'Idempotency-Key': idempotencyKey } });
      setBusy(dialog, submit, false);
      dialog.close('created');
    } catch (error) {
      setBusy(dialog, submit, false);
      const field = error.details?.field;
      const input = limits.inputFor(error) ?? (field && form.elements.namedItem(field));
      dialogError($('#create-error'), error);
      if (input instanceof HTMLElement) limits.fail(error, input);
      else $('#create-name').focus();
    }
  };
  await openDialog(dialog, returnTo, $('#create-name'));
  if (created) {
    await showSecret(created, 'Key created', returnTo);
    return created;
  }
  return null;
}

// ---------------------------------------------------------------- key actions

/** The actions a key offers, as [label, run(returnTo) -> Promise<changed?>]. */
function keyActions(key, after) {
  const actions = [];
  if (key.status === 'inactive') {
    actions.push(['Reactivate', (returnTo) => confirmAction({
      title: `Reactivate “${key.name}”?`,
      message: 'The key will verify again (unless it has expired).',
      confirm: 'Reactivate',
      returnTo,
      run: () => api('POST', `/v1/keys/${encodeURIComponent(key.id)}/reactivate`),
    }).then((view) => view && after(`Reactivated “${key.name}”.`, { id: key.id }))]);
  } else {
    actions.push(['Deactivate', (returnTo) => confirmAction({
      title: `Deactivate “${key.name}”?`,
      message: 'Verification will answer DISABLED until the key is reactivated. Nothing is deleted.',
      confirm: 'Deactivate',
      reason: true,
      returnTo,
      run: ({ reason }) => api('POST', `/v1/keys/${encodeURIComponent(key.id)}/deactivate`,
        { body: reason ? { reason } : {} }),
    }).then((view) => view && after(`Deactivated “${key.name}”.`, { id: key.id }))]);
  }
  if (!key.rotated_to) {
    actions.push(['Rotate', async (returnTo) => {
      const idempotencyKey = randomId();
      const created = await confirmAction({
        title: `Rotate “${key.name}”?`,
        message: 'A new key with the same name, permissions and environment is issued. The old key expires after the grace period.',
        confirm: 'Rotate',
        grace: true,
        returnTo,
        run: ({ grace }) => api('POST', `/v1/keys/${encodeURIComponent(key.id)}/rotate`,
          { body: { grace_period_seconds: grace }, headers: { 'Idempotency-Key': idempotencyKey } }),
      });
      if (!created) return;
      await showSecret(created, 'Key rotated: the new key', returnTo);
      after(`Rotated “${key.name}”.`, { id: key.id });
    }]);
  }
  actions.push(['Delete', (returnTo) => confirmAction({
    title: `Delete “${key.name}”?`,
    message: 'The key stops working at once and for good. This cannot be undone; its history stays in the audit log.',
    confirm: 'Delete key',
    danger: true,
    returnTo,
    run: async () => {
      await api('DELETE', `/v1/keys/${encodeURIComponent(key.id)}`);
      return true;
    },
  }).then((done) => done && after(`Deleted “${key.name}”.`, { id: key.id, deleted: true }))]);
  return actions;
}

let menuCount = 0;

/** A button opening a menu of a key's actions (a popover, so Escape and clicking elsewhere close it). */
function actionsMenu(key, after) {
  const id = `key-menu-${++menuCount}`;
  const button = h('button', {
    type: 'button', class: 'button-quiet menu-button', popovertarget: id,
    'aria-haspopup': 'menu', 'aria-label': `Actions for ${key.name}`,
  }, 'Actions ', h('span', { 'aria-hidden': 'true', text: '▾' }));
  const items = keyActions(key, after).map(([label, run]) => h('button', {
    type: 'button', role: 'menuitem', class: label === 'Delete' ? 'menu-danger' : '', text: label,
    onclick: () => {
      menu.hidePopover();
      run(button);
    },
  }));
  const menu = h('div', { id, popover: 'auto', role: 'menu', class: 'menu', 'aria-label': `Actions for ${key.name}` }, items);
  menu.addEventListener('toggle', (event) => {
    button.setAttribute('aria-expanded', String(event.newState === 'open'));
    if (event.newState !== 'open') return;
    const rect = button.getBoundingClientRect();
    const width = menu.offsetWidth;
    const height = menu.offsetHeight;
    const below = rect.bottom + 4 + height <= window.innerHeight;
    menu.style.top = `${below ? rect.bottom + 4 : Math.max(4, rect.top - 4 - height)}px`;
    menu.style.left = `${Math.min(Math.max(4, rect.right - width), window.innerWidth - width - 4)}px`;
    items[0]?.focus();
  });
  menu.addEventListener('keydown', (event) => {
    const at = items.indexOf(document.activeElement);
    const move = { ArrowDown: at + 1, ArrowUp: at - 1, Home: 0, End: items.length - 1 }[event.key];
    if (move === undefined) return;
    event.preventDefault();
    items[(move + items.length) % items.length].focus();
  });
  button.setAttribute('aria-expanded', 'false');
  return h('div', { class: 'menu-wrap' }, button, menu);
}

// A fixed menu would drift from its button on scroll: close it instead.
window.addEventListener('scroll', () => {
  for (const menu of document.querySelectorAll('.menu:popover-open')) menu.hidePopover();
}, { passive: true });

// ---------------------------------------------------------------- screens

function pageHead(title, ...extra) {
  return h('div', { class: 'page-head' }, h('h1', { tabindex: '-1', text: title }), ...extra);
}

function select(name, label, options, value) {
  const id = `filter-${name}`;
  return h('div', { class: 'field field-inline' },
    h('label', { for: id, text: label }),
    h('select', { id, name }, options.map(([v, text]) => h('option', { value: v, selected: v === value, text }))));
}

function routeQuery(route, params) {
  const query = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v) query.set(k, v);
  const text = query.toString();
  return `#/${route}${text ? `?${text}` : ''}`;
}

function keysScreen(params, main) {
  const filters = { status: params.get('status') ?? '', environment: params.get('environment') ?? '' };
  const createButton = h('button', { type: 'button', class: 'button-primary', id: 'create-open', text: 'Create key' });
  const count = h('p', { class: 'count', 'aria-live': 'polite' });
  const tbody = h('tbody');
  const more = h('button', { type: 'button', class: 'button-quiet', hidden: true, text: 'Show more keys' });
  const filterForm = h('form', { class: 'filters', role: 'search', 'aria-label': 'Filter keys', onsubmit: (e) => e.preventDefault() },
    select('status', 'Status', [['', 'Any status'], ['active', 'Active'], ['inactive', 'Inactive'], ['expired', 'Expired']], filters.status),
    select('environment', 'Environment', [['', 'Any environment'], ['live', 'Live'], ['test', 'Test']], filters.environment));
  const table = h('table', { class: 'data data-keys' },
    h('caption', { class: 'visually-hidden', text: 'API keys, newest first' }),
    h('thead', {}, h('tr', {}, ['Name', 'Prefix', 'Environment', 'Status', 'Created', 'Last used', 'Uses']
      .map((t) => h('th', { scope: 'col', text: t })),
    h('th', { scope: 'col', title: `Verifications per day, last ${SPARK_DAYS} days` }, 'Trend',
      h('span', { class: 'visually-hidden', text: `, last ${SPARK_DAYS} days` })),
    h('th', { scope: 'col' }, h('span', { class: 'visually-hidden', text: 'Actions' })))),
    tbody);
  main.replaceChildren(pageHead('Keys', createButton), filterForm, count, h('div', { class: 'table-wrap' }, table), more);

  let cursor = null;
  let shown = 0;
  let generation = 0;

  // After an action the rows are rebuilt: keep the keyboard on the same key.
  const after = (message, { id } = {}) => {
    announce(message);
    load().then(() => {
      const row = id && tbody.querySelector(`tr[data-key-id="${CSS.escape(id)}"] .menu-button`);
      (row ?? $('#main h1'))?.focus();
    });
  };

  function row(key) {
    const cell = (label, ...content) => h('td', { 'data-label': label }, h('div', {}, ...content));
    return h('tr', { 'data-key-id': key.id },
      h('th', { scope: 'row', 'data-label': 'Name', class: 'cell-name' }, keyLink(key.id, key.name),
        key.description ? h('span', { class: 'subtle', text: key.description }) : null),
      cell('Prefix', h('span', { class: 'mono', text: key.prefix })),
      cell('Environment', badge('env', key.environment)),
      cell('Status', badge('status', key.status), leakedBadge(key)),
      cell('Created', time(key.created_at)),
      cell('Last used', time(key.last_used_at, 'never')),
      cell('Uses', h('span', { class: 'num', text: numberFormat.format(key.usage_count) })),
      h('td', { 'data-label': `Last ${SPARK_DAYS} days`, class: 'cell-trend' }, h('div', {}, h('span', { class: 'muted', text: '—' }))),
      h('td', { class: 'cell-actions' }, actionsMenu(key, after)));
  }

  // A small trend per row: one usage call per key, so only for a short list.
  function trends(keys, mine) {
    const since = trendSince();
    for (const key of keys) {
      api('GET', `/v1/keys/${encodeURIComponent(key.id)}/usage?granularity=day&since=${encodeURIComponent(since)}`)
        .then((usage) => {
          const target = mine === generation && tbody.querySelector(`tr[data-key-id="${CSS.escape(key.id)}"] .cell-trend > div`);
          if (target) target.replaceChildren(sparkline(usage));
        })
        .catch(() => {});
    }
  }

  async function load(append = false) {
    const mine = ++generation;
    const query = new URLSearchParams({ limit: String(PAGE_SIZE) });
    if (filters.status) query.set('status', filters.status);
    if (filters.environment) query.set('environment', filters.environment);
    if (append && cursor) query.set('cursor', cursor);
    more.disabled = true;
    try {
      const page = await api('GET', `/v1/keys?${query}`);
      if (mine !== generation) return;
      if (!append) {
        tbody.replaceChildren();
        shown = 0;
      }
      tbody.append(...page.keys.map(row));
      shown += page.keys.length;
      if (shown <= TREND_ROWS) trends(page.keys, mine);
      cursor = page.next_cursor;
      more.hidden = !cursor;
      const filtered = filters.status || filters.environment;
      if (shown === 0) {
        tbody.replaceChildren(h('tr', { class: 'empty' }, h('td', { colspan: '9' },
          filtered ? 'No key matches these filters.' : 'No keys yet. Create the first one.')));
      }
      count.textContent = `${shown} ${shown === 1 ? 'key' : 'keys'}${cursor ? ' so far' : ''}${filtered ? ' matching the filters' : ''}`;
    } catch (error) {
      if (mine !== generation) return;
      showError(error);
      if (!append) {
        tbody.replaceChildren(h('tr', { class: 'empty' }, h('td', { colspan: '9' },
          'The keys could not be loaded: see the message above.')));
      }
    } finally {
      more.disabled = false;
    }
  }

  filterForm.addEventListener('change', (event) => {
    filters[event.target.name] = event.target.value;
    history.replaceState(null, '', routeQuery('keys', filters));
    clearErrors();
    load();
  });
  more.addEventListener('click', () => load(true));
  createButton.addEventListener('click', async () => {
    const created = await createKey(createButton);
    if (created) {
      announce(`Created “${created.name}”.`);
      load();
    }
  });
  return load();
}

/** A short account of what an event did, in words. */
function eventSummary(event) {
  const d = event.data ?? {};
  switch (event.type) {
    case 'KeyCreated': {
      const parts = [`name “${d.name}”`, d.environment && `environment ${d.environment}`];
      if (Array.isArray(d.permissions) && d.permissions.length) parts.push(`permissions ${d.permissions.join(', ')}`);
      if (d.expires_at) parts.push(`expires ${dateFormat.format(new Date(d.expires_at))}`);
      if (d.rotated_from) parts.push(`replaces ${d.rotated_from}`);
      if (d.owner) parts.push(`owner ${d.owner}`);
      if (Array.isArray(d.ratelimits) && d.ratelimits.length) parts.push(`rate limits ${d.ratelimits.map((r) => rateLimitText(r)).join(', ')}`);
      if (d.credits) parts.push(`${numberFormat.format(d.credits.remaining ?? 0)} credits`);
      return `Created with ${parts.filter(Boolean).join('; ')}`;
    }
    case 'KeyDeactivated':
      return d.reason ? `Deactivated: “${d.reason}”` : 'Deactivated';
    case 'KeyReactivated':
      return 'Reactivated';
    case 'KeyDeleted':
      return 'Deleted for good';
    case 'KeyExpirySet':
      return `Expiry set to ${d.expires_at ? dateFormat.format(new Date(d.expires_at)) : '—'}${d.rotated_to ? ` (rotated to ${d.rotated_to})` : ''}`;
    case 'KeyUsageRecorded': {
      // `count` is the valid verifications; `refused` the others, by outcome.
      const refused = Object.entries(d.refused ?? {}).filter(([, n]) => n > 0)
        .map(([outcome, n]) => `${outcome.replaceAll('_', ' ')} ${numberFormat.format(n)}`);
      const valid = `Verified ${numberFormat.format(d.count ?? 0)} ${d.count === 1 ? 'time' : 'times'}`;
      return refused.length ? `${valid}; refused: ${refused.join(', ')}` : valid;
    }
    case 'KeyUpdated': {
      const changed = Object.keys(d).filter((k) => k !== 'updated_at').map((k) => {
        if (k === 'owner') return d.owner ? `owner to ${d.owner}` : 'owner (cleared)';
        if (k === 'ratelimits' && Array.isArray(d.ratelimits)) {
          return d.ratelimits.length ? `rate limits to ${d.ratelimits.map((r) => rateLimitText(r)).join(', ')}` : 'rate limits (removed)';
        }
        return k;
      });
      return changed.length ? `Changed ${changed.join(', ')}` : 'Updated';
    }
    case 'KeyCreditsChanged':
      return creditChangeText(d.change ?? {}) + (d.reason ? `: “${d.reason}”` : '')
        + (d.ledger && d.ledger.limited !== false ? ` (balance ${numberFormat.format((d.ledger.available ?? 0) + (d.ledger.outstanding ?? 0))})` : '');
    case 'KeyCreditsReserved':
      return `${numberFormat.format(d.amount ?? 0)} credits taken for verifications${d.node ? ` by ${d.node}` : ''}`;
    case 'KeyLeakReported':
      return `Reported leaked by ${d.reporter ?? 'someone'}${d.source ? ` (${d.source})` : ''}${d.url ? ` at ${d.url}` : ''}`;
    case 'KeyExpiryNoticed':
      return d.notice === 'expired'
        ? 'Expiry notice: expired'
        : `Expiry notice: expires ${d.expires_at ? dateFormat.format(new Date(d.expires_at)) : 'soon'}`;
    case 'TenantPolicySet':
      return `Policy set: on a leak, ${d.policy?.on_leak ?? 'deactivate'}`;
    default:
      return JSON.stringify(d);
  }
}

function eventDetails(event) {
  const details = h('details', { class: 'event-data' },
    h('summary', { text: 'data' }),
    h('pre', { text: JSON.stringify(event.data, null, 2) }));
  const context = [event.request_id && `request ${event.request_id}`, event.client_addr && `from ${event.client_addr}`]
    .filter(Boolean).join(' · ');
  return [h('span', { text: eventSummary(event) }), context ? h('span', { class: 'subtle', text: context }) : null, details];
}

/** The key column of the audit log: its name when known, and the end of its id. */
function keyCell(id, names) {
  const name = names.get(id);
  return [
    h('a', { href: `#/keys/${encodeURIComponent(id)}`, title: id, 'data-key-id': id, text: name ?? 'key' }),
    h('span', { class: 'subtle mono', text: `…${id.slice(-10)}` }),
  ];
}

function eventsTable(events, { names }) {
  const head = ['When', 'Event', ...(names ? ['Key'] : []), 'Actor', 'Details'];
  const cell = (label, ...content) => h('td', { 'data-label': label }, h('div', {}, ...content));
  const tbody = h('tbody', {}, events.map((e) => h('tr', {},
    cell('When', time(e.occurred_at)),
    cell('Event', h('span', { class: `event-type event-${e.type}`, text: e.type })),
    names ? cell('Key', keyCell(e.key_id, names)) : null,
    cell('Actor', e.actor ?? '—'),
    h('td', { 'data-label': 'Details', class: 'cell-details' }, h('div', {}, eventDetails(e))))));
  return h('table', { class: 'data data-events' },
    h('thead', {}, h('tr', {}, head.map((t) => h('th', { scope: 'col', text: t })))), tbody);
}

async function keyScreen(id, main, params = null) {
  main.replaceChildren(pageHead('Key'), h('p', { class: 'muted', text: 'Loading…' }));
  let key = null;
  try {
    key = await api('GET', `/v1/keys/${encodeURIComponent(id)}`);
  } catch (error) {
    if (!(error instanceof ApiError && error.status === 404)) {
      showError(error);
      main.replaceChildren(backLink(), pageHead('Key'),
        h('p', { class: 'empty', text: 'The key could not be loaded: see the message above.' }));
      return;
    }
  }
  // The history is paged (oldest first): the first page now, the next ones as
  // "Show more events" follows `next_cursor`.
  const historyPage = (cursor) => {
    const query = new URLSearchParams({ limit: String(AUDIT_PAGE_SIZE) });
    if (cursor) query.set('cursor', cursor);
    return api('GET', `/v1/keys/${encodeURIComponent(key?.id ?? id)}/events?${query}`);
  };
  let events = [];
  let historyCursor = null;
  try {
    const page = await historyPage(null);
    events = page.events;
    historyCursor = page.next_cursor;
  } catch (error) {
    showError(error);
    if (!key) {
      main.replaceChildren(backLink(), pageHead('No such key'));
      return;
    }
  }
  const back = backLink();
  const historyWrap = h('div', { class: 'table-wrap' }, eventsTable(events, {}));
  const moreHistory = h('button', { type: 'button', class: 'button-quiet', hidden: !historyCursor, text: 'Show more events' });
  moreHistory.addEventListener('click', async () => {
    moreHistory.disabled = true;
    try {
      const page = await historyPage(historyCursor);
      events = events.concat(page.events);
      historyCursor = page.next_cursor;
      historyWrap.replaceChildren(eventsTable(events, {}));
      moreHistory.hidden = !historyCursor;
    } catch (error) {
      showError(error);
    } finally {
      moreHistory.disabled = false;
    }
  });
  const historySection = [h('h2', { text: 'History' }),
    h('p', { class: 'hint', text: 'Every change, oldest first, as recorded in the event store.' }),
    historyWrap, moreHistory,
    h('p', {}, h('a', { href: routeQuery('audit', { key_id: key?.id ?? id }), text: 'Show in the audit log' }))];

  if (!key) {
    const createdEvent = events.find((e) => e.type === 'KeyCreated');
    main.replaceChildren(back, pageHead(createdEvent?.data?.name ?? id, badge('status', 'deleted')),
      h('p', { class: 'notice', text: 'This key was deleted. It no longer verifies; its history stays.' }),
      h('dl', { class: 'facts' }, fact('ID', h('span', { class: 'mono', text: id }))), ...historySection);
    return;
  }

  const after = (message, { deleted, focus } = {}) => {
    announce(message);
    if (deleted) location.hash = '#/keys';
    else keyScreen(key.id, main, route().params).then(() => ((focus && $(focus)) ?? $('#main h1'))?.focus());
  };
  const edit = h('button', { type: 'button', class: 'button-quiet', id: 'edit-key', text: 'Edit' });
  edit.addEventListener('click', async () => {
    const view = await editKey(key, edit);
    if (view) after(`Saved “${view.name}”.`, { focus: '#edit-key' });
  });
  const buttons = [edit, ...keyActions(key, after).map(([label, run]) => {
    const button = h('button', { type: 'button', class: label === 'Delete' ? 'button-danger-quiet' : 'button-quiet', text: label });
    button.addEventListener('click', () => run(button));
    return button;
  })];
  const permissions = key.permissions.length
    ? h('ul', { class: 'chips' }, key.permissions.map((p) => h('li', { class: 'mono', text: p })))
    : h('span', { class: 'muted', text: 'none' });
  const usage = keyUsageSection(key, params);
  // replaceChildren would show a null as the text "null": no description, no node.
  main.replaceChildren(back,
    pageHead(key.name, badge('status', key.status), h('div', { class: 'page-actions' }, buttons)),
    ...(key.description ? [h('p', { class: 'description', text: key.description })] : []),
    ...(key.leaked_at
      ? [h('p', { class: 'notice notice-leaked', role: 'note' }, leakedBadge(key),
        ' Reported leaked ', time(key.leaked_at),
        '. Whoever found it may use it: rotate it, or delete it once nothing needs it.')]
      : []),
    h('dl', { class: 'facts' },
      wide(fact('ID', h('span', { class: 'mono', text: key.id }))),
      fact('Prefix', h('span', { class: 'mono', text: key.prefix })),
      fact('Environment', badge('env', key.environment)),
      fact('Permissions', permissions),
      fact('Created', time(key.created_at), ` by ${key.created_by}`),
      fact('Updated', time(key.updated_at)),
      fact('Expires', time(key.expires_at, 'never')),
      fact('Last used', time(key.last_used_at, 'never')),
      fact('Uses', numberFormat.format(key.usage_count)),
      key.rotated_from ? fact('Replaces', keyLink(key.rotated_from)) : null,
      key.rotated_to ? fact('Replaced by', keyLink(key.rotated_to)) : null,
      key.metadata ? fact('Metadata', h('pre', { class: 'metadata', text: JSON.stringify(key.metadata, null, 2) })) : null),
    ...usage.nodes,
    ...limitsSection(key, after),
    ...historySection);
  await usage.loaded;
}

function backLink() {
  return h('p', { class: 'breadcrumb' }, h('a', { href: '#/keys', text: '← All keys' }));
}

function wide(element) {
  element.classList.add('fact-wide');
  return element;
}

function fact(label, ...value) {
  return h('div', { class: 'fact' }, h('dt', { text: label }), h('dd', {}, ...value));
}

/** datetime-local value (local time) <-> RFC 3339. */
function toLocalInput(value) {
  if (!value) return '';
  const date = new Date(value);
  if (Number.isNaN(date.getTime())) return '';
  const local = new Date(date.getTime() - date.getTimezoneOffset() * 60000);
  return local.toISOString().slice(0, 16);
}

// ---------------------------------------------------------------- usage limits

/** A rate limit's window in words: 1000 -> "1 s", 90000 -> "90 s", 3600000 -> "1 h". */
function windowText(ms) {
  const unit = WINDOW_UNITS.find((u) => ms % u.ms === 0) ?? WINDOW_UNITS.at(-1);
  return `${numberFormat.format(ms / unit.ms)} ${unit.short}`;
}

/** "100 per 1 s", or "requests: 100 per 1 s" with the name. */
function rateLimitText(limit, { named = true } = {}) {
  const text = `${numberFormat.format(limit.limit)} per ${windowText(limit.window_ms)}`;
  return named ? `${limit.name}: ${text}` : text;
}

function refillText(refill) {
  const amount = numberFormat.format(refill.amount);
  return refill.interval === 'monthly'
    ? `to ${amount} on day ${refill.day_of_month ?? 1} of each month (UTC)`
    : `to ${amount} every day (00:00 UTC)`;
}

/** What a credit change did, in words. */
function creditChangeText(change) {
  const amount = numberFormat.format(change.amount ?? 0);
  switch (change.op) {
    case 'set': return `Credits set to ${amount}`;
    case 'increment': return `Credits increased by ${amount}`;
    case 'decrement': return `Credits decreased by ${amount}`;
    case 'configure': return `Credits configured: ${numberFormat.format(change.credits?.remaining ?? 0)} remaining${
      change.credits?.refill ? `, refilled ${refillText(change.credits.refill)}` : ''}`;
    case 'remove': return 'Credit limit removed';
    case 'refill': return 'Credits refilled';
    default: return 'Credits changed';
  }
}

/** An error of the console's own checks, pointing at the input at fault. */
function inputError(input, message) {
  const error = new ApiError(0, 'validation_failed', message);
  error.input = input;
  return error;
}

/** A whole number typed in `input`, at least `min`; throws an inputError. */
function wholeNumber(input, what, min) {
  const text = input.value.trim();
  const value = Number(text);
  if (!text || !Number.isSafeInteger(value) || value < min) {
    throw inputError(input, `${what}: give a whole number of at least ${min}`);
  }
  return value;
}

/** Same settings? (a monthly refill without a day is on day 1) */
function sameCredits(a, b) {
  const norm = (c) => c && {
    remaining: c.remaining,
    refill: c.refill ? { amount: c.refill.amount, interval: c.refill.interval,
      day: c.refill.interval === 'monthly' ? (c.refill.day_of_month ?? 1) : null } : null,
  };
  return JSON.stringify(norm(a)) === JSON.stringify(norm(b));
}

function sameRateLimits(a, b) {
  const norm = (list) => list.map(({ name, limit, window_ms }) => ({ name, limit, window_ms }));
  return JSON.stringify(norm(a)) === JSON.stringify(norm(b));
}

/** A labelled field: `label` may be text or nodes. */
function labelled(id, label, input, hint) {
  if (hint) input.setAttribute('aria-describedby', `${id}-hint`);
  return h('div', { class: 'field' }, h('label', { for: id }, label), input,
    hint ? h('p', { class: 'hint', id: `${id}-hint` }, hint) : null);
}

function optional(text) {
  return [`${text} `, h('span', { class: 'optional', text: '(optional)' })];
}

/**
 * The owner, rate limits and credits fields of the create and edit dialogs,
 * starting from `key`'s values (edit) or empty (create). `read()` gives
 * `{ owner, ratelimits, credits }` as the API takes them, or throws an
 * inputError; `inputFor(error)` finds the input a server error is about.
 */
function limitsFields(prefix, key = null) {
  const editing = Boolean(key);
  const owner = h('input', { id: `${prefix}-owner`, name: 'owner', maxlength: '128', autocomplete: 'off', spellcheck: 'false', value: key?.owner ?? '' });

  // Rate limits: one group per limit. Each input's label starts, for screen
  // readers, with "Rate limit N:", so that the rows are told apart.
  const rows = h('div', { class: 'ratelimit-rows' });
  const none = h('p', { class: 'hint', text: 'None: verification does not limit this key by rate (the owner\'s limits still apply).' });
  const add = h('button', { type: 'button', class: 'button-quiet', text: 'Add a rate limit' });
  let rowCount = 0;
  const rowsOf = () => [...rows.querySelectorAll('.ratelimit-row')];
  function renumber() {
    rowsOf().forEach((row, i) => {
      row.querySelector('legend').textContent = `Rate limit ${i + 1}`;
      for (const span of row.querySelectorAll('[data-row-label]')) span.textContent = `Rate limit ${i + 1}: `;
      row.querySelector('[data-remove-label]').textContent = ` rate limit ${i + 1}`;
    });
    none.hidden = rowsOf().length > 0;
    add.hidden = rowsOf().length >= MAX_RATELIMITS;
  }
  function addRow(limit) {
    const n = ++rowCount;
    const id = (part) => `${prefix}-ratelimit-${n}-${part}`;
    const label = (part, text) => h('label', { for: id(part) }, h('span', { class: 'visually-hidden', 'data-row-label': '' }), text);
    const unit = WINDOW_UNITS.find((u) => limit && limit.window_ms % u.ms === 0) ?? WINDOW_UNITS.at(-1);
    // "Remove rate limit N" to screen readers.
    const remove = h('button', { type: 'button', class: 'button-quiet' }, 'Remove', h('span', { class: 'visually-hidden', 'data-remove-label': '' }));
    const row = h('fieldset', { class: 'ratelimit-row' },
      h('legend', { class: 'visually-hidden' }),
      h('div', { class: 'field' }, label('name', 'Name'),
        h('input', { id: id('name'), 'data-part': 'name', maxlength: '32', autocomplete: 'off', spellcheck: 'false', value: limit?.name ?? '' })),
      h('div', { class: 'field' }, label('limit', 'Limit'),
        h('input', { id: id('limit'), 'data-part': 'limit', type: 'number', min: '1', step: '1', inputmode: 'numeric', value: limit?.limit ?? '' })),
      h('div', { class: 'field' }, label('window', 'Per'),
        h('input', { id: id('window'), 'data-part': 'window', type: 'number', min: '1', step: 'any', inputmode: 'decimal', value: limit ? limit.window_ms / unit.ms : '1' })),
      h('div', { class: 'field' }, label('unit', 'Unit'),
        h('select', { id: id('unit'), 'data-part': 'unit' },
          WINDOW_UNITS.map((u) => h('option', { value: String(u.ms), selected: u === unit, text: u.long })))),
      h('div', { class: 'ratelimit-remove' }, remove));
    remove.addEventListener('click', () => {
      const at = rowsOf().indexOf(row);
      row.remove();
      renumber();
      const rest = rowsOf();
      (rest[Math.min(at, rest.length - 1)]?.querySelector('[data-part="name"]') ?? add).focus();
    });
    rows.append(row);
    renumber();
    return row;
  }
  add.addEventListener('click', () => {
    addRow(null).querySelector('[data-part="name"]').focus();
  });
  for (const limit of key?.ratelimits ?? []) addRow(limit);
  renumber();

  // Credits: off (no credit limit) or a balance and an optional refill.
  const credits = key?.credits ?? null;
  const creditsOn = h('input', { type: 'checkbox', id: `${prefix}-credits-on`, checked: Boolean(credits) });
  const remaining = h('input', { id: `${prefix}-credits-remaining`, name: 'credits', type: 'number', min: '0', step: '1', inputmode: 'numeric', value: credits?.remaining ?? '' });
  const refill = h('select', { id: `${prefix}-refill` },
    h('option', { value: '', selected: !credits?.refill, text: 'never' }),
    h('option', { value: 'daily', selected: credits?.refill?.interval === 'daily', text: 'daily' }),
    h('option', { value: 'monthly', selected: credits?.refill?.interval === 'monthly', text: 'monthly' }));
  const refillAmount = h('input', { id: `${prefix}-refill-amount`, type: 'number', min: '1', step: '1', inputmode: 'numeric', value: credits?.refill?.amount ?? '' });
  const refillDay = h('input', { id: `${prefix}-refill-day`, type: 'number', min: '1', max: '28', step: '1', inputmode: 'numeric', value: credits?.refill?.day_of_month ?? 1 });
  const amountField = labelled(refillAmount.id, 'Refill amount', refillAmount, 'At each refill the balance becomes this.');
  const dayField = labelled(refillDay.id, 'Day of the month', refillDay, '1 to 28.');
  const creditsBox = h('div', { class: 'credits-fields' },
    labelled(remaining.id, 'Credits remaining', remaining, editing
      ? 'Saving a change here sets the balance to this number. To add or take away credits, use the form on the key\'s page.'
      : 'Each verification spends one; with none left, verification answers USAGE_EXCEEDED.'),
    labelled(refill.id, 'Refill', refill),
    amountField, dayField);
  const sync = () => {
    creditsBox.hidden = !creditsOn.checked;
    amountField.hidden = !refill.value;
    dayField.hidden = refill.value !== 'monthly';
  };
  creditsOn.addEventListener('change', sync);
  refill.addEventListener('change', sync);
  sync();

  const element = h('div', { class: 'limits-fields' },
    labelled(owner.id, optional('Owner'), owner,
      'Your own id for the customer who holds the key, e.g. cus_123. Keys with the same owner share the owner\'s rate limits.'),
    h('fieldset', { class: 'field limits-group' },
      h('legend', { text: 'Rate limits' }),
      h('p', { class: 'hint', text: `At most ${MAX_RATELIMITS}. Past a limit, verification answers RATE_LIMITED until the window ends.` }),
      none, rows, h('div', {}, add)),
    h('fieldset', { class: 'field limits-group' },
      h('legend', { text: 'Credits' }),
      h('label', { class: 'choice' }, creditsOn, ' Limit the key with credits'),
      creditsBox));

  function read() {
    const ratelimits = rowsOf().map((row, i) => {
      const part = (name) => row.querySelector(`[data-part="${name}"]`);
      const what = `rate limit ${i + 1}`;
      const name = part('name').value.trim();
      if (!name) throw inputError(part('name'), `${what}: give it a name, e.g. requests`);
      const limit = wholeNumber(part('limit'), `${what}, limit`, 1);
      const windowValue = Number(part('window').value);
      if (!part('window').value.trim() || !(windowValue > 0)) throw inputError(part('window'), `${what}: give the length of its window`);
      return { name, limit, window_ms: Math.round(windowValue * Number(part('unit').value)) };
    });
    let creditsValue = null;
    if (creditsOn.checked) {
      creditsValue = { remaining: wholeNumber(remaining, 'credits remaining', 0) };
      if (refill.value) {
        creditsValue.refill = { amount: wholeNumber(refillAmount, 'refill amount', 1), interval: refill.value };
        if (refill.value === 'monthly') creditsValue.refill.day_of_month = wholeNumber(refillDay, 'day of the month', 1);
      }
    }
    return { owner: owner.value.trim() || null, ratelimits, credits: creditsValue };
  }

  function inputFor(error) {
    if (error?.input) return error.input;
    const message = error?.message ?? '';
    switch (error?.details?.field) {
      case 'owner': return owner;
      case 'ratelimits': {
        const match = /ratelimits\[(\d+)\]\.(name|limit|window_ms)/.exec(message);
        const row = rowsOf()[match ? Number(match[1]) : 0];
        if (!row) return add;
        return row.querySelector(`[data-part="${match?.[2] === 'window_ms' ? 'window' : match?.[2] ?? 'name'}"]`);
      }
      case 'credits':
        if (/day_of_month|day of/.test(message) && !dayField.hidden) return refillDay;
        if (/refill/.test(message) && !amountField.hidden) return refillAmount;
        return creditsOn.checked ? remaining : creditsOn;
      default: return null;
    }
  }

  /** Marks the input an error is about and moves focus there. */
  function fail(error, input = inputFor(error)) {
    if (!input) return;
    if (input.matches('input:not([type="checkbox"]), select, textarea')) input.setAttribute('aria-invalid', 'true');
    const details = input.closest('details');
    if (details) details.open = true;
    input.focus();
  }

  return { element, read, inputFor, fail };
}

/** Edits a key's owner, rate limits and credits settings (PATCH); resolves to the new view or null. */
async function editLimits(key, returnTo) {
  const dialog = $('#limits-dialog');
  const form = $('#limits-form');
  const submit = $('#limits-submit');
  $('#limits-title').textContent = `Usage limits of “${key.name}”`;
  const fields = limitsFields('limits', key);
  $('#limits-fields').replaceChildren(fields.element);
  dialogError($('#limits-error'), null);
  let saved = null;
  form.onsubmit = async (event) => {
    event.preventDefault();
    for (const field of form.querySelectorAll('[aria-invalid]')) field.removeAttribute('aria-invalid');
    let values;
    try {
      values = fields.read();
    } catch (error) {
      dialogError($('#limits-error'), error);
      fields.fail(error);
      return;
    }
    // Only what changed: credits settings sent again would reset the balance.
    const body = {};
    if (values.owner !== (key.owner ?? null)) body.owner = values.owner;
    if (!sameRateLimits(values.ratelimits, key.ratelimits ?? [])) body.ratelimits = values.ratelimits;
    if (!sameCredits(values.credits, key.credits ?? null)) body.credits = values.credits;
    saved = (await patchFromDialog(dialog, submit, key, body, $('#limits-error'), (error) => fields.fail(error))) ?? saved;
  };
  await openDialog(dialog, returnTo, $('#limits-owner'));
  return saved;
}

/** The key page's form that sets, increments or decrements the balance. */
function creditsForm(key, after) {
  const op = h('select', { id: 'credits-op', name: 'op' },
    h('option', { value: 'increment', text: 'Add' }),
    h('option', { value: 'decrement', text: 'Take away' }),
    h('option', { value: 'set', text: 'Set the balance to' }));
  const amount = h('input', { id: 'credits-amount', name: 'amount', type: 'number', min: '0', step: '1', inputmode: 'numeric', autocomplete: 'off' });
  const reason = h('input', { id: 'credits-reason', name: 'reason', maxlength: '500', autocomplete: 'off' });
  const error = h('div', { class: 'dialog-error', role: 'alert', hidden: true });
  const submit = h('button', { type: 'submit', class: 'button-primary', text: 'Change credits' });
  const form = h('form', { class: 'panel credits-change', id: 'credits-form', novalidate: true, 'aria-labelledby': 'credits-change-title' },
    h('h3', { id: 'credits-change-title', text: 'Change the balance' }),
    error,
    h('div', { class: 'credits-change-fields' },
      labelled(op.id, 'Change', op),
      labelled(amount.id, 'Amount', amount),
      labelled(reason.id, ['Reason ', h('span', { class: 'optional', text: '(optional, kept in the audit log)' })], reason),
      h('div', { class: 'credits-change-submit' }, submit)));
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    for (const field of form.querySelectorAll('[aria-invalid]')) field.removeAttribute('aria-invalid');
    dialogError(error, null);
    const body = { op: op.value };
    try {
      // The server says what is allowed (e.g. at least 1 to add); here, a number.
      body.amount = wholeNumber(amount, 'amount', 0);
    } catch (e) {
      dialogError(error, e);
      amount.setAttribute('aria-invalid', 'true');
      amount.focus();
      return;
    }
    if (reason.value.trim()) body.reason = reason.value.trim();
    submit.disabled = true;
    try {
      const view = await api('POST', `/v1/keys/${encodeURIComponent(key.id)}/credits`, { body });
      after(`Credits of “${key.name}”: ${view.credits ? numberFormat.format(view.credits.remaining) : 'no limit'} remaining.`,
        { focus: '#credits-amount' });
    } catch (e) {
      submit.disabled = false;
      dialogError(error, e);
      const field = e.details?.field;
      const input = { amount, op, reason }[field] ?? amount;
      if (field) input.setAttribute('aria-invalid', 'true');
      input.focus();
    }
  });
  return form;
}

/** The key page's section of usage limits: what they are, and ways to change them. */
function limitsSection(key, after) {
  const edit = h('button', { type: 'button', class: 'button-quiet', text: 'Edit usage limits' });
  edit.addEventListener('click', async () => {
    const view = await editLimits(key, edit);
    if (view) after(`Saved the usage limits of “${key.name}”.`);
  });
  const credits = key.credits;
  const ratelimits = key.ratelimits ?? [];
  return [
    h('div', { class: 'section-head' }, h('h2', { text: 'Usage limits' }), edit),
    h('dl', { class: 'facts' },
      fact('Owner', key.owner ? h('span', { class: 'mono', text: key.owner }) : h('span', { class: 'muted', text: 'none' })),
      fact('Rate limits', ratelimits.length
        ? h('ul', { class: 'ratelimits' }, ratelimits.map((r) => h('li', { 'data-ratelimit': r.name },
          h('span', { class: 'mono', text: r.name }), ': ', rateLimitText(r, { named: false }))))
        : h('span', { class: 'muted', text: 'none' })),
      fact('Credits remaining', credits
        ? h('span', { class: 'num', 'data-credits': String(credits.remaining), text: numberFormat.format(credits.remaining) })
        : h('span', { class: 'muted', text: 'no limit' })),
      credits ? fact('Refill', credits.refill ? refillText(credits.refill) : h('span', { class: 'muted', text: 'never' })) : null),
    credits
      ? creditsForm(key, after)
      : h('p', { class: 'hint limits-hint', text: 'The key has no credit limit: edit the usage limits to give it credits.' }),
  ];
}

function auditScreen(params, main) {
  const filters = {
    key_id: params.get('key_id') ?? '', actor: params.get('actor') ?? '', type: params.get('type') ?? '',
    since: params.get('since') ?? '', until: params.get('until') ?? '', order: params.get('order') ?? 'desc',
  };
  const text = (name, label, extra = {}) => h('div', { class: 'field' },
    h('label', { for: `audit-${name}`, text: label }),
    h('input', { id: `audit-${name}`, name, value: filters[name], autocomplete: 'off', spellcheck: 'false', ...extra }));
  const when = (name, label) => h('div', { class: 'field' },
    h('label', { for: `audit-${name}`, text: label }),
    h('input', { id: `audit-${name}`, name, type: 'datetime-local', value: toLocalInput(filters[name]) }));
  const form = h('form', { class: 'filters filters-audit', role: 'search', 'aria-label': 'Filter the audit log' },
    text('key_id', 'Key ID', { placeholder: 'key_…' }),
    text('actor', 'Actor'),
    h('div', { class: 'field' }, h('label', { for: 'audit-type', text: 'Event type' }),
      h('select', { id: 'audit-type', name: 'type' },
        h('option', { value: '', text: 'Any type' }),
        EVENT_TYPES.map((t) => h('option', { value: t, selected: t === filters.type, text: t })))),
    when('since', 'From'),
    when('until', 'Until'),
    h('div', { class: 'field' }, h('label', { for: 'audit-order', text: 'Order' }),
      h('select', { id: 'audit-order', name: 'order' },
        h('option', { value: 'desc', selected: filters.order !== 'asc', text: 'Newest first' }),
        h('option', { value: 'asc', selected: filters.order === 'asc', text: 'Oldest first' }))),
    h('div', { class: 'filter-buttons' },
      h('button', { type: 'submit', class: 'button-primary', text: 'Apply filters' }),
      h('button', { type: 'button', class: 'button-quiet', text: 'Clear', onclick: () => {
        history.replaceState(null, '', '#/audit');
        render();
      } })));
  const count = h('p', { class: 'count', 'aria-live': 'polite' });
  const wrap = h('div', { class: 'table-wrap' });
  const more = h('button', { type: 'button', class: 'button-quiet', hidden: true, text: 'Show more events' });
  main.replaceChildren(pageHead('Audit log'),
    h('p', { class: 'hint', text: 'Everything done to the keys of this workspace: who, what, when.' }),
    form, count, wrap, more);

  form.addEventListener('submit', (event) => {
    event.preventDefault();
    const data = new FormData(form);
    const next = {};
    for (const [name, value] of data) {
      const v = String(value).trim();
      if (!v) continue;
      next[name] = (name === 'since' || name === 'until') ? new Date(v).toISOString() : v;
    }
    if (next.order === 'desc') delete next.order;
    history.replaceState(null, '', routeQuery('audit', next));
    Object.assign(filters, { key_id: '', actor: '', type: '', since: '', until: '', order: 'desc' }, next);
    clearErrors();
    load();
  });
  more.addEventListener('click', () => load(true));

  let cursor = null;
  let events = [];
  let generation = 0;
  // Names for the key column: the tenant's keys now, and the names deleted keys
  // were created with.
  const names = new Map();
  const knownKeys = api('GET', '/v1/keys?limit=100').then((page) => {
    for (const key of page.keys) names.set(key.id, key.name);
  }).catch(() => {});
  async function load(append = false) {
    const mine = ++generation;
    const query = new URLSearchParams({ limit: String(AUDIT_PAGE_SIZE), order: filters.order || 'desc' });
    for (const name of ['key_id', 'actor', 'type', 'since', 'until']) if (filters[name]) query.set(name, filters[name]);
    if (append && cursor) query.set('cursor', cursor);
    more.disabled = true;
    try {
      const page = await api('GET', `/v1/audit?${query}`);
      await knownKeys;
      if (mine !== generation) return;
      events = append ? events.concat(page.events) : page.events;
      for (const e of events) {
        if (e.type === 'KeyCreated' && e.data?.name && !names.has(e.key_id)) names.set(e.key_id, e.data.name);
      }
      cursor = page.next_cursor;
      more.hidden = !cursor;
      wrap.replaceChildren(events.length
        ? eventsTable(events, { names })
        : h('p', { class: 'empty', text: 'No event matches these filters.' }));
      count.textContent = `${events.length} ${events.length === 1 ? 'event' : 'events'}${cursor ? ' so far' : ''}`;
    } catch (error) {
      if (mine !== generation) return;
      showError(error);
      if (!append) wrap.replaceChildren(h('p', { class: 'empty', text: 'The audit log could not be loaded: see the message above.' }));
    } finally {
      more.disabled = false;
    }
  }
  return load();
}

function signInScreen(main) {
  const input = h('input', { id: 'token-input', name: 'token', type: 'password', autocomplete: 'off', spellcheck: 'false', required: true, 'aria-describedby': 'token-hint' });
  const error = h('p', { class: 'dialog-error', role: 'alert', hidden: true });
  const form = h('form', { class: 'panel signin', 'aria-labelledby': 'signin-title' },
    h('h1', { id: 'signin-title', tabindex: '-1', text: 'Sign in with a management token' }),
    h('p', {}, 'The console uses the keyledger API with a management token (a JWT). ',
      'It is kept in this browser tab only and sent to this server alone.'),
    error,
    h('div', { class: 'field' }, h('label', { for: 'token-input', text: 'Management token' }), input,
      h('p', { class: 'hint', id: 'token-hint' }, 'Get one with ',
        h('code', { text: 'keyledger token --tenant T --subject YOU --open' }),
        ', which prints a link that opens the console and offers to sign you in.')),
    h('div', { class: 'dialog-actions' }, h('button', { type: 'submit', class: 'button-primary', text: 'Open the console' })));
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    const value = input.value.trim();
    if (value.split('.').length !== 3) {
      error.textContent = 'That does not look like a token: a JWT has three parts separated by dots.';
      error.hidden = false;
      input.setAttribute('aria-invalid', 'true');
      input.focus();
      return;
    }
    sessionStorage.setItem(TOKEN_KEY, value);
    history.replaceState(null, '', '#/keys');
    render();
  });
  main.replaceChildren(form);
}

// ---------------------------------------------------------------- usage

/** What a verification answered, as usage buckets count it, in stacking order. */
const OUTCOMES = [
  { id: 'valid', label: 'Valid' },
  { id: 'disabled', label: 'Disabled' },
  { id: 'expired', label: 'Expired' },
  { id: 'wrong_environment', label: 'Wrong environment' },
  { id: 'insufficient_permissions', label: 'Insufficient permissions' },
  { id: 'rate_limited', label: 'Rate limited' },
  { id: 'usage_exceeded', label: 'Usage exceeded' },
  { id: 'ip_not_allowed', label: 'IP not allowed' },
];
/** The ranges a chart offers: the API's defaults for each granularity. */
const USAGE_RANGES = [
  { id: '1h', granularity: 'minute', label: 'Last hour, by minute' },
  { id: '2d', granularity: 'hour', label: 'Last 2 days, by hour' },
  { id: '30d', granularity: 'day', label: 'Last 30 days, by day' },
];
/** The tenant's usage is by hour or by day. */
const TENANT_RANGES = USAGE_RANGES.filter((r) => r.granularity !== 'minute');
const SPARK_DAYS = 14;
const SVG_NS = 'http://www.w3.org/2000/svg';

/** Like h(), for SVG elements. */
function svg(tag, attrs = {}, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === 'text') el.textContent = value;
    else el.setAttribute(name, String(value));
  }
  for (const child of children.flat(Infinity)) if (child) el.append(child);
  return el;
}

/** A bucket's start, as the chart's axis and table show it. */
const BUCKET_FORMATS = {
  minute: new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit' }),
  hour: new Intl.DateTimeFormat(undefined, { day: 'numeric', month: 'short', hour: '2-digit', minute: '2-digit' }),
  // Days are UTC days.
  day: new Intl.DateTimeFormat(undefined, { day: 'numeric', month: 'short', timeZone: 'UTC' }),
};
const UNIT_WORDS = { minute: 'minute', hour: 'hour', day: 'day' };

function bucketLabel(start, granularity) {
  const date = new Date(start);
  return Number.isNaN(date.getTime()) ? String(start) : (BUCKET_FORMATS[granularity] ?? dateFormat).format(date);
}

/** What a bucket counted that no known outcome covers (a newer server's outcome). */
function otherOf(bucket) {
  return Math.max(0, (bucket.total ?? 0) - OUTCOMES.reduce((n, o) => n + (bucket[o.id] ?? 0), 0));
}

/** The outcomes a chart shows: the known ones, and "Other" when some count is unexplained. */
function seriesOf(buckets) {
  return buckets.some((b) => otherOf(b) > 0) ? [...OUTCOMES, { id: 'other', label: 'Other' }] : OUTCOMES;
}

function valueOf(bucket, id) {
  return id === 'other' ? otherOf(bucket) : (bucket[id] ?? 0);
}

/** Sums of `buckets`: `total` and one per outcome. */
function usageTotals(buckets) {
  const totals = { total: 0, other: 0 };
  for (const o of OUTCOMES) totals[o.id] = 0;
  for (const b of buckets) {
    totals.total += b.total ?? 0;
    totals.other += otherOf(b);
    for (const o of OUTCOMES) totals[o.id] += b[o.id] ?? 0;
  }
  return totals;
}

function plural(n, one, many = `${one}s`) {
  return `${numberFormat.format(n)} ${n === 1 ? one : many}`;
}

/** The chart in words: what its aria-label says. */
function usageSummary(usage, subject, rangeLabel) {
  const buckets = usage.buckets ?? [];
  const totals = usageTotals(buckets);
  const head = `${subject}, ${rangeLabel.toLowerCase()}: ${plural(totals.total, 'verification')}`;
  if (!totals.total) return `${head}.`;
  const parts = seriesOf(buckets).filter((o) => totals[o.id])
    .map((o) => `${numberFormat.format(totals[o.id])} ${o.label.toLowerCase()}`);
  const peak = buckets.reduce((a, b) => ((b.total ?? 0) > (a.total ?? 0) ? b : a));
  return `${head}: ${parts.join(', ')}. Busiest ${UNIT_WORDS[usage.granularity] ?? 'period'}: `
    + `${bucketLabel(peak.start, usage.granularity)}, with ${numberFormat.format(peak.total)}.`;
}

/** 1, 2, 5, 10, 20, 50…: the top of the scale for counts up to `n`. */
function niceMax(n) {
  const power = 10 ** Math.floor(Math.log10(Math.max(1, n)));
  return [1, 2, 5, 10].map((m) => m * power).find((m) => m >= n);
}

/** Draws stacked bars of `buckets` into `plot`, at the width `plot` has now. */
function drawBars(plot, usage, series, label) {
  const buckets = usage.buckets ?? [];
  const width = Math.max(240, Math.floor(plot.clientWidth));
  const height = Math.max(120, Math.floor(plot.clientHeight));
  const max = niceMax(Math.max(1, ...buckets.map((b) => b.total ?? 0)));
  const yLabels = [0, max / 2, max].filter(Number.isInteger);
  const left = 8 + 7 * String(numberFormat.format(max)).length;
  const right = 6;
  const top = 8;
  const bottom = 22;
  const innerW = width - left - right;
  const innerH = height - top - bottom;
  const y = (v) => top + innerH - (v / max) * innerH;
  const step = innerW / Math.max(1, buckets.length);
  const barW = step >= 4 ? step * 0.72 : step;
  const grid = yLabels.map((v) => svg('g', { class: 'chart-grid' },
    svg('line', { x1: left, x2: width - right, y1: y(v), y2: y(v) }),
    svg('text', { x: left - 5, y: y(v), dy: '0.32em', 'text-anchor': 'end', text: numberFormat.format(v) })));
  const bars = buckets.map((b, i) => {
    const x = left + i * step + (step - barW) / 2;
    let base = 0;
    const segments = [];
    for (const o of series) {
      const value = valueOf(b, o.id);
      if (!value) continue;
      // A hairline of white between segments tells them apart whatever their colours.
      segments.push(svg('rect', {
        class: `seg seg-${o.id}`, x, width: barW, y: y(base + value), height: Math.max(0, y(base) - y(base + value)),
      }));
      base += value;
    }
    const words = seriesOf([b]).filter((o) => valueOf(b, o.id)).map((o) => `${valueOf(b, o.id)} ${o.label.toLowerCase()}`);
    return svg('g', { class: 'bar' },
      svg('title', { text: `${bucketLabel(b.start, usage.granularity)}: ${plural(b.total ?? 0, 'verification')}${words.length ? ` (${words.join(', ')})` : ''}` }),
      // The whole column answers the pointer, also where it is empty.
      svg('rect', { class: 'bar-hit', x: left + i * step, y: top, width: step, height: innerH }),
      segments);
  });
  // As many axis labels as fit, evenly spaced.
  const labelWidth = { minute: 52, hour: 112, day: 60 }[usage.granularity] ?? 90;
  const every = Math.max(1, Math.ceil(buckets.length / Math.max(1, Math.floor(innerW / labelWidth))));
  const xLabels = buckets.map((b, i) => {
    if (i % every !== 0) return null;
    const text = bucketLabel(b.start, usage.granularity);
    // About 6 px a character at 11 px: kept whole inside the chart.
    const half = text.length * 3.2;
    const x = Math.min(Math.max(left + (i + 0.5) * step, half), width - right - half);
    return svg('text', { class: 'chart-x', x, y: height - 6, 'text-anchor': 'middle', text });
  });
  plot.replaceChildren(svg('svg', {
    class: 'chart', width, height, viewBox: `0 0 ${width} ${height}`, role: 'img', 'aria-label': label, focusable: 'false',
  }, grid, svg('line', { class: 'chart-axis', x1: left, x2: width - right, y1: y(0), y2: y(0) }), bars, xLabels));
}

let chartCount = 0;

/**
 * A usage answer as a chart: stacked bars of outcomes over time (inline SVG
 * drawn here, at the width of its box and again when that changes), a legend
 * with the totals, and the same numbers as a table for screen readers and
 * whoever wants the figures.
 */
function usageChart(usage, { subject, rangeLabel, legend: withLegend = true }) {
  const n = ++chartCount;
  const buckets = usage.buckets ?? [];
  const series = seriesOf(buckets);
  const totals = usageTotals(buckets);
  const label = usageSummary(usage, subject, rangeLabel);
  const plot = h('div', { class: 'chart-plot' });
  let drawnWidth = -1;
  const observer = new ResizeObserver(() => {
    if (!plot.isConnected) {
      observer.disconnect();
      return;
    }
    if (plot.clientWidth === drawnWidth) return;
    drawnWidth = plot.clientWidth;
    drawBars(plot, usage, series, label);
  });
  observer.observe(plot);
  const legend = withLegend ? h('ul', { class: 'legend', 'aria-label': 'Legend' }, series.map((o) => h('li', { 'data-outcome': o.id },
    h('span', { class: `swatch seg-${o.id}`, 'aria-hidden': 'true' }), `${o.label} `,
    h('span', { class: 'num', text: numberFormat.format(totals[o.id]) })))) : null;
  const unit = UNIT_WORDS[usage.granularity] ?? usage.granularity;
  const cell = (id, value) => h('td', { class: 'num', 'data-outcome': id, text: numberFormat.format(value) });
  const table = h('table', { class: 'usage-table' },
    h('caption', { text: `${subject}: verifications per ${unit}, ${rangeLabel.toLowerCase()} (${dateFormat.format(new Date(usage.since))} to ${dateFormat.format(new Date(usage.until))})` }),
    h('thead', {}, h('tr', {}, h('th', { scope: 'col', text: 'Start' }), h('th', { scope: 'col', text: 'Total' }),
      series.map((o) => h('th', { scope: 'col', text: o.label })))),
    h('tbody', {}, buckets.map((b) => h('tr', { 'data-start': b.start },
      h('th', { scope: 'row' }, h('time', { datetime: b.start, title: b.start, text: bucketLabel(b.start, usage.granularity) })),
      cell('total', b.total ?? 0), series.map((o) => cell(o.id, valueOf(b, o.id)))))),
    h('tfoot', {}, h('tr', {}, h('th', { scope: 'row', text: 'All' }), cell('total', totals.total),
      series.map((o) => cell(o.id, totals[o.id])))));
  const numbers = h('details', { class: 'usage-numbers' },
    h('summary', { text: 'The numbers, as a table' }),
    h('div', { class: 'table-scroll', role: 'region', tabindex: '0', 'aria-label': `Usage table ${n}: ${subject}` }, table));
  return h('figure', {
    class: 'usage-chart', 'data-granularity': usage.granularity, 'data-since': usage.since, 'data-until': usage.until,
  }, plot, legend, numbers);
}

/** A labelled <select> of ranges; `onchange(range)`. */
function rangePicker(id, ranges, current, onchange) {
  const picker = h('select', { id }, ranges.map((r) => h('option', { value: r.id, selected: r === current, text: r.label })));
  picker.addEventListener('change', () => onchange(ranges.find((r) => r.id === picker.value)));
  return h('div', { class: 'field field-inline range-picker' }, h('label', { for: id, text: 'Range' }), picker);
}

/** Loads `path` for `range` into `box` as a chart; an error is said in the box. */
async function loadChart(box, path, range, subject, around = (usage, chart) => [chart], options = {}) {
  box.setAttribute('aria-busy', 'true');
  try {
    const usage = await api('GET', `${path}?granularity=${range.granularity}`);
    box.replaceChildren(...around(usage, usageChart(usage, { subject, rangeLabel: range.label, ...options })));
    return usage;
  } catch (error) {
    box.replaceChildren(h('p', { class: 'empty usage-error' }, 'The usage could not be loaded. ', errorContent(error)));
    return null;
  } finally {
    box.removeAttribute('aria-busy');
  }
}

/** The key page's usage section; `loaded` settles once its chart is there. */
function keyUsageSection(key, params) {
  const route = (r) => `#/keys/${encodeURIComponent(key.id)}${r.id === USAGE_RANGES[1].id ? '' : `?range=${r.id}`}`;
  const range = USAGE_RANGES.find((r) => r.id === params?.get('range')) ?? USAGE_RANGES[1];
  const box = h('div', { class: 'usage-box', id: 'key-usage' });
  const path = `/v1/keys/${encodeURIComponent(key.id)}/usage`;
  const picker = rangePicker('usage-range', USAGE_RANGES, range, (next) => {
    history.replaceState(null, '', route(next));
    loadChart(box, path, next, `Verifications of “${key.name}”`);
  });
  return {
    nodes: [h('div', { class: 'section-head' }, h('h2', { text: 'Usage' }), picker),
      h('p', { class: 'hint', text: 'Every verification of the key, by what it answered.' }), box],
    loaded: loadChart(box, path, range, `Verifications of “${key.name}”`),
  };
}

/** Since when a key list's trend counts: the start (UTC) of the day 13 days ago. */
function trendSince() {
  const day = new Date();
  day.setUTCHours(0, 0, 0, 0);
  day.setUTCDate(day.getUTCDate() - (SPARK_DAYS - 1));
  return day.toISOString();
}

/** A key's verifications per day as a small bar chart, for the key list. */
function sparkline(usage) {
  const buckets = usage.buckets ?? [];
  const width = 56;
  const height = 22;
  const max = Math.max(1, ...buckets.map((b) => b.total ?? 0));
  const step = width / Math.max(1, buckets.length);
  const total = buckets.reduce((n, b) => n + (b.total ?? 0), 0);
  const peak = buckets.reduce((a, b) => ((b.total ?? 0) > (a?.total ?? 0) ? b : a), null);
  const label = total
    ? `${plural(total, 'verification')} in the last ${SPARK_DAYS} days, most on ${bucketLabel(peak.start, 'day')} (${numberFormat.format(peak.total)})`
    : `No verification in the last ${SPARK_DAYS} days`;
  return svg('svg', {
    class: 'sparkline', width, height, viewBox: `0 0 ${width} ${height}`, role: 'img', 'aria-label': label,
    'data-since': usage.since, 'data-until': usage.until, 'data-totals': buckets.map((b) => b.total ?? 0).join(','),
  }, svg('title', { text: label }), buckets.map((b, i) => {
    const value = b.total ?? 0;
    // A day without use is a flat mark, so that the row of days stays visible.
    const barHeight = value ? Math.max(2, (value / max) * (height - 2)) : 1;
    return svg('rect', {
      class: value ? 'spark-bar' : 'spark-zero', x: i * step + 0.5, width: Math.max(1, step - 1), y: height - barHeight, height: barHeight,
    });
  }));
}

/** The tenant's verifications: totals per outcome, the chart, the keys most verified. */
async function overviewScreen(params, main) {
  const range = TENANT_RANGES.find((r) => r.id === params.get('range')) ?? TENANT_RANGES[0];
  const box = h('div', { class: 'usage-box', id: 'overview-usage' });
  const load = (r) => loadChart(box, '/v1/usage', r, 'Verifications of all keys', (usage, chart) => overviewParts(usage, chart, r),
    // The totals above the chart, each with its colour, are its legend.
    { legend: false });
  const picker = rangePicker('overview-range', TENANT_RANGES, range, (next) => {
    history.replaceState(null, '', routeQuery('overview', { range: next === TENANT_RANGES[0] ? '' : next.id }));
    load(next);
  });
  main.replaceChildren(pageHead('Overview', picker),
    h('p', { class: 'hint overview-hint', text: 'How the keys of this workspace were verified, and what the answers were.' }), box);
  await load(range);
}

/** The totals of a tenant's usage answer, its chart, and the keys verified most. */
function overviewParts(usage, chart, range) {
  const totals = usageTotals(usage.buckets ?? []);
  const stats = h('dl', { class: 'stats' },
    h('div', { class: 'stat stat-total', 'data-outcome': 'total' }, h('dt', { text: 'Verifications' }),
      h('dd', { class: 'num', text: numberFormat.format(totals.total) })),
    seriesOf(usage.buckets ?? []).map((o) => h('div', { class: 'stat', 'data-outcome': o.id },
      h('dt', {}, h('span', { class: `swatch seg-${o.id}`, 'aria-hidden': 'true' }), o.label),
      h('dd', { class: 'num', text: numberFormat.format(totals[o.id]) }))));
  const top = usage.top_keys ?? [];
  const cell = (label, value) => h('td', { 'data-label': label }, h('div', {}, h('span', { class: 'num', text: numberFormat.format(value) })));
  const topTable = top.length
    ? h('div', { class: 'table-wrap' }, h('table', { class: 'data data-top' },
      h('caption', { class: 'visually-hidden', text: `The keys verified most, ${range.label.toLowerCase()}` }),
      h('thead', {}, h('tr', {}, h('th', { scope: 'col', text: 'Key' }),
        ['Verifications', 'Valid', 'Refused'].map((t) => h('th', { scope: 'col', class: 'col-num', text: t })))),
      h('tbody', {}, top.map((k) => h('tr', { 'data-key-id': k.key_id },
        h('th', { scope: 'row', 'data-label': 'Key', class: 'cell-name' }, keyLink(k.key_id, k.name ?? 'deleted key'),
          k.name ? null : h('span', { class: 'subtle mono', text: k.key_id })),
        cell('Verifications', k.total ?? 0), cell('Valid', k.valid ?? 0),
        cell('Refused', Math.max(0, (k.total ?? 0) - (k.valid ?? 0))))))))
    : h('p', { class: 'empty', text: 'No key was verified in this range.' });
  return [stats, chart, h('h2', { text: 'Most verified keys' }),
    h('p', { class: 'hint', text: 'At most 10, by verifications in the range.' }), topTable];
}

// ---------------------------------------------------------------- hygiene

const IDLE_DAYS = ['30', '60', '90'];

/**
 * Keys to look at: idle, never used, expiring soon, never expiring; each list
 * is `GET /v1/keys` with the API's filters, and each key offers what to do
 * about it next to the usual actions.
 */
async function hygieneScreen(params, main) {
  const idle = IDLE_DAYS.includes(params.get('idle')) ? params.get('idle') : IDLE_DAYS[0];
  const sections = [
    {
      id: 'idle', title: 'Idle', filters: () => ({ status: 'active', unused_for: `${picker.value}d` }),
      hint: () => `Active keys not used for ${picker.value} days (or never, and made before then). Deactivate what nothing needs any more; a deactivated key can be reactivated.`,
      empty: 'No idle key.', action: 'Deactivate',
    },
    {
      id: 'never-used', title: 'Never used', filters: () => ({ status: 'active', never_used: 'true' }),
      hint: () => 'Active keys that have never been verified successfully. Delete those nobody is going to use.',
      empty: 'Every active key has been used.', action: 'Delete',
    },
    {
      id: 'expiring', title: 'Expiring within 14 days', filters: () => ({ status: 'active', expires_within: '14d' }),
      hint: () => 'Active keys that stop working within 14 days. Rotate those still needed: the new key replaces the old one.',
      empty: 'No key expires within 14 days.', action: 'Rotate',
    },
    {
      id: 'no-expiry', title: 'Never expiring', filters: () => ({ status: 'active', no_expiry: 'true' }),
      hint: () => 'Active keys without an expiry: a leaked one would work for ever. Give them an expiry.',
      empty: 'Every active key has an expiry.', action: 'Set an expiry',
    },
  ];
  const picker = h('select', { id: 'idle-days' }, IDLE_DAYS.map((d) => h('option', { value: d, selected: d === idle, text: `${d} days` })));
  main.replaceChildren(pageHead('Hygiene'),
    h('p', { class: 'hint', text: 'Keys that deserve a look, as the API finds them. Each list is of active keys.' }),
    ...sections.map((section) => {
      section.count = h('span', { class: 'count-badge' });
      section.hintEl = h('p', { class: 'hint', text: section.hint() });
      section.body = h('div', { class: 'hygiene-body' });
      section.element = h('section', { class: 'hygiene-section', id: `hygiene-${section.id}`, 'data-section': section.id, 'aria-labelledby': `hygiene-${section.id}-title` },
        h('div', { class: 'section-head' }, h('h2', { id: `hygiene-${section.id}-title` }, section.title, ' ', section.count),
          section.id === 'idle' ? h('div', { class: 'field field-inline' }, h('label', { for: 'idle-days', text: 'Not used for' }), picker) : null),
        section.hintEl, section.body);
      return section.element;
    }));
  // After an action every list is loaded again (a key may leave several); focus
  // goes back to the same key in the same list, or to the list's heading.
  const after = (section, id) => (message) => {
    announce(message);
    loadAll().then(() => {
      const row = section.body.querySelector(`tr[data-key-id="${CSS.escape(id)}"] .menu-button`);
      const heading = section.element.querySelector('h2');
      heading.setAttribute('tabindex', '-1');
      (row ?? heading).focus();
    });
  };

  function row(section, key) {
    const cell = (label, ...content) => h('td', { 'data-label': label }, h('div', {}, ...content));
    const done = after(section, key.id);
    const actions = keyActions(key, done);
    let suggested = null;
    if (section.action === 'Set an expiry') {
      suggested = h('button', { type: 'button', class: 'button-quiet suggested' }, 'Set an expiry',
        h('span', { class: 'visually-hidden', text: ` for ${key.name}` }));
      suggested.addEventListener('click', async () => {
        const view = await editKey(key, suggested, { focus: 'expires' });
        if (view) done(view.expires_at ? `“${key.name}” now expires ${dateFormat.format(new Date(view.expires_at))}.` : 'Nothing was changed.');
      });
    } else {
      const [label, run] = actions.find(([l]) => l === section.action) ?? [];
      if (run) {
        suggested = h('button', { type: 'button', class: `suggested ${label === 'Delete' ? 'button-danger-quiet' : 'button-quiet'}` },
          label, h('span', { class: 'visually-hidden', text: ` ${key.name}` }));
        suggested.addEventListener('click', () => run(suggested));
      }
    }
    return h('tr', { 'data-key-id': key.id },
      h('th', { scope: 'row', 'data-label': 'Name', class: 'cell-name' }, keyLink(key.id, key.name), ' ', badge('env', key.environment),
        key.description ? h('span', { class: 'subtle', text: key.description }) : null),
      cell('Prefix', h('span', { class: 'mono', text: key.prefix })),
      cell('Created', time(key.created_at)),
      cell('Last used', time(key.last_used_at, 'never')),
      cell('Expires', time(key.expires_at, 'never')),
      h('td', { class: 'cell-actions' }, h('div', { class: 'row-actions' }, suggested, actionsMenu(key, done))));
  }

  async function load(section) {
    const mine = (section.generation = (section.generation ?? 0) + 1);
    section.hintEl.textContent = section.hint();
    const keys = [];
    let cursor = null;
    const fetchPage = async () => {
      const query = new URLSearchParams({ limit: '100', ...section.filters() });
      if (cursor) query.set('cursor', cursor);
      const page = await api('GET', `/v1/keys?${query}`);
      keys.push(...page.keys);
      cursor = page.next_cursor;
    };
    try {
      await fetchPage();
    } catch (error) {
      if (mine !== section.generation) return;
      section.count.replaceChildren();
      section.body.replaceChildren(h('p', { class: 'empty' }, 'This list could not be loaded. ', errorContent(error)));
      return;
    }
    if (mine !== section.generation) return;
    const tbody = h('tbody');
    const more = h('button', { type: 'button', class: 'button-quiet', text: 'Show more keys' });
    const counted = (n) => [`${n}${cursor ? '+' : ''}`, h('span', { class: 'visually-hidden', text: n === 1 && !cursor ? ' key' : ' keys' })];
    const show = () => {
      tbody.replaceChildren(...keys.map((key) => row(section, key)));
      more.hidden = !cursor;
      section.count.replaceChildren(...counted(keys.length));
    };
    more.addEventListener('click', async () => {
      more.disabled = true;
      try {
        await fetchPage();
        show();
      } catch (error) {
        showError(error);
      } finally {
        more.disabled = false;
      }
    });
    if (!keys.length) {
      section.count.replaceChildren(...counted(0));
      section.body.replaceChildren(h('p', { class: 'empty', text: section.empty }));
      return;
    }
    section.body.replaceChildren(h('div', { class: 'table-wrap' }, h('table', { class: 'data data-keys data-hygiene' },
      h('caption', { class: 'visually-hidden', text: section.title }),
      h('thead', {}, h('tr', {}, ['Name', 'Prefix', 'Created', 'Last used', 'Expires']
        .map((t) => h('th', { scope: 'col', text: t })), h('th', { scope: 'col' }, h('span', { class: 'visually-hidden', text: 'Actions' })))),
      tbody)), more);
    show();
  }

  const loadAll = () => Promise.all(sections.map(load));
  picker.addEventListener('change', () => {
    history.replaceState(null, '', routeQuery('hygiene', { idle: picker.value === IDLE_DAYS[0] ? '' : picker.value }));
    load(sections[0]);
  });
  await loadAll();
}

// ---------------------------------------------------------------- webhooks

const MESSAGE_TYPES = [
  'key.created', 'key.updated', 'key.deactivated', 'key.reactivated', 'key.deleted',
  'key.rotated', 'key.credits_changed', 'key.expiring', 'key.expired', 'key.leaked',
];

/** The webhooks page: the tenant's endpoints, and a form to add one. */
async function webhooksScreen(main) {
  const url = h('input', { id: 'webhook-url', name: 'url', type: 'url', required: true, maxlength: 2048,
    autocomplete: 'off', spellcheck: 'false', 'aria-describedby': 'webhook-url-hint' });
  const description = h('input', { id: 'webhook-description', name: 'description', maxlength: 256, autocomplete: 'off' });
  const types = h('fieldset', { class: 'types' }, h('legend', { text: 'Events (none ticked: all)' }),
    MESSAGE_TYPES.map((t) => h('label', { class: 'check' },
      h('input', { type: 'checkbox', name: 'events', value: t }), ' ', h('span', { class: 'mono', text: t }))));
  const secretPanel = h('div', { class: 'panel secret-panel', id: 'webhook-secret', hidden: true });
  const form = h('form', { class: 'panel', id: 'webhook-form', novalidate: true, 'aria-label': 'Add an endpoint' },
    h('h2', { text: 'Add an endpoint' }),
    h('div', { class: 'field' }, h('label', { for: 'webhook-url', text: 'URL' }), url,
      h('p', { class: 'hint', id: 'webhook-url-hint', text: 'http or https. Messages are signed (Standard Webhooks); verify them with the secret shown once below.' })),
    h('div', { class: 'field' }, h('label', { for: 'webhook-description', text: 'Description' }), description),
    types,
    h('button', { type: 'submit', class: 'button-primary', text: 'Add endpoint' }));
  const wrap = h('div', { class: 'table-wrap' });
  main.replaceChildren(pageHead('Webhooks'),
    h('p', { class: 'hint', text: 'Endpoints that receive the events of this workspace\u2019s keys, in order, signed.' }),
    form, secretPanel, wrap);

  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    clearErrors();
    const events = [...form.querySelectorAll('input[name="events"]:checked')].map((c) => c.value);
    const body = { url: url.value.trim(), events };
    if (description.value.trim()) body.description = description.value.trim();
    try {
      const created = await api('POST', '/v1/webhooks', { body });
      form.reset();
      const value = h('textarea', { class: 'mono secret-value', rows: 1, readonly: true, id: 'webhook-secret-value',
        'aria-label': 'Signing secret', spellcheck: 'false' });
      value.value = created.secret;
      secretPanel.replaceChildren(
        h('p', { class: 'warning' }, h('strong', { text: 'Copy the signing secret now: it is shown only once.' })),
        value,
        h('p', {}, h('a', { href: `#/webhooks/${encodeURIComponent(created.id)}`, text: 'Open the endpoint' })));
      secretPanel.hidden = false;
      value.focus();
      value.select();
      announce('Endpoint added');
      await listEndpoints(wrap);
    } catch (error) {
      showError(error);
    }
  });
  await listEndpoints(wrap);
}

async function listEndpoints(wrap) {
  try {
    const { webhooks } = await api('GET', '/v1/webhooks');
    if (!webhooks.length) {
      wrap.replaceChildren(h('p', { class: 'empty', text: 'No endpoint yet.' }));
      return;
    }
    wrap.replaceChildren(h('table', {},
      h('caption', { class: 'visually-hidden', text: 'Webhook endpoints' }),
      h('thead', {}, h('tr', {}, ['URL', 'Events', 'Status', 'Created'].map((c) => h('th', { scope: 'col', text: c })))),
      h('tbody', {}, webhooks.map((w) => h('tr', { 'data-webhook-id': w.id },
        h('td', {}, h('a', { href: `#/webhooks/${encodeURIComponent(w.id)}`, class: 'mono', text: w.url })),
        h('td', { text: w.events.length ? w.events.join(', ') : 'all' }),
        h('td', {}, badge('status', w.status === 'enabled' ? 'active' : 'inactive')),
        h('td', {}, time(w.created_at)))))));
  } catch (error) {
    wrap.replaceChildren(h('p', { class: 'empty', text: 'The endpoints could not be loaded.' }));
    showError(error);
  }
}

/** One endpoint: its settings, and its messages with a retry for each. */
async function webhookScreen(id, main) {
  main.replaceChildren(h('p', { class: 'breadcrumb' }, h('a', { href: '#/webhooks', text: '\u2190 All endpoints' })),
    pageHead('Endpoint'));
  let endpoint;
  try {
    endpoint = await api('GET', `/v1/webhooks/${encodeURIComponent(id)}`);
  } catch (error) {
    showError(error);
    return;
  }
  const enabled = endpoint.status === 'enabled';
  const toggle = h('button', { type: 'button', class: 'button-quiet', text: enabled ? 'Disable' : 'Enable',
    onclick: async () => {
      try {
        await api('PATCH', `/v1/webhooks/${encodeURIComponent(id)}`, { body: { status: enabled ? 'disabled' : 'enabled' } });
        announce(enabled ? 'Endpoint disabled' : 'Endpoint enabled');
        render();
      } catch (error) {
        showError(error);
      }
    } });
  const deliveries = h('div', { class: 'table-wrap', id: 'deliveries' });
  main.replaceChildren(h('p', { class: 'breadcrumb' }, h('a', { href: '#/webhooks', text: '\u2190 All endpoints' })),
    pageHead('Endpoint', toggle),
    h('dl', { class: 'facts' },
      h('div', { class: 'fact' }, h('dt', { text: 'URL' }), h('dd', { class: 'mono', text: endpoint.url })),
      h('div', { class: 'fact' }, h('dt', { text: 'ID' }), h('dd', { class: 'mono', text: endpoint.id })),
      h('div', { class: 'fact' }, h('dt', { text: 'Status' }), h('dd', { text: endpoint.status })),
      h('div', { class: 'fact' }, h('dt', { text: 'Events' }), h('dd', { text: endpoint.events.length ? endpoint.events.join(', ') : 'all' })),
      h('div', { class: 'fact' }, h('dt', { text: 'Description' }), h('dd', { text: endpoint.description ?? '\u2014' }))),
    h('h2', { text: 'Deliveries' }), deliveries);
  await listDeliveries(id, deliveries);
}

async function listDeliveries(id, wrap) {
  try {
    const { deliveries } = await api('GET', `/v1/webhooks/${encodeURIComponent(id)}/deliveries?limit=100`);
    if (!deliveries.length) {
      wrap.replaceChildren(h('p', { class: 'empty', text: 'No message yet.' }));
      return;
    }
    wrap.replaceChildren(h('table', {},
      h('caption', { class: 'visually-hidden', text: 'Messages sent to this endpoint, newest first' }),
      h('thead', {}, h('tr', {}, ['Message', 'Type', 'Key', 'Status', 'Attempts', 'Last attempt', 'Answer'].map((c) =>
        h('th', { scope: 'col', text: c })), h('th', { scope: 'col' }, h('span', { class: 'visually-hidden', text: 'Actions' })))),
      h('tbody', {}, deliveries.map((d) => h('tr', { 'data-message-id': d.id },
        h('td', { class: 'mono', text: d.id }),
        h('td', { class: 'mono', text: d.type }),
        h('td', {}, keyLink(d.key_id)),
        h('td', {}, h('span', { class: `badge badge-delivery-${d.status}`, text: d.status })),
        h('td', { text: String(d.attempts) }),
        h('td', {}, time(d.last_attempt_at)),
        h('td', { text: d.response_status === null ? 'none' : String(d.response_status) }),
        h('td', {}, h('button', { type: 'button', class: 'button-quiet', 'aria-label': `Retry message ${d.id}`, text: 'Retry',
          onclick: async () => {
            try {
              await api('POST', `/v1/webhooks/${encodeURIComponent(id)}/deliveries/${encodeURIComponent(d.id)}/retry`);
              announce('Retry requested');
              setTimeout(() => listDeliveries(id, wrap), 500);
            } catch (error) {
              showError(error);
            }
          } })))))));
  } catch (error) {
    wrap.replaceChildren(h('p', { class: 'empty', text: 'The deliveries could not be loaded.' }));
    showError(error);
  }
}

// ---------------------------------------------------------------- routing

function route() {
  const raw = location.hash.replace(/^#/, '');
  const [path, query = ''] = raw.split('?');
  const parts = path.split('/').filter(Boolean);
  const params = new URLSearchParams(query);
  if (parts[0] === 'keys' && parts[1]) return { name: 'key', id: decodeURIComponent(parts[1]), params };
  if (parts[0] === 'overview') return { name: 'overview', params };
  if (parts[0] === 'hygiene') return { name: 'hygiene', params };
  if (parts[0] === 'audit') return { name: 'audit', params };
  if (parts[0] === 'webhooks' && parts[1]) return { name: 'webhook', id: decodeURIComponent(parts[1]), params };
  if (parts[0] === 'webhooks') return { name: 'webhooks', params };
  return { name: 'keys', params };
}

function renderSession(jwt) {
  const c = jwt ? claims(jwt) : null;
  $('#nav').hidden = !jwt;
  $('#session').hidden = !jwt;
  const identity = $('#identity');
  identity.replaceChildren();
  if (!c) return;
  identity.append(h('span', { class: 'identity-who', text: shownClaim(c.sub) ?? '?' }), ' in ',
    h('span', { class: 'identity-tenant', text: shownClaim(c.tenant) ?? '?' }));
  if (typeof c.exp === 'number') {
    const expired = c.exp * 1000 <= Date.now();
    identity.append(h('span', { class: expired ? 'identity-expired' : 'subtle',
      text: expired ? ' · token expired' : ` · until ${dateFormat.format(new Date(c.exp * 1000))}` }));
  }
}

let firstRender = true;

async function render() {
  clearErrors();
  for (const menu of document.querySelectorAll('.menu:popover-open')) menu.hidePopover();
  const main = $('#main');
  const jwt = token();
  renderSession(jwt);
  const focusHeading = !firstRender;
  firstRender = false;
  if (!jwt) {
    signInScreen(main);
    $('#token-input').focus();
    return;
  }
  const current = route();
  for (const link of document.querySelectorAll('[data-nav]')) {
    const section = ['audit', 'overview', 'hygiene'].includes(current.name) ? current.name
      : current.name.startsWith('webhook') ? 'webhooks' : 'keys';
    const active = link.dataset.nav === section;
    if (active) link.setAttribute('aria-current', 'page');
    else link.removeAttribute('aria-current');
  }
  const titles = { audit: 'Audit log', webhooks: 'Webhooks', webhook: 'Webhook endpoint', overview: 'Overview', hygiene: 'Hygiene' };
  document.title = `${titles[current.name] ?? 'Keys'} · keyledger console`;
  const screen = current.name === 'audit' ? auditScreen(current.params, main)
    : current.name === 'key' ? keyScreen(current.id, main, current.params)
      : current.name === 'overview' ? overviewScreen(current.params, main)
      : current.name === 'hygiene' ? hygieneScreen(current.params, main)
      : current.name === 'webhooks' ? webhooksScreen(main)
        : current.name === 'webhook' ? webhookScreen(current.id, main)
          : keysScreen(current.params, main);
  if (focusHeading) $('#main h1')?.focus();
  await screen;
  // A screen that replaced its heading while loading: put focus back on it.
  if (focusHeading && document.activeElement === document.body) $('#main h1')?.focus();
  main.dataset.ready = route().name;
}

/**
 * The page as the address says, after taking out a link's token: the current
 * session (or the sign-in screen) is shown, and the question of the token over it.
 */
function arrive() {
  const offered = takeTokenFromFragment();
  render();
  if (offered) offerToken(offered);
}

$('#sign-out').addEventListener('click', signOut);
window.addEventListener('hashchange', arrive);
arrive();

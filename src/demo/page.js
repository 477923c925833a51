// The demo page: writes through /demo/api/*, reads the list once per (re)sync, and otherwise
// updates only from the stream, through the same client an app would use.
import { connectNotifications } from '/client.js';

const $ = (sel) => document.querySelector(sel);
const POLL_MS = 5000;

const state = {
  user: null,
  users: [],
  streamPath: '/api/notifications/stream',
  items: new Map(),
  conn: null,
  poll: null,
};

async function api(method, path, body) {
  const res = await fetch(`/demo/api/${path}`, {
    method,
    credentials: 'same-origin',
    headers: {
      ...(body ? { 'content-type': 'application/json' } : {}),
      // The server refuses to act for another user than the one this tab shows.
      ...(state.user ? { 'x-demo-user': state.user } : {}),
    },
    body: body ? JSON.stringify(body) : undefined,
  });
  const data = await res.json().catch(() => null);
  if (!res.ok) throw new Error(data?.message ?? `HTTP ${res.status}`);
  return data;
}

function log(type, text) {
  const li = document.createElement('li');
  li.dataset.type = type;
  li.textContent = `${new Date().toLocaleTimeString()}  ${text}`;
  const list = $('#log');
  list.prepend(li);
  while (list.children.length > 200) list.lastChild.remove();
}

function render(flashId) {
  const list = $('#list');
  list.replaceChildren();
  const rows = [...state.items.values()].sort((a, b) => Number(b.id) - Number(a.id));
  for (const n of rows) {
    const li = document.createElement('li');
    li.dataset.id = String(n.id);
    li.className = n.read ? 'read' : 'unread';
    if (String(n.id) === String(flashId)) li.classList.add('flash');
    const title = document.createElement('div');
    title.className = 'title';
    title.textContent = n.title || '(no title)';
    const message = document.createElement('div');
    message.className = 'message';
    message.textContent = n.message ?? '';
    const meta = document.createElement('div');
    meta.className = 'meta';
    const when = n.created_at ? new Date(n.created_at).toLocaleTimeString() : '';
    meta.textContent = `#${n.id} · ${n.type ?? ''} · ${when}${n.read ? ' · read' : ''}`;
    const actions = document.createElement('div');
    actions.className = 'actions';
    for (const [action, label] of [['read', 'Mark read'], ['edit', 'Edit title'], ['delete', 'Delete']]) {
      if (action === 'read' && n.read) continue;
      const b = document.createElement('button');
      b.type = 'button';
      b.dataset.action = action;
      b.textContent = label;
      actions.append(b);
    }
    li.append(title, actions, message, meta);
    list.append(li);
  }
  const unread = rows.filter((n) => !n.read).length;
  $('#unread').textContent = String(unread);
  $('#unread').dataset.count = String(unread);
  $('#empty').hidden = rows.length > 0;
  document.title = unread ? `(${unread}) pgsse demo` : 'pgsse demo';
}

async function refetch(why) {
  if (!state.user) {
    state.items.clear();
    render();
    return;
  }
  try {
    const rows = await api('GET', 'notifications');
    state.items = new Map(rows.map((n) => [n.id, n]));
    render();
    log('refetch', `refetched ${rows.length} rows (${why})`);
  } catch (err) {
    log('error', `refetch failed: ${err.message}`);
  }
}

function showStatus(status, info) {
  const el = $('#status');
  el.dataset.status = status;
  el.dataset.degraded = String(info.degraded);
  el.textContent = info.degraded ? `${status}, polling every ${POLL_MS / 1000}s` : status;
  $('#status-reason').textContent = info.reason ?? '';
  log('status', `status: ${status}${info.reason ? ` (${info.reason})` : ''}`);
  // Graceful degradation: without a stream, poll (and refetch on focus) until it is back.
  if (info.degraded && !state.poll) {
    state.poll = setInterval(() => refetch('polling'), POLL_MS);
  } else if (!info.degraded && state.poll) {
    clearInterval(state.poll);
    state.poll = null;
  }
}

function connect() {
  state.conn?.close();
  state.conn = connectNotifications(state.streamPath, {
    onStatus: showStatus,
    onResync: (why) => refetch(why),
    onConnected: (c) => log('connected', `connected as ${c.userId} (resumed: ${c.resumed}, replayed: ${c.replayed})`),
    onCreated: (n) => {
      state.items.set(n.id, n);
      render(n.id);
      log('created', `created #${n.id} "${n.title}"`);
    },
    onRead: (id) => {
      const n = state.items.get(id);
      if (n) state.items.set(id, { ...n, read: true });
      render(id);
      log('read', `read #${id}`);
    },
    onUpdated: (n) => {
      state.items.set(n.id, n);
      render(n.id);
      log('updated', `updated #${n.id} "${n.title}"`);
    },
    onDeleted: (id) => {
      state.items.delete(id);
      render();
      log('deleted', `deleted #${id}`);
    },
    onReset: (r) => log('reset', `reset (${r.reason}): refetching`),
    onHeartbeat: () => {
      $('#heartbeat').textContent = `heartbeat ${new Date().toLocaleTimeString()}`;
    },
  });
  window.pgsseConnection = state.conn; // for poking at it from the console
}

async function signIn(user) {
  await api('POST', `login?user=${encodeURIComponent(user)}`);
  state.user = user;
  state.items.clear();
  showUser();
  connect();
}

function showUser() {
  $('#user').textContent = state.user ?? 'nobody';
  for (const b of document.querySelectorAll('#users button')) {
    b.setAttribute('aria-pressed', String(b.dataset.user === state.user));
  }
}

async function run(action) {
  try {
    await action();
  } catch (err) {
    log('error', err.message);
  }
}

$('#list').addEventListener('click', (e) => {
  const button = e.target.closest('button[data-action]');
  if (!button) return;
  const id = button.closest('li').dataset.id;
  const n = state.items.get(Number(id)) ?? state.items.get(id);
  run(async () => {
    if (button.dataset.action === 'read') await api('POST', `notifications/${id}/read`);
    if (button.dataset.action === 'delete') await api('DELETE', `notifications/${id}`);
    if (button.dataset.action === 'edit') {
      const title = prompt('New title', n?.title ?? '');
      if (title) await api('POST', `notifications/${id}/title`, { title });
    }
  });
});

$('#create-form').addEventListener('submit', (e) => {
  e.preventDefault();
  run(() => api('POST', 'notifications', { title: $('#title').value, message: $('#message').value, to: $('#to').value }));
});
$('#read-all').addEventListener('click', () => run(() => api('POST', 'notifications/read-all')));
$('#delete-read').addEventListener('click', () => run(() => api('POST', 'notifications/delete-read')));
$('#logout').addEventListener('click', () =>
  run(async () => {
    await api('POST', 'logout');
    state.user = null;
    showUser();
    refetch('signed out');
    state.conn?.reconnect();
  }),
);
window.addEventListener('focus', () => {
  if (state.conn?.info.degraded) refetch('focus');
});

run(async () => {
  const me = await api('GET', 'me');
  state.users = me.users;
  state.streamPath = me.streamPath;
  for (const u of me.users) {
    const b = document.createElement('button');
    b.type = 'button';
    b.dataset.user = u;
    b.textContent = u;
    b.addEventListener('click', () => run(() => signIn(u)));
    $('#users').append(b);
    const o = document.createElement('option');
    o.value = u;
    o.textContent = u;
    $('#to').append(o);
  }
  if (me.user) {
    state.user = me.user;
    showUser();
    connect();
  } else {
    await signIn(me.users[0]);
  }
});

// app.js — the dashboard's pages, routed by the URL's fragment (#/fleet,
// #/campaigns, #/campaign/ID, #/device/UDID, #/new). Everything is read
// from the admin API with the session's role; live pages poll every few
// seconds while they are visible. Built with DOM calls only (no HTML
// strings): text from devices is never markup.
import { loadSession, canAct, role, get, post, logout, ApiError } from './api.js';
import { barChart, stackedBar } from './chart.js';

const STATES = ['verified', 'done', 'active', 'pending', 'retry_wait', 'unverified', 'failed',
  'timed_out', 'staged', 'canceled'];
const STATE_WORDS = {
  verified: 'verified', done: 'done', active: 'in progress', pending: 'waiting to push',
  retry_wait: 'retry wait', unverified: 'unverified', failed: 'failed', timed_out: 'timed out',
  staged: 'staged', canceled: 'canceled',
};
const PLATFORM_WORDS = { ios: 'iOS', ipados: 'iPadOS', macos: 'macOS', tvos: 'tvOS', windows: 'Windows', other: 'other' };

// ---- small DOM helpers ------------------------------------------------------------------

function h(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else if (k === 'class') e.className = v;
    else e.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function when(ms) {
  if (!ms) return 'never';
  const d = new Date(ms);
  const ago = Math.round((Date.now() - ms) / 1000);
  const rel = ago < 60 ? `${ago}s ago` : ago < 3600 ? `${Math.round(ago / 60)} min ago`
    : ago < 86400 ? `${Math.round(ago / 3600)} h ago` : d.toISOString().slice(0, 10);
  return h('span', { title: d.toISOString() }, rel);
}

function pill(text, kind) {
  return h('span', { class: `pill ${kind || ''}` }, text);
}

function statePill(s) {
  const kind = { verified: 'ok', done: 'ok', finished: 'ok', failed: 'bad', canceled: '', timed_out: 'warn',
    unverified: 'warn', running: 'run', active: 'run', paused: 'warn', staged: '' }[s];
  return pill(STATE_WORDS[s] || s, kind);
}

function card(n, label) {
  return h('div', { class: 'card' }, h('div', { class: 'n' }, n), h('div', { class: 'l' }, label));
}

function errorBox(e) {
  return h('p', { class: 'error', role: 'alert' }, e instanceof ApiError ? e.message : String(e));
}

const view = () => document.getElementById('view');

// ---- routing and polling ------------------------------------------------------------------

let timer = null;
let generation = 0;

// Runs |fn| now and every |ms| while the page is shown and visible; a newer
// page stops it.
function poll(ms, fn) {
  const mine = generation;
  const tick = async () => {
    if (mine !== generation) return;
    if (!document.hidden) {
      try { await fn(); } catch (e) { if (!(e instanceof ApiError && e.status === 401)) console.warn(e); }
    }
    if (mine === generation) timer = setTimeout(tick, ms);
  };
  tick();
}

function route() {
  generation++;
  clearTimeout(timer);
  const hash = location.hash.replace(/^#/, '') || '/fleet';
  const [path, query] = hash.split('?');
  const params = new URLSearchParams(query || '');
  const parts = path.split('/').filter(Boolean);
  for (const a of document.querySelectorAll('[data-nav]'))
    a.classList.toggle('on', a.dataset.nav === parts[0] || (parts[0] === 'campaign' && a.dataset.nav === 'campaigns'));
  const v = view();
  v.replaceChildren();
  if (parts[0] === 'campaigns') return campaignsPage(v);
  if (parts[0] === 'campaign' && parts[1]) return campaignPage(v, decodeURIComponent(parts[1]), params);
  if (parts[0] === 'device' && parts[1]) return devicePage(v, decodeURIComponent(parts[1]));
  if (parts[0] === 'new') return newCampaignPage(v);
  return fleetPage(v, params);
}

// ---- fleet ------------------------------------------------------------------------------------

function fleetPage(v, params) {
  const q = params.get('q') || '';
  const cursors = [''];
  let page = 0;
  const cards = h('div', { class: 'cards', id: 'fleet-cards' });
  const platforms = h('tbody');
  const search = h('input', { type: 'search', id: 'search', placeholder: 'Search UDID, serial, name, model or EID', value: q });
  const rows = h('tbody', { id: 'devices' });
  const info = h('span', { class: 'muted' });
  const prev = h('button', { type: 'button', class: 'secondary', id: 'prev', disabled: true }, '← Previous');
  const next = h('button', { type: 'button', class: 'secondary', id: 'next', disabled: true }, 'Next →');
  v.append(
    h('h1', {}, 'Fleet'),
    cards,
    h('div', { class: 'panel' },
      h('table', {}, h('thead', {}, h('tr', {}, ['Platform', 'Devices', 'Enrolled', 'Push token valid',
        'No token', 'Token dead', 'eSIM verified'].map((t) => h('th', {}, t)))), platforms)),
    h('h2', {}, 'Devices'),
    h('form', { class: 'toolbar', onsubmit: (ev) => { ev.preventDefault(); location.hash = `#/fleet?q=${encodeURIComponent(search.value.trim())}`; } },
      search, h('button', { type: 'submit' }, 'Search'), info),
    h('table', {}, h('thead', {}, h('tr', {}, ['Device', 'Platform', 'Model', 'OS', 'Enrolment', 'Push',
      'eSIM', 'Last seen'].map((t) => h('th', {}, t)))), rows),
    h('div', { class: 'pager' }, prev, next));

  async function loadSummary() {
    const f = await get('/v1/dashboard/fleet');
    const t = f.total || {};
    cards.replaceChildren(card(t.devices || 0, 'devices'), card(t.enrolled || 0, 'enrolled'),
      card(t.push_valid || 0, 'reachable by push'), card(t.verified || 0, 'eSIM verified'),
      card((t.devices || 0) - (t.verified || 0), 'eSIM not verified'));
    platforms.replaceChildren(...Object.entries(f.platforms || {}).sort().map(([p, c]) =>
      h('tr', {}, h('td', {}, PLATFORM_WORDS[p] || p), h('td', {}, c.devices || 0), h('td', {}, c.enrolled || 0),
        h('td', {}, c.push_valid || 0), h('td', {}, c.push_none || 0), h('td', {}, c.push_dead || 0),
        h('td', {}, c.verified || 0))));
  }
  async function loadDevices() {
    const after = cursors[page];
    const u = new URLSearchParams({ limit: '50' });
    if (q) u.set('q', q);
    if (after) u.set('after', after);
    const d = await get(`/v1/dashboard/devices?${u}`);
    rows.replaceChildren(...d.devices.map((x) => h('tr', {},
      h('td', {}, h('a', { href: `#/device/${encodeURIComponent(x.udid)}`, class: 'mono' }, x.udid),
        x.device_name ? h('div', { class: 'muted' }, x.device_name) : null),
      h('td', {}, PLATFORM_WORDS[x.platform] || x.platform),
      h('td', {}, x.product_name || '—'),
      h('td', {}, x.os_version || '—'),
      h('td', {}, x.enrolled ? pill('enrolled', 'ok') : pill('checked out', 'warn')),
      h('td', {}, pill(x.push, x.push === 'valid' ? 'ok' : x.push === 'dead' ? 'bad' : 'warn')),
      h('td', {}, x.esim_verified ? pill('verified', 'ok') : pill('not verified', '')),
      h('td', {}, when(x.last_seen_ms)))));
    if (!d.devices.length) rows.replaceChildren(h('tr', {}, h('td', { colspan: 8, class: 'muted' }, q ? `No device matches “${q}”.` : 'No devices yet.')));
    cursors[page + 1] = d.next_after || null;
    prev.disabled = page === 0;
    next.disabled = !d.next_after;
    info.textContent = `page ${page + 1}${q ? ` of devices matching “${q}”` : ''}`;
  }
  prev.addEventListener('click', () => { if (page > 0) { page--; loadDevices(); } });
  next.addEventListener('click', () => { if (cursors[page + 1]) { page++; loadDevices(); } });
  poll(5000, async () => { await Promise.all([loadSummary(), loadDevices()]); });
}

// ---- campaigns --------------------------------------------------------------------------------

function campaignsPage(v) {
  const rows = h('tbody', { id: 'campaigns' });
  v.append(h('div', { class: 'toolbar' }, h('h1', {}, 'Campaigns'),
    canAct() ? h('a', { href: '#/new' }, h('button', { type: 'button' }, 'New campaign')) : null),
  h('table', {}, h('thead', {}, h('tr', {}, ['Campaign', 'State', 'Devices', 'Progress', 'Verified',
    'Failed', 'Pushes', 'Created'].map((t) => h('th', {}, t)))), rows));
  poll(2000, async () => {
    const l = await get('/v1/campaigns');
    const list = (l.campaigns || []).slice().sort((a, b) => b.created_ms - a.created_ms);
    rows.replaceChildren(...list.map((c) => h('tr', { 'data-id': c.id },
      h('td', {}, h('a', { href: `#/campaign/${encodeURIComponent(c.id)}` }, c.name || c.id), h('div', { class: 'muted mono' }, c.id)),
      h('td', {}, statePill(c.state)),
      h('td', {}, c.devices),
      h('td', {}, stackedBar(c.counts, STATES, c.devices)),
      h('td', {}, (c.counts.verified || 0) + (c.counts.done || 0)),
      h('td', {}, c.counts.failed || 0),
      h('td', {}, c.pushes),
      h('td', {}, when(c.created_ms)))));
    if (!list.length) rows.replaceChildren(h('tr', {}, h('td', { colspan: 8, class: 'muted' }, 'No campaigns yet.')));
  });
}

// ---- one campaign -------------------------------------------------------------------------------

function campaignPage(v, id, params) {
  const filter = params.get('state') || '';
  const title = h('h1', {}, id);
  const state = h('span', { id: 'campaign-state' });
  const actions = h('div', { class: 'toolbar', id: 'actions' });
  const msg = h('div');
  const cards = h('div', { class: 'cards' });
  const chart = h('div', { class: 'chart', id: 'chart' });
  const legend = h('div', { class: 'legend' });
  const platforms = h('div', { id: 'campaign-platforms' });
  const warnings = h('div', { id: 'warnings' });
  const devRows = h('tbody', { id: 'campaign-devices' });
  const devTitle = h('h2', {}, filter ? `Devices: ${STATE_WORDS[filter] || filter}` : 'Devices');
  v.append(h('div', { class: 'toolbar' }, title, state), actions, msg, cards,
    h('div', { class: 'grid2' },
      h('div', { class: 'panel' }, h('h2', {}, 'Devices per state'), chart, legend, platforms),
      h('div', { class: 'panel' }, h('h2', {}, 'Warnings given at creation'), warnings)),
    devTitle,
    h('table', {}, h('thead', {}, h('tr', {}, ['Device', 'State', 'Step', 'Pushes', 'Last push', 'Reason'].map((t) => h('th', {}, t)))), devRows));

  let lastState = '';
  async function act(verb) {
    msg.replaceChildren();
    try {
      await post(`/v1/campaigns/${encodeURIComponent(id)}/${verb}`);
      await refresh();
    } catch (e) { msg.replaceChildren(errorBox(e)); }
  }
  function drawActions(s) {
    if (s === lastState) return;
    lastState = s;
    actions.replaceChildren();
    if (!canAct()) {
      actions.append(h('span', { class: 'muted' }, `Read-only (${role()}): you can watch but not act.`));
      return;
    }
    if (s === 'running') actions.append(h('button', { type: 'button', id: 'pause', class: 'secondary', onclick: () => act('pause') }, 'Pause'));
    if (s === 'paused' || s === 'staged') actions.append(h('button', { type: 'button', id: 'resume', onclick: () => act('resume') }, s === 'staged' ? 'Start' : 'Resume'));
    if (s === 'running' || s === 'paused' || s === 'staged') actions.append(h('button', { type: 'button', id: 'cancel', class: 'danger', onclick: () => { if (confirm('Cancel this campaign? Unfinished devices become canceled.')) act('cancel'); } }, 'Cancel'));
  }
  let warned = false;
  async function refresh() {
    const c = await get(`/v1/campaigns/${encodeURIComponent(id)}?limit=0`);
    title.textContent = c.name || c.id;
    state.replaceChildren(statePill(c.state));
    state.dataset.state = c.state;
    drawActions(c.state);
    const k = c.counts;
    cards.dataset.verified = k.verified || 0;
    cards.id = 'campaign-cards';
    cards.replaceChildren(card(c.devices, 'devices'), card((k.verified || 0) + (k.done || 0), 'verified or done'),
      card((k.active || 0) + (k.pending || 0) + (k.retry_wait || 0), 'in progress'), card(k.failed || 0, 'failed'),
      card(c.refresh_acknowledged || 0, 'refresh acknowledged'), card(c.pushes || 0, 'pushes'));
    chart.replaceChildren(barChart(STATES.map((s) => ({ key: s, label: STATE_WORDS[s], value: k[s] || 0 }))));
    legend.replaceChildren(h('a', { href: `#/campaign/${encodeURIComponent(id)}`, class: filter ? '' : 'sel' }, 'all'),
      ...STATES.filter((s) => k[s]).map((s) => h('a', { href: `#/campaign/${encodeURIComponent(id)}?state=${s}`, class: filter === s ? 'sel' : '', 'data-state': s },
        h('i', { class: `s-${s}` }), `${STATE_WORDS[s]} (${k[s]})`)));
    const bp = Object.entries(c.by_platform || {});
    platforms.replaceChildren(...(bp.length > 1 || (bp.length === 1 && bp[0][0] !== 'apple') ? [
      h('h2', {}, 'By platform'),
      h('table', {}, h('thead', {}, h('tr', {}, ['Platform', 'Devices', 'Verified or done', 'Failed', 'Progress'].map((t) => h('th', {}, t)))),
        h('tbody', {}, ...bp.map(([p, pc]) => h('tr', {}, h('td', {}, p === 'apple' ? 'Apple' : PLATFORM_WORDS[p] || p),
          h('td', {}, pc.devices), h('td', {}, (pc.verified || 0) + (pc.done || 0)), h('td', {}, pc.failed || 0),
          h('td', {}, stackedBar(pc, STATES, pc.devices))))))] : []));
    if (!warned) {
      warned = true;
      const w = c.creation_warnings;
      if (!w) warnings.replaceChildren(h('p', { class: 'muted' }, 'Not known: the campaign was created before the service last started.'));
      else if (!w.total) warnings.replaceChildren(h('p', { class: 'muted' }, 'None.'));
      else warnings.replaceChildren(warningList(w.by_kind, w.first, w.total));
    }
    const u = new URLSearchParams({ limit: '100' });
    if (filter) u.set('state', filter);
    const d = await get(`/v1/campaigns/${encodeURIComponent(id)}/devices?${u}`);
    devRows.replaceChildren(...d.devices.map((x) => h('tr', { 'data-state': x.state },
      h('td', {}, h('a', { href: `#/device/${encodeURIComponent(x.udid)}`, class: 'mono' }, x.udid)),
      h('td', {}, statePill(x.state)), h('td', {}, x.step || '—'), h('td', {}, x.pushes),
      h('td', {}, x.last_push || '—'), h('td', {}, x.reason || ''))));
    if (!d.devices.length) devRows.replaceChildren(h('tr', {}, h('td', { colspan: 6, class: 'muted' }, 'No devices in this state.')));
    if (d.next_after !== null) devRows.append(h('tr', {}, h('td', { colspan: 6, class: 'muted' }, 'First 100 shown (esim-mdm campaign devices lists all).')));
  }
  poll(2000, refresh);
}

function warningList(byKind, first, total) {
  return h('div', { class: 'warnings' },
    h('p', {}, `${total} warning${total === 1 ? '' : 's'}:`),
    h('ul', {}, ...Object.entries(byKind || {}).map(([kind, n]) => h('li', {}, h('strong', {}, `${n} ×`), ` ${kind}`))),
    first && first.length ? h('details', {}, h('summary', {}, 'By device'),
      h('ul', {}, ...first.map((w) => h('li', {}, h('span', { class: 'mono' }, w.udid), `: ${w.key ? `${w.key} ` : ''}${w.reason}`)))) : null);
}

// ---- one device ---------------------------------------------------------------------------------

function devicePage(v, udid) {
  const head = h('div');
  const diag = h('div', { class: 'panel', id: 'diagnosis' }, h('p', { class: 'muted' }, 'Diagnosing…'));
  const subs = h('div', { class: 'panel', id: 'subscriptions' });
  const cmds = h('tbody', { id: 'commands' });
  v.append(h('h1', {}, 'Device ', h('span', { class: 'mono' }, udid)), head,
    h('h2', {}, 'Diagnosis'), diag,
    h('h2', {}, 'eSIM subscriptions'), subs,
    h('h2', {}, 'Command history'),
    h('table', {}, h('thead', {}, h('tr', {}, ['Command', 'State', 'Attempts', 'Queued', 'Answered', 'Answer'].map((t) => h('th', {}, t)))), cmds));
  poll(5000, async () => {
    let d;
    try { d = await get(`/v1/dashboard/devices/${encodeURIComponent(udid)}`); } catch (e) { head.replaceChildren(errorBox(e)); return; }
    head.replaceChildren(h('div', { class: 'cards' },
      card(PLATFORM_WORDS[d.platform] || d.platform, d.product_name || 'model unknown'),
      card(d.os_version || '—', 'OS version'),
      card(d.enrolled ? 'enrolled' : 'checked out', d.enrolled ? `since ${new Date(d.enrolled_ms).toISOString().slice(0, 16).replace('T', ' ')}` : 'not enrolled'),
      card(d.push, 'push token'),
      card(d.esim_verified ? 'verified' : 'not verified', 'eSIM'),
      card(d.supervised === null ? 'unknown' : d.supervised ? 'yes' : 'no', 'supervised')),
    h('p', { class: 'muted' }, `Serial ${d.serial_number || '—'} · EID `, h('span', { class: 'mono' }, d.eid || '—'), ' · last seen ', when(d.last_seen_ms)));
    if (!d.subscriptions) subs.replaceChildren(h('p', { class: 'muted' }, 'No DeviceInformation answer with ServiceSubscriptions yet.'));
    else if (!d.subscriptions.length) subs.replaceChildren(h('p', {}, 'The device reported no subscriptions.'));
    else subs.replaceChildren(h('p', { class: 'muted' }, 'As reported ', when(d.subscriptions_ms), ':'),
      h('table', {}, h('thead', {}, h('tr', {}, ['Slot', 'Label', 'Carrier', 'ICCID', 'EID', 'Preferred'].map((t) => h('th', {}, t)))),
        h('tbody', {}, ...d.subscriptions.map((s) => h('tr', {}, h('td', {}, s.slot || '—'), h('td', {}, s.label || '—'),
          h('td', {}, s.carrier || '—'), h('td', { class: 'mono' }, s.iccid || '—'), h('td', { class: 'mono' }, s.eid || '—'),
          h('td', {}, [s.data_preferred ? 'data' : '', s.voice_preferred ? 'voice' : ''].filter(Boolean).join(', ') || '—'))))));
    cmds.replaceChildren(...d.commands.map((c) => h('tr', { 'data-state': c.state },
      h('td', {}, c.request_type, h('div', { class: 'muted mono' }, c.command_uuid)),
      h('td', {}, pill(c.state, c.state === 'acknowledged' ? 'ok' : ['error', 'format_error'].includes(c.state) ? 'bad' : c.state === 'not_now' ? 'warn' : '')),
      h('td', {}, c.attempts + (c.not_now ? ` (${c.not_now} NotNow)` : '')),
      h('td', {}, when(c.enqueued_ms)), h('td', {}, when(c.answered_ms)),
      h('td', {}, c.status, c.error_chain.length ? h('ul', { class: 'chain' }, ...c.error_chain.map((e) =>
        h('li', {}, `${e.error_domain || '?'} ${e.error_code ?? ''}: ${e.us_english_description || e.localized_description || ''}`))) : null))));
    if (!d.commands.length) cmds.replaceChildren(h('tr', {}, h('td', { colspan: 6, class: 'muted' }, 'No commands yet.')));
    try {
      const g = await get(`/v1/devices/${encodeURIComponent(udid)}/diagnosis`);
      const bad = !['verified', 'done', 'in_progress', 'staged'].includes(g.kind);
      diag.replaceChildren(
        h('div', { class: `conclusion ${bad ? 'bad' : g.kind === 'verified' || g.kind === 'done' ? 'ok' : ''}`, id: 'conclusion', 'data-kind': g.kind },
          h('div', {}, g.conclusion), h('div', { class: 'next' }, `Next: ${g.next_action}`)),
        g.campaign ? h('p', { class: 'muted' }, 'Campaign ', h('a', { href: `#/campaign/${encodeURIComponent(g.campaign)}` }, g.campaign), ` · ${STATE_WORDS[g.campaign_state] || g.campaign_state || ''}`) : null,
        h('ul', { class: 'checks' }, ...g.checks.map((c) => h('li', {},
          h('span', { class: `mark ${c.ok === true ? 'y' : c.ok === false ? 'n' : 'u'}` }, c.ok === true ? 'OK' : c.ok === false ? 'NO' : '--'),
          h('strong', {}, c.name.replace(/_/g, ' ')), ` — ${c.detail}`))));
    } catch (e) {
      diag.replaceChildren(e instanceof ApiError && e.status === 404 ? h('p', { class: 'muted' }, 'No diagnosis: campaigns are not attached to this service.') : errorBox(e));
    }
  });
}

// ---- new campaign ---------------------------------------------------------------------------------

function newCampaignPage(v) {
  if (!canAct()) {
    v.append(h('h1', {}, 'New campaign'), h('p', {}, `Your key's role (${role()}) can look but not create campaigns.`));
    return;
  }
  const f = (name, el) => { el.name = name; el.id = `f-${name}`; return el; };
  const name = f('name', h('input', { required: true, placeholder: 'Q3 roll-out', maxlength: 120 }));
  const targetKind = f('target', h('select', {}, ...['all', 'platform', 'group', 'tag', 'udids'].map((k) => h('option', { value: k }, { all: 'every enrolled device', platform: 'a platform', group: 'a group', tag: 'a tag', udids: 'a list of UDIDs' }[k]))));
  const targetValue = f('target_value', h('input', { placeholder: 'ios / group name / tag / UDIDs separated by spaces or commas', class: 'hidden' }));
  const steps = ['profile', 'refresh', 'verify'].map((s) => h('label', {}, f(`step_${s}`, h('input', { type: 'checkbox', checked: true, value: s })), ` ${s}`));
  const smdp = f('smdp_url', h('input', { placeholder: 'https://smdp.operator.example', type: 'text' }));
  const mod = f('esim_modification', h('select', {}, h('option', { value: 'deny' }, 'deny'), h('option', { value: 'allow' }, 'allow')));
  const keep = f('preserve_esim_on_erase', h('select', {}, h('option', { value: 'on' }, 'on'), h('option', { value: 'off' }, 'off')));
  const pps = f('pushes_per_second', h('input', { type: 'number', min: 1, value: 1000 }));
  const dist = f('distribution', h('select', {}, h('option', { value: 'all' }, 'start now'), h('option', { value: 'none' }, 'staged (start later)')));
  const check = h('button', { type: 'button', id: 'check', class: 'secondary' }, 'Check warnings');
  const create = h('button', { type: 'submit', id: 'create', disabled: true }, 'Create campaign');
  const out = h('div', { class: 'full', id: 'preview' });
  targetKind.addEventListener('change', () => targetValue.classList.toggle('hidden', targetKind.value === 'all'));
  const form = h('form', { class: 'create panel', id: 'new-campaign' },
    h('label', { for: 'f-name' }, 'Name'), name,
    h('label', { for: 'f-target' }, 'Devices'), h('div', {}, targetKind, ' ', targetValue),
    h('span', {}, 'Steps'), h('fieldset', {}, ...steps),
    h('label', { for: 'f-smdp_url' }, 'SM-DP+ address'), smdp,
    h('label', { for: 'f-esim_modification' }, 'eSIM modification'), mod,
    h('label', { for: 'f-preserve_esim_on_erase' }, 'Keep eSIM on erase'), keep,
    h('label', { for: 'f-pushes_per_second' }, 'Pushes per second'), pps,
    h('label', { for: 'f-distribution' }, 'Start'), dist,
    h('div', { class: 'full toolbar' }, check, create, h('span', { class: 'muted' }, 'Nothing is sent until you create it; the warnings are checked first.')),
    out);
  v.append(h('h1', {}, 'New campaign'), form);

  function body() {
    const chosen = steps.map((l) => l.querySelector('input')).filter((i) => i.checked).map((i) => i.value);
    const b = { name: name.value.trim(), steps: chosen, distribution: dist.value, settings: { pushes_per_second: Number(pps.value) || 1000 } };
    const tv = targetValue.value.trim();
    if (targetKind.value === 'all') b.target = { all: true };
    else if (targetKind.value === 'udids') b.target = { udids: tv.split(/[\s,]+/).filter(Boolean) };
    else b.target = { [targetKind.value]: tv };
    if (chosen.includes('refresh')) b.smdp_url = smdp.value.trim();
    if (chosen.includes('profile')) b.policy = { esim_modification: mod.value, preserve_esim_on_erase: keep.value };
    return b;
  }
  let checked = null;
  for (const el of form.querySelectorAll('input, select')) el.addEventListener('input', () => { create.disabled = true; checked = null; });
  check.addEventListener('click', async () => {
    out.replaceChildren(h('p', { class: 'muted' }, 'Checking…'));
    create.disabled = true;
    try {
      const b = body();
      const r = await post('/v1/campaigns', { ...b, dry_run: true });
      checked = JSON.stringify(b);
      out.replaceChildren(h('p', {}, h('strong', {}, `${r.devices} device${r.devices === 1 ? '' : 's'}`), r.staged ? ` (${r.staged} staged)` : '', ' would get this campaign.'),
        r.warnings_total ? warningList(r.warnings_by_kind, r.warnings, r.warnings_total) : h('p', { class: 'muted', id: 'no-warnings' }, 'No warnings.'));
      out.dataset.checked = '1';
      create.disabled = false;
    } catch (e) {
      out.replaceChildren(errorBox(e), e.field ? h('p', { class: 'muted' }, `Field: ${e.field}`) : null);
    }
  });
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const b = body();
    if (checked !== JSON.stringify(b)) { create.disabled = true; return; }
    create.disabled = true;
    try {
      const c = await post('/v1/campaigns', b);
      location.hash = `#/campaign/${encodeURIComponent(c.id)}`;
    } catch (e) { out.replaceChildren(errorBox(e)); }
  });
}

// ---- start ----------------------------------------------------------------------------------------

async function start() {
  await loadSession();
  document.getElementById('who').textContent = `role: ${role()}`;
  document.getElementById('logout').addEventListener('click', logout);
  for (const a of document.querySelectorAll('.acts')) a.classList.toggle('hidden', !canAct());
  window.addEventListener('hashchange', route);
  document.addEventListener('visibilitychange', () => { if (!document.hidden) route(); });
  route();
}

start();

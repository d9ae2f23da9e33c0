// The chat page: sign-in, the session list, the conversation and its streaming turns.
//
// State lives in this module; the DOM is updated from it by small render functions. What must
// survive a reload lives in sessionStorage (per tab, gone when the tab closes): the token, the
// open session, and, while a turn runs, the turn's last event id and the reply's parts received
// so far, so a reloaded page shows the partial reply and re-attaches with Last-Event-ID. Tool
// calls that wait for a decision live on the server and are read back with the chat
// (approvals.js).

import { Api, ApiError } from './api.js';
import { ToolDesk } from './approvals.js';
import { applyReplyEvent, contextCut } from './reply.js';
import { SignIn } from './sign-in.js';
import { readEvents } from './sse.js';
import { ToolMenu, parseToolCommand, resolveToolCommand } from './tool-menu.js';
import {
  MessageView,
  contextCutView,
  describeError,
  el,
  finishKind,
  finishLabel,
  formatCents,
  formatCount,
  formatWhen,
  onSubmit,
  relativeTime,
  usageText,
} from './ui.js';

const SESSION_KEY = 'parley.session';
const TURN_KEY = 'parley.turn';
const PAGE_SIZE = 30;
const ATTACH_RETRIES = [0, 500, 1000, 2000]; // ms before each try to re-attach a dropped stream

const $ = (id) => document.getElementById(id);
const dom = {
  usage: $('usage'),
  navToggle: $('nav-toggle'),
  workspace: $('workspace'),
  newChat: $('new-chat'),
  searchForm: $('search-form'),
  searchInput: $('search-input'),
  searchStatus: $('search-status'),
  sessionList: $('session-list'),
  loadMore: $('load-more'),
  chatTitle: $('chat-title'),
  renameButton: $('rename-chat'),
  closeButton: $('close-chat'),
  renameForm: $('rename-form'),
  renameInput: $('rename-input'),
  renameCancel: $('rename-cancel'),
  banner: $('banner'),
  bannerText: $('banner-text'),
  bannerClose: $('banner-close'),
  messages: $('messages'),
  emptyState: $('empty-state'),
  composer: $('composer'),
  input: $('composer-input'),
  send: $('send'),
  stop: $('stop'),
  hint: $('composer-hint'),
  allowedTools: $('allowed-tools'),
  toolAnnouncer: $('tool-announcer'),
  toolsButton: $('tools-button'),
  toolMenu: $('tool-menu'),
  toolList: $('tool-list'),
  toolMenuStatus: $('tool-menu-status'),
};
const DEFAULT_HINT = dom.hint.textContent;
let shownCut = null; // {view, cut}: the divider showContextCut() placed, and what it says

const state = {
  api: null,
  sessions: [], // summaries, newest activity first
  page: 0,
  total: 0,
  current: null, // summary of the open session; null for a new, not yet created chat
  turn: null, // the running turn, see beginTurn()
  searching: false,
  searchTimer: 0,
  searchSeq: 0,
  openSeq: 0,
  closeArmed: 0, // timer of the two-step "Close chat" confirmation
  creating: null, // the request creating the open chat, while it runs
  unloading: false,
};

// The open chat's tool calls that wait for a decision, its plans and tools.
const desk = new ToolDesk({
  announcer: dom.toolAnnouncer,
  onContinuation: (reply, response) => continueReply(reply, response),
  onResync: () => {
    if (state.current && !state.turn) openSession(state.current.id, { keepBanner: true });
  },
  onError: (err) => handleError(err),
  onChange: () => {
    updateComposer();
    renderAllowedTools();
  },
});

const isAbort = (err) => err && err.name === 'AbortError';
const setText = (node, text) => {
  if (node.textContent !== text) node.textContent = text;
};
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// ---- storage ---------------------------------------------------------------------------

function saveTurn(turn) {
  if (!turn.sessionId) return;
  const { sessionId, lastEventId, messageId, parts, reasoning, usage, error } = turn;
  try {
    const saved = { sessionId, lastEventId, messageId, parts, reasoning, usage, error };
    sessionStorage.setItem(TURN_KEY, JSON.stringify(saved));
  } catch {
    // Storage full or disabled: the reply still streams, it just cannot survive a reload.
  }
}

function readSavedTurn() {
  try {
    const saved = JSON.parse(sessionStorage.getItem(TURN_KEY) || 'null');
    return saved && typeof saved.sessionId === 'string' ? saved : null;
  } catch {
    return null;
  }
}

function clearSavedTurn() {
  // While the page unloads, a dying stream must not erase what the reloaded page resumes from.
  if (!state.unloading) sessionStorage.removeItem(TURN_KEY);
}

// ---- banner ----------------------------------------------------------------------------

function showBanner(code, message) {
  dom.bannerText.replaceChildren(el('code', { className: 'banner-code', textContent: code }), ' ', message);
  dom.banner.hidden = false;
}

function clearBanner() {
  dom.banner.hidden = true;
  dom.bannerText.replaceChildren();
}

/** Show any failure; a rejected token signs out. */
function handleError(err) {
  if (isAbort(err)) return;
  if (err instanceof ApiError && err.status === 401) {
    signIn.signOut(`${err.message} (${err.code})`);
    return;
  }
  if (!(err instanceof ApiError)) {
    console.error(err);
    showBanner('client_error', 'Something went wrong on this page. Reload it and try again.');
    return;
  }
  const { code, message } = describeError(err);
  showBanner(code, message);
}

// ---- sign-in -----------------------------------------------------------------------------

const signIn = new SignIn({
  parts: [dom.workspace, dom.navToggle],
  emptyMessage: 'Paste your API token first.',
  check: checkToken,
  refusal: (err) => (err.status === 401 ? `That token was not accepted: ${err.message} (${err.code})` : null),
  onSignedIn: openWorkspace,
  onSignOut: clearWorkspace,
});

async function checkToken(token) {
  const api = new Api(token);
  return { api, usage: await api.usage() }; // checks the token and fills the usage line in one request
}

async function openWorkspace({ api, usage }) {
  state.api = api;
  renderUsage(usage);
  await loadSessions();

  const saved = readSavedTurn();
  const sessionId = saved ? saved.sessionId : sessionStorage.getItem(SESSION_KEY);
  if (sessionId) await openSession(sessionId, { resume: saved });
  else newChat();
  if (!state.turn) dom.input.focus();
}

function clearWorkspace() {
  if (state.turn) state.turn.controller.abort(); // leave the stream; the turn itself goes on server-side
  state.turn = null;
  state.api = null;
  state.current = null;
  state.sessions = [];
  desk.reset(null, null);
  for (const key of [SESSION_KEY, TURN_KEY]) sessionStorage.removeItem(key);
  clearBanner();
  dom.usage.hidden = true;
  dom.sessionList.replaceChildren();
  dom.sessionList.setAttribute('aria-busy', 'true');
  dom.searchInput.value = '';
  dom.searchStatus.textContent = '';
  showMessages([]);
  setBusy(false);
}

// ---- usage -------------------------------------------------------------------------------

/**
 * The budget limits that apply, from GET /usage's `budget` (null: no budget; a null limit:
 * unlimited). Spending counts what the server reports as used for the period.
 */
function budgetMeters(usage) {
  const budget = usage.budget;
  if (!budget || typeof budget !== 'object' || budget.enabled === false) return [];
  const meters = [];
  for (const period of ['daily', 'monthly']) {
    const limit = budget[`${period}BudgetCents`];
    if (limit === null || limit === undefined || !Number.isFinite(Number(limit))) continue;
    const used = budget[`${period}UsedCents`] ?? usage[period].totalCostCents;
    meters.push({ period, limit: Number(limit), used: Number(used) || 0, resetsAt: budget[`${period}ResetsAt`] });
  }
  return meters;
}

function renderUsage(usage) {
  if (!usage || !usage.daily || !usage.monthly) return;
  const messages = Number(usage.daily.messageCount) || 0;
  const amount = (cents) => el('strong', { textContent: formatCents(cents) });
  const parts = [
    el(
      'span',
      { className: 'usage-item' },
      'Today ',
      amount(usage.daily.totalCostCents),
      ` · ${formatCount(messages)} ${messages === 1 ? 'message' : 'messages'}`,
    ),
    el('span', { className: 'usage-item' }, 'Month ', amount(usage.monthly.totalCostCents)),
  ];
  if (usage.budget && usage.budget.enabled === false) {
    parts.push(el('span', { className: 'usage-item budget-off', textContent: 'AI is disabled for this organization' }));
  }
  for (const { period, limit, used, resetsAt } of budgetMeters(usage)) {
    const share = limit > 0 ? Math.min(999, Math.round((used / limit) * 100)) : 100;
    const renews = Number.isNaN(Date.parse(resetsAt)) ? '' : `, renews ${formatWhen(Date.parse(resetsAt))}`;
    const label = `${share}% of the ${period} budget of ${formatCents(limit)} used${renews}`;
    parts.push(
      el(
        'span',
        { className: 'usage-item budget', title: label },
        // max before low/high/value: the element clamps each to the range set so far.
        el('meter', {
          min: 0,
          max: limit || 1,
          low: limit * 0.75,
          high: limit * 0.9,
          optimum: 0,
          value: Math.min(used, limit || 1),
          attrs: { 'aria-label': label },
        }),
        ` ${share}% of ${formatCents(limit)} ${period === 'daily' ? 'today' : 'this month'}`,
      ),
    );
  }
  dom.usage.replaceChildren(...parts);
  dom.usage.hidden = false;
}

async function refreshUsage() {
  if (!state.api) return;
  try {
    renderUsage(await state.api.usage());
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) handleError(err);
    // Otherwise the usage line keeps its last values; the chat itself is unaffected.
  }
}

// ---- session list --------------------------------------------------------------------------

async function loadSessions({ append = false } = {}) {
  if (!state.api) return;
  const page = append ? state.page + 1 : 1;
  dom.sessionList.setAttribute('aria-busy', 'true'); // screen readers (and tests) know the list is loading
  try {
    const result = await state.api.listSessions(page, PAGE_SIZE);
    const known = new Set(append ? state.sessions.map((s) => s.id) : []);
    const rows = result.data.filter((s) => !known.has(s.id));
    state.sessions = append ? [...state.sessions, ...rows] : rows;
    state.page = page;
    state.total = result.total;
  } catch (err) {
    handleError(err);
    return;
  } finally {
    dom.sessionList.setAttribute('aria-busy', 'false');
  }
  if (!state.searching) renderSessionList();
}

function sessionTitle(session) {
  return session && session.title ? session.title : 'Untitled chat';
}

function sessionButton(id, title, detail) {
  const button = el(
    'button',
    { type: 'button', className: 'session-item' },
    el('span', { className: 'session-title', textContent: title }),
    el('span', { className: 'session-detail', textContent: detail }),
  );
  if (state.current && state.current.id === id) button.setAttribute('aria-current', 'true');
  button.addEventListener('click', () => openSession(id));
  return el('li', { attrs: { 'data-session-id': id } }, button);
}

function renderSessionList() {
  const items = state.sessions.map((s) => {
    const when = relativeTime(s.lastActivityAt || s.createdAt);
    const status = s.status === 'active' ? '' : `${s.status} · `;
    return sessionButton(s.id, sessionTitle(s), `${status}${when}`);
  });
  if (items.length === 0) items.push(el('li', { className: 'hint', textContent: 'No chats yet.' }));
  dom.sessionList.replaceChildren(...items);
  dom.loadMore.hidden = state.sessions.length >= state.total;
}

function markCurrentInList() {
  for (const button of dom.sessionList.querySelectorAll('.session-item')) {
    const id = button.parentElement.getAttribute('data-session-id');
    if (state.current && id === state.current.id) button.setAttribute('aria-current', 'true');
    else button.removeAttribute('aria-current');
  }
}

function upsertSession(summary) {
  const index = state.sessions.findIndex((s) => s.id === summary.id);
  if (index === -1) {
    state.sessions.unshift(summary);
    state.total += 1;
  } else {
    state.sessions[index] = { ...state.sessions[index], ...summary };
  }
  if (!state.searching) renderSessionList();
}

function scheduleSearch() {
  clearTimeout(state.searchTimer);
  state.searchTimer = setTimeout(runSearch, 250); // one request per pause in typing
}

async function runSearch() {
  const query = dom.searchInput.value.trim();
  const seq = ++state.searchSeq;
  if (query.length === 0) {
    state.searching = false;
    dom.searchStatus.textContent = '';
    renderSessionList();
    return;
  }
  if (query.length < 2) {
    dom.searchStatus.textContent = 'Type at least 2 characters to search.';
    return;
  }
  let result;
  try {
    result = await state.api.searchSessions(query);
  } catch (err) {
    handleError(err);
    return;
  }
  if (seq !== state.searchSeq) return; // a newer search was started meanwhile
  state.searching = true;
  const hits = result.data;
  dom.searchStatus.textContent =
    hits.length === 0
      ? `No chats match “${query}”.`
      : `${hits.length} chat${hits.length === 1 ? '' : 's'} match “${query}”.`;
  const detail = (hit) => hit.matchedContent || `Title matches · ${relativeTime(hit.createdAt)}`;
  dom.sessionList.replaceChildren(...hits.map((hit) => sessionButton(hit.id, sessionTitle(hit), detail(hit))));
  dom.loadMore.hidden = true;
}

function clearSearch() {
  dom.searchInput.value = '';
  state.searchSeq++;
  state.searching = false;
  dom.searchStatus.textContent = '';
  renderSessionList();
}

// ---- conversation --------------------------------------------------------------------------

function nearBottom() {
  const box = dom.messages;
  return box.scrollHeight - box.scrollTop - box.clientHeight < 80;
}

function scrollToBottom() {
  dom.messages.scrollTop = dom.messages.scrollHeight;
}

function appendMessage(view) {
  dom.emptyState.hidden = true;
  const stick = nearBottom();
  dom.messages.append(view.el);
  if (stick || view.role === 'user') scrollToBottom();
  return view;
}

function assistantView() {
  return new MessageView('assistant', { blockView: (block) => desk.viewFor(block) });
}

/** A stored reply's parts: text, reasoning, tool calls and results as stored, else its text alone. */
function storedParts(message) {
  if (Array.isArray(message.parts) && message.parts.length > 0) return message.parts;
  return message.content ? [{ type: 'text', text: message.content }] : [];
}

function storedMessageView(message) {
  if (message.role === 'user') {
    const view = new MessageView('user');
    view.render(message.content || '');
    return view;
  }
  const view = assistantView();
  view.renderParts(storedParts(message), message.reasoning || '');
  const label = finishLabel(message.finishReason);
  if (label) view.setStatus(label, finishKind(message.finishReason));
  if (message.outputTokens || message.inputTokens) view.setMeta(usageText(message));
  return view;
}

/** Show the stored conversation; returns the view of its last message. */
function showMessages(messages) {
  dom.messages.replaceChildren(dom.emptyState);
  dom.emptyState.hidden = messages.length > 0;
  let last = null;
  for (const message of messages) {
    if (message.role !== 'user' && message.role !== 'assistant') continue;
    last = storedMessageView(message);
    dom.messages.append(last.el);
  }
  showContextCut(contextCut(messages));
  scrollToBottom();
  return last;
}

/**
 * Mark where the model's view of the conversation begins (reply.js `contextCut`): one divider,
 * above the oldest message it still sees, moved when a turn says the model sees less. A cut
 * without the summary's text (a streaming reply's) keeps the text shown for the same cut: the
 * summary in use changes only when more is dropped.
 */
function showContextCut(cut) {
  if (!cut) return;
  const shown = dom.messages.querySelector('.context-cut');
  const before = shownCut && shown && shown === shownCut.view ? shownCut.cut : null;
  const same = before && before.droppedMessages === cut.droppedMessages && before.summarized === cut.summarized;
  if (same && (before.summary === cut.summary || !cut.summary)) return;
  // The messages are listed as stored, in order: the first one sent is at the number dropped.
  const messages = dom.messages.querySelectorAll(':scope > .message');
  if (messages.length === 0) return;
  const first = messages[Math.min(cut.droppedMessages, messages.length - 1)];
  const view = contextCutView(cut);
  shown?.remove();
  first.before(view);
  shownCut = { view, cut };
}

/**
 * Show a chat as stored, with its tool state: the calls and plans that wait, and the tools
 * always allowed. `hidden` is a reply left out (one a resumed stream redraws).
 */
function showDetail(detail, hidden = null) {
  const messages = detail.messages.filter((m) => m.id !== hidden);
  desk.reset(state.api, detail.session.id, detail);
  const lastView = showMessages(messages);
  const last = messages[messages.length - 1];
  if (last && last.role === 'assistant' && last.finishReason === 'awaiting_approval') {
    const parts = storedParts(last);
    const reasoning = last.reasoning || '';
    desk.setReply({ sessionId: detail.session.id, messageId: last.id, view: lastView, parts, reasoning });
    desk.fillDecided(parts);
  }
}

function renderAllowedTools() {
  const titles = desk.allowedTitles();
  dom.allowedTools.hidden = titles.length === 0;
  setText(dom.allowedTools, titles.length ? `Always allowed in this chat: ${titles.join(', ')}` : '');
}

function renderChatHeader() {
  const session = state.current;
  dom.chatTitle.textContent = session ? sessionTitle(session) : 'New chat';
  dom.renameButton.hidden = !session;
  dom.closeButton.hidden = !session || session.status !== 'active';
  disarmClose();
  hideRename();
  updateComposer();
}

/** The send box is usable when no turn runs and the open session accepts messages. */
function updateComposer() {
  const session = state.current;
  const ended = session && session.status !== 'active';
  const busy = Boolean(state.turn);
  const waiting = desk.waiting() > 0;
  dom.input.disabled = busy || ended;
  dom.send.disabled = busy || ended || waiting;
  dom.toolsButton.disabled = Boolean(ended);
  dom.closeButton.disabled = busy;
  let hint = DEFAULT_HINT;
  if (ended) hint = `This chat is ${session.status}. Start a new chat to go on.`;
  else if (waiting) hint = 'parley waits for your decision on a tool call above: approve or deny it to go on.';
  setText(dom.hint, hint);
}

function newChat() {
  detachTurn();
  state.openSeq++;
  state.current = null;
  sessionStorage.removeItem(SESSION_KEY);
  clearBanner();
  desk.reset(state.api, null);
  showMessages([]);
  renderChatHeader();
  markCurrentInList();
  closeNav();
}

async function openSession(id, { resume = null, keepBanner = false } = {}) {
  detachTurn();
  closeNav();
  const seq = ++state.openSeq;
  let detail;
  try {
    detail = await state.api.getSession(id);
  } catch (err) {
    if (seq !== state.openSeq) return;
    if (err instanceof ApiError && err.status === 404) {
      sessionStorage.removeItem(SESSION_KEY);
      sessionStorage.removeItem(TURN_KEY);
      newChat();
    }
    handleError(err);
    return;
  }
  if (seq !== state.openSeq) return; // another chat was opened meanwhile
  state.current = detail.session;
  sessionStorage.setItem(SESSION_KEY, id);
  if (!keepBanner) clearBanner();
  const messages = detail.messages;
  const last = messages[messages.length - 1];
  let resuming = null;
  if (resume && resume.sessionId === id) {
    // A reply is stored while it streams (checkpoints) without a finish reason: it is over
    // once it has one (awaiting_approval included: that stream ended).
    const stored = messages.find((m) => m.id === resume.messageId);
    const finished = resume.messageId ? Boolean(stored && stored.finishReason) : last && last.role === 'assistant';
    if (finished) clearSavedTurn(); // it finished while the page reloaded, and is shown below
    else resuming = resume;
  }
  showDetail(detail, resuming ? resuming.messageId : null);
  renderChatHeader();
  markCurrentInList();
  closeNav();

  if (resuming) {
    await resumeTurn(resuming);
  } else if (detail.session.status === 'active' && last && last.role === 'user') {
    // The last message has no reply yet: a turn may be running (another tab, a lost
    // connection). Join it from its start; 409 no_turn_running just means there is none.
    await joinRunningTurn(id);
  }
}

// ---- turns --------------------------------------------------------------------------------

/** Start tracking a turn: the composer is disabled until finishTurn()/endTurn(). */
function beginTurn(sessionId, saved = {}) {
  const turn = {
    sessionId,
    controller: new AbortController(),
    view: null,
    lastEventId: saved.lastEventId ?? null,
    messageId: saved.messageId ?? null,
    // Copies: deltas extend the last text part in place.
    parts: (saved.parts ?? []).map((part) => ({ ...part })),
    reasoning: saved.reasoning ?? '',
    usage: saved.usage ?? null,
    error: saved.error ?? null,
    stopRequested: false,
    renderQueued: false,
    renderedAt: 0, // performance.now() when the last render ended
    renderCost: 0, // how long it took, in ms
  };
  state.turn = turn;
  setBusy(true);
  desk.setStreaming(true);
  return turn;
}

/** Whether a reply's parts hold anything of the reply itself (more than where the model's view begins). */
const hasReply = (parts) => parts.some((p) => p.type !== 'context_trimmed');

function ensureView(turn) {
  if (!turn.view) {
    turn.view = appendMessage(assistantView());
    turn.view.setStreaming(true);
    turn.view.renderParts(turn.parts, turn.reasoning);
    showContextCut(contextCut([{ parts: turn.parts }]));
    if (!hasReply(turn.parts)) turn.view.setStatus('Thinking…', 'pending');
  }
  return turn.view;
}

function renderTurn(turn) {
  turn.renderQueued = false;
  if (!turn.view) return;
  const started = performance.now();
  const stick = nearBottom();
  turn.view.renderParts(turn.parts, turn.reasoning);
  showContextCut(contextCut([{ parts: turn.parts }]));
  if (hasReply(turn.parts)) turn.view.setStatus('');
  if (stick) scrollToBottom();
  saveTurn(turn); // with the render, not after every delta: it writes the whole reply so far
  turn.renderedAt = performance.now();
  turn.renderCost = turn.renderedAt - started;
}

/**
 * Re-render at most once per animation frame however many tokens arrive. After a slow render
 * (a long block still open, such as a big table) wait four times as long as it took: rendering
 * then keeps at most a fifth of the main thread, and input, timers and the stream go on.
 */
function queueRender(turn) {
  if (turn.renderQueued) return;
  turn.renderQueued = true;
  const render = () =>
    requestAnimationFrame(() => {
      if (turn.renderQueued) renderTurn(turn);
    });
  const wait = turn.renderedAt + 4 * turn.renderCost - performance.now();
  if (wait > 0) setTimeout(render, wait);
  else render();
}

function applyEvent(turn, type, data) {
  switch (type) {
    case 'title_updated':
      if (state.current && state.current.id === turn.sessionId) {
        state.current.title = data.title;
        dom.chatTitle.textContent = sessionTitle(state.current);
      }
      upsertSession({ id: turn.sessionId, title: data.title });
      break;
    case 'message_start':
      turn.messageId = data.messageId;
      break;
    case 'content_delta':
    case 'context_trimmed':
    case 'tool_use_start':
    case 'tool_result':
    case 'approval_required':
    case 'plan_approval_required':
      applyReplyEvent(turn.parts, type, data);
      if (type !== 'content_delta' && turn.sessionId === desk.sessionId) desk.onEvent(type, data);
      queueRender(turn);
      break;
    case 'plan_step_start':
    case 'plan_step_complete':
    case 'plan_complete':
      if (turn.sessionId === desk.sessionId) desk.onEvent(type, data);
      break;
    case 'reasoning_delta':
      turn.reasoning += data.delta;
      queueRender(turn);
      break;
    case 'message_end':
      turn.usage = data;
      break;
    case 'error':
      turn.error = { code: data.code, message: data.message };
      showBanner(data.code || 'error', data.message || 'The reply failed.');
      break;
    default:
      break; // `done`, and event types this page does not know yet
  }
}

/**
 * Read a turn's SSE response to its end.
 * @returns {Promise<'done'|'dropped'|'aborted'>} dropped: the stream ended without `done`.
 */
async function consume(turn, response) {
  ensureView(turn);
  try {
    for await (const frame of readEvents(response.body)) {
      if (turn !== state.turn) return 'aborted';
      if (frame.id) turn.lastEventId = frame.id;
      let data = null;
      try {
        data = JSON.parse(frame.data);
      } catch {
        continue; // a garbled frame: skip it rather than lose the turn
      }
      applyEvent(turn, frame.event, data);
      if (frame.event === 'done') {
        finishTurn(turn);
        return 'done';
      }
      // A delta is saved by the render it queued: saving the whole reply after each one made a
      // long reply quadratic.
      if (frame.event !== 'content_delta' && frame.event !== 'reasoning_delta') saveTurn(turn);
    }
  } catch (err) {
    if (turn.controller.signal.aborted || isAbort(err)) return 'aborted';
    // The connection broke mid-stream: the caller re-attaches.
  }
  return turn.controller.signal.aborted || turn !== state.turn ? 'aborted' : 'dropped';
}

/** Re-attach to a turn whose stream broke, replaying after the last event seen. */
async function reattach(turn) {
  for (const delay of ATTACH_RETRIES) {
    if (delay) await sleep(delay);
    if (turn !== state.turn) return;
    let response;
    try {
      response = await state.api.attach(turn.sessionId, turn.lastEventId, turn.controller.signal);
    } catch (err) {
      if (isAbort(err) || turn !== state.turn) return;
      if (err instanceof ApiError && err.code === 'no_turn_running') {
        await settleFromServer(turn);
        return;
      }
      if (err instanceof ApiError && (err.status === 0 || err.status >= 500)) continue; // transient
      failTurn(turn, err);
      return;
    }
    const outcome = await consume(turn, response);
    if (outcome !== 'dropped') return;
  }
  failTurn(
    turn,
    new ApiError(
      0,
      'connection_lost',
      'The connection broke while the reply was streaming. Reload the page to see the saved reply.',
    ),
  );
}

/** After a reload: show what was received before it, then go on from the last event id. */
async function resumeTurn(saved) {
  const turn = beginTurn(saved.sessionId, saved);
  ensureView(turn);
  await reattach(turn);
}

async function joinRunningTurn(sessionId) {
  const turn = beginTurn(sessionId);
  let response;
  try {
    response = await state.api.attach(sessionId, null, turn.controller.signal);
  } catch (err) {
    if (turn !== state.turn) return;
    endTurn(turn);
    if (!(err instanceof ApiError && err.code === 'no_turn_running')) handleError(err);
    return;
  }
  if ((await consume(turn, response)) === 'dropped') await reattach(turn);
}

/** The turn ended while we were away: show the stored conversation instead. */
async function settleFromServer(turn) {
  endTurn(turn);
  if (!state.current || state.current.id !== turn.sessionId) return;
  try {
    const detail = await state.api.getSession(turn.sessionId);
    if (state.current && state.current.id === turn.sessionId && !state.turn) {
      state.current = detail.session;
      showDetail(detail);
      renderChatHeader();
    }
  } catch (err) {
    handleError(err);
  }
  refreshAfterTurn();
}

function finishTurn(turn) {
  renderTurn(turn);
  const view = turn.view;
  view.setStreaming(false);
  if (turn.error) {
    view.setStatus(`Failed (${turn.error.code})`, 'error');
  } else if (turn.usage) {
    view.setStatus('');
    view.setMeta(usageText(turn.usage));
  } else {
    view.setStatus('Stopped', 'info'); // done without message_end or error: the turn was stopped
  }
  if (!hasReply(turn.parts) && !turn.reasoning) view.showEmpty();
  endTurn(turn);
  if (desk.waiting() > 0 && turn.sessionId === desk.sessionId) {
    // Its calls wait: this reply goes on when they are decided, and the cards have the focus.
    view.setStatus('Waits for your decision on its tool calls.', 'pending');
    const { sessionId, messageId, parts, reasoning } = turn;
    desk.setReply({ sessionId, messageId, view, parts, reasoning });
    if ([dom.input, dom.stop, document.body].includes(document.activeElement)) desk.focusFirst();
  }
  refreshAfterTurn();
}

function failTurn(turn, err) {
  if (turn.view) {
    renderTurn(turn);
    turn.view.setStreaming(false);
    turn.view.setStatus(`Interrupted (${err.code})`, 'error');
  }
  endTurn(turn);
  handleError(err);
}

function endTurn(turn) {
  if (state.turn !== turn) return;
  state.turn = null;
  clearSavedTurn();
  setBusy(false);
  desk.setStreaming(false);
}

/** A decision settled the reply's last waiting call: its continuation streams into the same reply. */
async function continueReply(reply, response) {
  if (state.turn || !state.current || !reply || reply.sessionId !== state.current.id) {
    response.body?.cancel().catch(() => {});
    if (state.current) openSession(state.current.id); // show what the server has instead
    return;
  }
  clearBanner();
  desk.setReply(null);
  const { sessionId, messageId, parts, reasoning, view } = reply;
  const turn = beginTurn(sessionId, { messageId, parts, reasoning });
  turn.view = view;
  view.setStreaming(true);
  view.setStatus('');
  saveTurn(turn); // a reload from here on re-attaches to the continuation
  if ((await consume(turn, response)) === 'dropped') await reattach(turn);
}

/** The open chat's id, creating it first for a new chat; null when another chat was opened meanwhile. */
async function ensureSession() {
  if (state.current) return state.current.id;
  const seq = state.openSeq;
  // One request however many ask at once (a first message sent while the tools menu opens).
  state.creating ??= state.api.createSession().finally(() => {
    state.creating = null;
  });
  const session = await state.creating;
  if (seq !== state.openSeq) return null;
  if (state.current) return state.current.id; // adopted by the other caller
  state.current = session;
  sessionStorage.setItem(SESSION_KEY, session.id);
  desk.reset(state.api, session.id);
  desk.setStreaming(Boolean(state.turn));
  upsertSession(session);
  renderChatHeader();
  markCurrentInList();
  return session.id;
}

/** Leave the running turn's stream (switching chats, signing out); it goes on server-side. */
function detachTurn() {
  const turn = state.turn;
  if (!turn) return;
  turn.controller.abort();
  if (turn.view) turn.view.setStreaming(false);
  endTurn(turn);
}

function refreshAfterTurn() {
  refreshUsage();
  loadSessions();
}

async function send(text) {
  if (!state.api || state.turn || !text.trim()) return;
  if (state.current && state.current.status !== 'active') return;
  if (desk.waiting() > 0) {
    desk.focusFirst(); // the server refuses messages while calls wait
    return;
  }
  const command = parseToolCommand(text);
  clearBanner();
  const turn = beginTurn(state.current ? state.current.id : null);
  dom.input.value = '';
  const userView = appendMessage(new MessageView('user'));
  userView.render(command && command.content ? command.content : text);
  try {
    if (!turn.sessionId) {
      turn.sessionId = await ensureSession();
      if (!turn.sessionId || turn !== state.turn) return;
    }
    let content = text;
    let toolChoice = null;
    if (command) {
      const forced = resolveToolCommand(await desk.listTools({ fresh: true }), command);
      if (turn !== state.turn) return;
      content = forced.content;
      toolChoice = { name: forced.tool.name };
      userView.render(content);
      userView.setMeta(`Asked parley to use ${forced.tool.title || forced.tool.name}`);
    }
    ensureView(turn);
    saveTurn(turn); // from here on a reload re-attaches
    const response = await state.api.sendMessage(turn.sessionId, content, turn.controller.signal, toolChoice);
    if ((await consume(turn, response)) === 'dropped') await reattach(turn);
  } catch (err) {
    if (isAbort(err) || turn !== state.turn) return;
    // Refused before the stream started: nothing was stored, so give the text back.
    userView.el.remove();
    if (turn.view) turn.view.el.remove();
    dom.emptyState.hidden = dom.messages.querySelector('.message') !== null;
    endTurn(turn);
    if (!dom.input.value) dom.input.value = text;
    handleError(err);
    if (err instanceof ApiError && err.code === 'approval_pending' && state.current) {
      // Calls wait that this page did not know of (decided on another device, say): show them.
      openSession(state.current.id, { keepBanner: true });
    }
    if (err instanceof ApiError && ['session_expired', 'session_closed'].includes(err.code) && state.current) {
      state.current.status = err.code === 'session_expired' ? 'expired' : 'closed';
      upsertSession(state.current);
      renderChatHeader();
    }
  }
}

async function stop() {
  const turn = state.turn;
  if (!turn || !turn.sessionId || turn.stopRequested) return;
  turn.stopRequested = true;
  dom.stop.disabled = true;
  dom.stop.textContent = 'Stopping…';
  try {
    await state.api.interrupt(turn.sessionId);
    // The stream now ends with `done`; finishTurn() re-enables the send box.
  } catch (err) {
    if (err instanceof ApiError && err.code === 'no_turn_running') return; // it ended by itself
    if (turn === state.turn) {
      turn.stopRequested = false;
      dom.stop.disabled = false;
      dom.stop.textContent = 'Stop';
    }
    handleError(err);
  }
}

function setBusy(busy) {
  const focusWasInComposer = [dom.input, dom.send].includes(document.activeElement);
  const focusWasOnStop = document.activeElement === dom.stop;
  dom.stop.hidden = !busy;
  dom.stop.disabled = false;
  dom.stop.textContent = 'Stop';
  dom.composer.setAttribute('aria-busy', String(busy));
  updateComposer();
  if (busy && focusWasInComposer) dom.stop.focus(); // keep keyboard users next to the action
  const focusIsLost = focusWasOnStop || document.activeElement === document.body;
  if (!busy && focusIsLost && !dom.input.disabled && !dom.workspace.hidden) dom.input.focus();
}

// ---- rename and close ---------------------------------------------------------------------

function showRename() {
  if (!state.current) return;
  dom.renameInput.value = state.current.title || '';
  dom.renameForm.hidden = false;
  dom.renameInput.focus();
  dom.renameInput.select();
}

function hideRename() {
  dom.renameForm.hidden = true;
}

/** Put the title form away and give the focus back to the button that opened it. */
function closeRename() {
  hideRename();
  dom.renameButton.focus();
}

async function submitRename() {
  const session = state.current;
  const title = dom.renameInput.value.trim();
  if (!session || !title) {
    dom.renameInput.focus();
    return;
  }
  try {
    const result = await state.api.renameSession(session.id, title);
    session.title = result.title ?? title;
    upsertSession({ id: session.id, title: session.title });
    dom.chatTitle.textContent = sessionTitle(session);
    closeRename();
  } catch (err) {
    handleError(err);
  }
}

function disarmClose() {
  clearTimeout(state.closeArmed);
  state.closeArmed = 0;
  dom.closeButton.textContent = 'Close chat';
  dom.closeButton.classList.remove('armed');
}

async function closeChat() {
  const session = state.current;
  if (!session || state.turn) return;
  if (!state.closeArmed) {
    // Closing cannot be undone: ask for a second press instead of a modal dialog.
    dom.closeButton.textContent = 'Press again to close';
    dom.closeButton.classList.add('armed');
    state.closeArmed = setTimeout(disarmClose, 5000);
    return;
  }
  disarmClose();
  try {
    await state.api.closeSession(session.id);
    session.status = 'closed';
    upsertSession({ id: session.id, status: 'closed' });
    renderChatHeader();
    dom.newChat.focus();
  } catch (err) {
    handleError(err);
  }
}

// ---- narrow screens -------------------------------------------------------------------------

function closeNav() {
  dom.workspace.classList.remove('nav-open');
  dom.navToggle.setAttribute('aria-expanded', 'false');
}

function toggleNav() {
  const open = !dom.workspace.classList.contains('nav-open');
  dom.workspace.classList.toggle('nav-open', open);
  dom.navToggle.setAttribute('aria-expanded', String(open));
  if (open) dom.newChat.focus();
}

// ---- wiring --------------------------------------------------------------------------------

function wire() {
  new ToolMenu({
    button: dom.toolsButton,
    panel: dom.toolMenu,
    list: dom.toolList,
    status: dom.toolMenuStatus,
    input: dom.input,
    // The tools are those of a chat: a new chat is created when its tools are first asked for.
    loadTools: async () => ((await ensureSession()) ? desk.listTools({ fresh: true }) : null),
    onError: (err) => handleError(err),
  });
  dom.navToggle.addEventListener('click', toggleNav);
  dom.newChat.addEventListener('click', () => {
    newChat();
    dom.input.focus();
  });
  dom.loadMore.addEventListener('click', () => loadSessions({ append: true }));
  onSubmit(dom.searchForm, () => {
    clearTimeout(state.searchTimer);
    runSearch();
  });
  dom.searchInput.addEventListener('input', scheduleSearch);
  dom.searchInput.addEventListener('keydown', (event) => {
    if (event.key === 'Escape' && dom.searchInput.value) {
      event.preventDefault();
      clearSearch();
    }
  });
  dom.renameButton.addEventListener('click', showRename);
  dom.renameCancel.addEventListener('click', closeRename);
  onSubmit(dom.renameForm, submitRename);
  dom.renameInput.addEventListener('keydown', (event) => {
    if (event.key === 'Escape') {
      event.preventDefault();
      closeRename();
    }
  });
  dom.closeButton.addEventListener('click', closeChat);
  dom.closeButton.addEventListener('blur', disarmClose);
  dom.bannerClose.addEventListener('click', () => {
    clearBanner();
    dom.input.focus();
  });
  onSubmit(dom.composer, () => send(dom.input.value));
  dom.input.addEventListener('keydown', (event) => {
    // Enter sends; Shift+Enter (and Enter while an input method composes) inserts a new line.
    const modified = event.shiftKey || event.altKey || event.ctrlKey || event.metaKey;
    if (event.key === 'Enter' && !modified && !event.isComposing) {
      event.preventDefault();
      dom.composer.requestSubmit();
    }
  });
  dom.stop.addEventListener('click', stop);
  document.addEventListener('keydown', (event) => {
    if (event.key !== 'Escape' || event.defaultPrevented) return;
    if (state.turn) {
      event.preventDefault();
      stop();
    } else if (dom.workspace.classList.contains('nav-open')) {
      closeNav();
      dom.navToggle.focus();
    }
  });
  window.addEventListener('pagehide', () => {
    state.unloading = true;
  });
  window.addEventListener('pageshow', () => {
    state.unloading = false; // back from the back/forward cache
  });
}

wire();
signIn.start();

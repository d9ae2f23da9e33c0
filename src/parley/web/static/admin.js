// The review page: flagged conversations of the admin token's organizations, and their transcripts.
//
// It uses the public API only (/api/v1/ai/admin/..., DELETE /sessions/{id}/flag, through api.js)
// and signs in as the chat page does (sign-in.js). Everything shown is text (textContent):
// transcripts are reviewed as written, nothing in them is rendered as markup.

import { Api } from './api.js';
import { SignIn } from './sign-in.js';

const $ = (id) => document.getElementById(id);
const dom = {
  review: $('review'),
  showAll: $('show-all'),
  listTitle: $('list-title'),
  listStatus: $('list-status'),
  sessionList: $('session-list'),
  banner: $('banner'),
  empty: $('empty'),
  transcript: $('transcript'),
  title: $('transcript-title'),
  meta: $('transcript-meta'),
  flagNote: $('flag-note'),
  unflag: $('unflag'),
  messages: $('messages'),
  toolSection: $('tool-calls-section'),
  toolCalls: $('tool-calls'),
};

let api = null; // with the token being checked or signed in with
let current = null; // the session whose transcript is shown

function when(iso) {
  return iso ? new Date(iso).toLocaleString() : '';
}

function showBanner(error) {
  dom.banner.textContent = `${error.message} (${error.code})`;
  dom.banner.hidden = false;
}

const signIn = new SignIn({
  parts: [dom.review],
  emptyMessage: 'Paste an admin token first.',
  check: (token) => {
    api = new Api(token);
    return loadList();
  },
  refusal: (error) => {
    if (error.status === 403) return 'That token is not an admin token.';
    return error.status === 401 ? `Not accepted: ${error.message}` : null;
  },
  onSignOut: () => {
    api = null;
    current = null;
    dom.transcript.hidden = true;
    dom.empty.hidden = false;
  },
});

async function loadList() {
  const all = dom.showAll.checked;
  dom.listTitle.textContent = all ? 'All conversations' : 'Flagged conversations';
  dom.sessionList.setAttribute('aria-busy', 'true');
  const body = await api.adminSessions({ flagged: !all, limit: 100 });
  dom.sessionList.replaceChildren(...body.data.map(listItem));
  dom.listStatus.textContent = body.total
    ? `${body.total} conversation${body.total === 1 ? '' : 's'}${body.total > body.data.length ? ` (the newest ${body.data.length})` : ''}`
    : all ? 'No conversations yet.' : 'Nothing is flagged.';
  dom.sessionList.setAttribute('aria-busy', 'false');
}

function listItem(session) {
  const item = document.createElement('li');
  const button = document.createElement('button');
  button.type = 'button';
  button.className = 'session';
  button.dataset.id = session.id;
  const title = document.createElement('span');
  title.className = 'session-title';
  title.textContent = session.title || 'Untitled';
  const meta = document.createElement('span');
  meta.className = 'session-meta';
  meta.textContent = `${session.userEmail || session.userId || 'unknown user'} · ${when(session.lastActivityAt)}`;
  button.append(title, meta);
  if (session.flaggedAt) {
    const flag = document.createElement('span');
    flag.className = 'session-flag';
    flag.textContent = session.flagReason ? `Flagged: ${session.flagReason}` : 'Flagged';
    button.append(flag);
  }
  button.addEventListener('click', () => openTranscript(session.id));
  item.append(button);
  return item;
}

async function openTranscript(id) {
  dom.banner.hidden = true;
  let body;
  try {
    body = await api.adminSession(id);
  } catch (error) {
    showBanner(error);
    return;
  }
  current = body.session;
  for (const button of dom.sessionList.querySelectorAll('button.session')) {
    button.setAttribute('aria-current', String(button.dataset.id === id));
  }
  dom.title.textContent = current.title || 'Untitled';
  dom.meta.textContent = `${current.userEmail || current.userId || 'unknown user'} · ${current.status} · started ${when(current.createdAt)}`;
  dom.flagNote.textContent = current.flaggedAt
    ? `Flagged ${when(current.flaggedAt)}${current.flagReason ? `: ${current.flagReason}` : ''}`
    : 'Not flagged.';
  dom.unflag.hidden = !current.flaggedAt;
  dom.messages.replaceChildren(...body.messages.map(messageItem));
  dom.toolCalls.replaceChildren(...body.executions.map(toolItem));
  dom.toolSection.hidden = body.executions.length === 0;
  dom.empty.hidden = true;
  dom.transcript.hidden = false;
}

function messageItem(message) {
  const item = document.createElement('li');
  item.className = `message ${message.role}`;
  const head = document.createElement('p');
  head.className = 'message-head';
  head.textContent = `${message.role} · ${when(message.createdAt)}${message.finishReason && message.finishReason !== 'stop' ? ` · ${message.finishReason}` : ''}`;
  const text = document.createElement('p');
  text.className = 'message-text';
  text.textContent = message.content || '';
  item.append(head, text);
  return item;
}

function toolItem(call) {
  const item = document.createElement('li');
  item.textContent = `${call.toolName} · ${call.status}${call.decidedBy ? ' · decided' : ''} · ${when(call.createdAt)}`;
  return item;
}

dom.unflag.addEventListener('click', async () => {
  if (!current) return;
  try {
    await api.unflagSession(current.id);
    await loadList();
    await openTranscript(current.id);
  } catch (error) {
    showBanner(error);
  }
});

dom.showAll.addEventListener('change', () => loadList().catch(showBanner));

signIn.start();

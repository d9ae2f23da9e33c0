// DOM building and display formatting shared by the page's modules.
//
// Everything here creates nodes with createElement and text nodes; no function takes markup.

import { MarkdownStream } from './markdown.js';
import { replyBlocks } from './reply.js';

/** Create an element; `props` sets properties (className, id, …) and `attrs` attributes. */
export function el(tag, { attrs = {}, ...props } = {}, ...children) {
  const node = document.createElement(tag);
  Object.assign(node, props);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
  for (const child of children) {
    if (child !== null && child !== undefined && child !== false) node.append(child);
  }
  return node;
}

/** Run `handler` when `form` is submitted, instead of submitting it: the page's forms never navigate. */
export function onSubmit(form, handler) {
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    handler();
  });
}

/** US dollars from a number or decimal string; small amounts keep their significant digits. */
export function formatUsd(value) {
  const amount = Number(value);
  if (!Number.isFinite(amount)) return '—';
  if (amount === 0) return '$0.00';
  if (Math.abs(amount) >= 0.01) return `$${amount.toFixed(2)}`;
  const fine = amount.toFixed(6).replace(/0+$/, '');
  return fine === '0.' || fine === '-0.' ? '<$0.000001' : `$${fine}`;
}

/** Dollars from parley's cents (a decimal string, exact on the server). */
export function formatCents(cents) {
  const amount = Number(cents ?? 0);
  return formatUsd(Number.isFinite(amount) ? amount / 100 : NaN);
}

const numberFormat = new Intl.NumberFormat();

export function formatCount(value) {
  return numberFormat.format(Number(value) || 0);
}

const relativeFormat = new Intl.RelativeTimeFormat(undefined, { numeric: 'auto' });
const STEPS = [
  ['year', 365 * 24 * 3600],
  ['month', 30 * 24 * 3600],
  ['week', 7 * 24 * 3600],
  ['day', 24 * 3600],
  ['hour', 3600],
  ['minute', 60],
];

/** "5 minutes ago", "yesterday", … for an ISO timestamp. */
export function relativeTime(iso, now = Date.now()) {
  const at = Date.parse(iso);
  if (Number.isNaN(at)) return '';
  const seconds = Math.round((at - now) / 1000);
  for (const [unit, size] of STEPS) {
    if (Math.abs(seconds) >= size) return relativeFormat.format(Math.round(seconds / size), unit);
  }
  return 'just now';
}

/** "12 in · 3 out tokens · $0.000081 (estimated)" for a turn's usage. */
export function usageText({ inputTokens, outputTokens, costUsd, costCents, usageEstimated }) {
  const cost = costUsd !== undefined && costUsd !== null ? formatUsd(costUsd) : formatCents(costCents);
  const estimated = usageEstimated ? ' (estimated)' : '';
  return `${formatCount(inputTokens)} in · ${formatCount(outputTokens)} out tokens · ${cost}${estimated}`;
}

/** What a stored finish reason means to a reader; null for a normal end. */
export function finishLabel(reason) {
  if (!reason || reason === 'stop') return null;
  if (reason === 'interrupted') return 'Stopped';
  if (reason === 'length') return 'Cut off at the length limit';
  if (reason === 'awaiting_approval') return 'Waits for your decision on its tool calls.';
  if (reason === 'approval_expired') return 'Its tool calls were not approved in time.';
  return `Failed (${reason})`;
}

/** How a finish reason's label is shown: `info`, `pending` or `error`. */
export function finishKind(reason) {
  if (reason === 'awaiting_approval') return 'pending';
  return reason === 'interrupted' || reason === 'approval_expired' ? 'info' : 'error';
}

/** Banner text for an API error: the message, what to do next, and the code. */
export function describeError(err, now = Date.now()) {
  const code = err && err.code ? err.code : 'error';
  let message = err && err.message ? err.message : 'Something went wrong.';
  if (err && err.status === 429) {
    // Retry-After is relative; say when that is, by the reader's clock.
    message += typeof err.retryAfter === 'number'
      ? ` You can send again at ${new Date(now + err.retryAfter * 1000).toLocaleTimeString()}.`
      : ' Try again in a moment.';
  } else if (err && err.status === 402) {
    const resetsAt = Date.parse(err.details && err.details.resetsAt);
    message += Number.isNaN(resetsAt)
      ? ' The organization has reached its spending limit; ask an administrator.'
      : ` In your time zone that is ${formatWhen(resetsAt, now)}.`;
  }
  return { code, message };
}

/** "4 min 10 s", "42 s": a time left, rounded up to the second. */
export function formatTimeLeft(ms) {
  const seconds = Math.max(0, Math.ceil(ms / 1000));
  if (seconds < 60) return `${seconds} s`;
  const minutes = Math.floor(seconds / 60);
  if (minutes < 60) return `${minutes} min ${seconds % 60} s`;
  return `${Math.floor(minutes / 60)} h ${minutes % 60} min`;
}

/** "at 14:05" today, else "on 1 Dec, 00:00", in the reader's locale and time zone. */
export function formatWhen(at, now = Date.now()) {
  const date = new Date(at);
  const sameDay = new Date(now).toDateString() === date.toDateString();
  return sameDay
    ? `at ${date.toLocaleTimeString(undefined, { hour: '2-digit', minute: '2-digit' })}`
    : `on ${date.toLocaleString(undefined, { day: 'numeric', month: 'short', hour: '2-digit', minute: '2-digit' })}`;
}

/** What a context cut (reply.js `contextCut`) means to a reader, in one sentence. */
export function contextCutText({ droppedMessages, summarized }) {
  const messages = droppedMessages === 1 ? 'the message above' : `the ${formatCount(droppedMessages)} messages above`;
  return summarized
    ? `Earlier messages are no longer seen by the model: instead of ${messages}, it sees a summary of them.`
    : `Earlier messages are no longer seen by the model: ${messages} no longer fit its context window.`;
}

/**
 * The divider above the oldest message the model still sees, with the summary it sees instead of
 * the ones above (plain text, folded) when that is known.
 */
export function contextCutView(cut) {
  const text = contextCutText(cut);
  const view = el(
    'div',
    { className: 'context-cut' },
    // A separator's content is presentational: its name says it all to a screen reader.
    el('div', { className: 'context-cut-line', textContent: text, attrs: { role: 'separator', 'aria-label': text } }),
  );
  if (cut.summary) {
    view.append(
      el(
        'details',
        { className: 'context-cut-summary' },
        el('summary', { textContent: 'The summary the model sees' }),
        el('p', { className: 'context-cut-summary-text', textContent: cut.summary }),
      ),
    );
  }
  return view;
}

/** A run of the reply's text, rendered as Markdown; a streaming one renders only its open end. */
class TextBlock {
  constructor(key) {
    this.key = key;
    this.text = null;
    this.el = el('div', { className: 'content markdown' });
    this.markdown = new MarkdownStream(this.el);
  }

  update(block) {
    if (block.text === this.text) return;
    this.text = block.text;
    this.markdown.render(block.text);
  }
}

/**
 * A message of the conversation. The user's is plain text. The assistant's carries reasoning,
 * its reply as blocks (text, tool calls, plans: see reply.js) and a status line; `blockView`
 * makes the view of a block that is not text (`{key, el, update(block), setStreaming?}`).
 */
export class MessageView {
  constructor(role, { blockView = null } = {}) {
    this.role = role;
    this.blockView = blockView;
    this.reasoning = '';
    this.reasoningText = el('div', { className: 'reasoning-text' });
    this.reasoningSummary = el('summary', { textContent: 'Reasoning' });
    this.reasoningBox = el(
      'details',
      { className: 'reasoning', hidden: true },
      this.reasoningSummary,
      this.reasoningText,
    );
    this.blocks = []; // the views of the reply's blocks, in order
    this.body = el('div', { className: role === 'user' ? 'content plain' : 'reply' });
    this.actions = el('div', { className: 'reply-actions' }); // buttons about the whole reply
    this.meta = el('p', { className: 'meta', hidden: true });
    this.status = el('p', { className: 'status', hidden: true });
    this.el = el(
      'article',
      { className: `message ${role}` },
      el('p', { className: 'role', textContent: role === 'user' ? 'You' : 'parley' }),
      this.reasoningBox,
      this.body,
      this.actions,
      this.status,
      this.meta,
    );
  }

  /** Show the user's text, as plain text. */
  render(content) {
    this.body.textContent = content;
  }

  /** Show the reply's parts so far; blocks already shown are updated, not rebuilt. */
  renderParts(parts, reasoning = '') {
    const blocks = replyBlocks(parts);
    let kept = 0;
    while (kept < blocks.length && kept < this.blocks.length && this.blocks[kept].key === blocks[kept].key) kept++;
    for (const stale of this.blocks.splice(kept)) stale.el.remove();
    if (this.blocks.length === 0) this.body.replaceChildren(); // "No reply." goes once a block comes
    blocks.forEach((block, index) => {
      if (index >= kept) {
        const view = block.kind === 'text' ? new TextBlock(block.key) : this.blockView(block);
        this.blocks.push(view);
        this.body.append(view.el);
      }
      this.blocks[index].update(block);
    });
    if (reasoning !== this.reasoning) {
      this.reasoning = reasoning;
      this.reasoningText.textContent = reasoning; // reasoning is shown as plain text, dimmed
      this.reasoningBox.hidden = !reasoning;
      this.reasoningSummary.textContent = this.el.classList.contains('streaming') ? 'Reasoning…' : 'Reasoning';
    }
  }

  /** A reply that ended without text, tool calls or reasoning. */
  showEmpty() {
    if (this.blocks.length === 0) this.body.replaceChildren(el('p', { className: 'hint', textContent: 'No reply.' }));
  }

  setStreaming(streaming) {
    this.el.classList.toggle('streaming', streaming);
    // Screen readers announce the reply once it is complete, not once per token.
    this.el.setAttribute('aria-busy', String(streaming));
    this.reasoningSummary.textContent = streaming && this.reasoning ? 'Reasoning…' : 'Reasoning';
    for (const block of this.blocks) block.setStreaming?.(streaming);
  }

  setMeta(text) {
    this.meta.textContent = text || '';
    this.meta.hidden = !text;
  }

  setStatus(text, kind = 'info') {
    this.status.textContent = text || '';
    this.status.hidden = !text;
    this.status.className = `status ${kind}`;
  }
}

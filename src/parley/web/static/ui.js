// DOM building and display formatting shared by the page's modules.
//
// Everything here creates nodes with createElement and text nodes; no function takes markup.

import { MarkdownStream } from './markdown.js';

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
  return `Failed (${reason})`;
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

/** "at 14:05" today, else "on 1 Dec, 00:00", in the reader's locale and time zone. */
export function formatWhen(at, now = Date.now()) {
  const date = new Date(at);
  const sameDay = new Date(now).toDateString() === date.toDateString();
  return sameDay
    ? `at ${date.toLocaleTimeString(undefined, { hour: '2-digit', minute: '2-digit' })}`
    : `on ${date.toLocaleString(undefined, { day: 'numeric', month: 'short', hour: '2-digit', minute: '2-digit' })}`;
}

/** A message of the conversation; the assistant's carries reasoning and a status line. */
export class MessageView {
  constructor(role) {
    this.role = role;
    this.content = '';
    this.reasoning = '';
    this.reasoningText = el('div', { className: 'reasoning-text' });
    this.reasoningSummary = el('summary', { textContent: 'Reasoning' });
    this.reasoningBox = el(
      'details',
      { className: 'reasoning', hidden: true },
      this.reasoningSummary,
      this.reasoningText,
    );
    this.body = el('div', { className: role === 'user' ? 'content plain' : 'content markdown' });
    // A streaming reply grows: its finished blocks are rendered once, not again on every frame.
    this.markdown = role === 'user' ? null : new MarkdownStream(this.body);
    this.meta = el('p', { className: 'meta', hidden: true });
    this.status = el('p', { className: 'status', hidden: true });
    this.el = el(
      'article',
      { className: `message ${role}` },
      el('p', { className: 'role', textContent: role === 'user' ? 'You' : 'parley' }),
      this.reasoningBox,
      this.body,
      this.status,
      this.meta,
    );
  }

  /** Show the whole text so far (Markdown for the assistant, plain text for the user). */
  render(content, reasoning = '') {
    if (content !== this.content || !this.body.hasChildNodes()) {
      this.content = content;
      if (this.role === 'user') this.body.textContent = content;
      else this.markdown.render(content);
    }
    if (reasoning !== this.reasoning) {
      this.reasoning = reasoning;
      this.reasoningText.textContent = reasoning; // reasoning is shown as plain text, dimmed
      this.reasoningBox.hidden = !reasoning;
      this.reasoningSummary.textContent = this.el.classList.contains('streaming') ? 'Reasoning…' : 'Reasoning';
    }
  }

  setStreaming(streaming) {
    this.el.classList.toggle('streaming', streaming);
    // Screen readers announce the reply once it is complete, not once per token.
    this.el.setAttribute('aria-busy', String(streaming));
    this.reasoningSummary.textContent = streaming && this.reasoning ? 'Reasoning…' : 'Reasoning';
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

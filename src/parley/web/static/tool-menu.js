// Forcing a tool: `/tool <name> <text>` in the message box has the model call that tool now, with
// the text as the message (a small local model calls tools only when told to). The tools menu
// lists the chat's tools and writes the command's start into the box.

import { ApiError } from './api.js';
import { el } from './ui.js';

/** `{query, content}` of a `/tool` command, or null when the text is an ordinary message. */
export function parseToolCommand(text) {
  const match = /^\s*\/tool(?:\s+(\S+))?(?:\s+([\s\S]*))?$/i.exec(text);
  if (!match) return null;
  return { query: match[1] || '', content: (match[2] || '').trim() };
}

/** What a tool answers to: its exposed name, the part after `<server>__`, its title; lowercase. */
function namesOf(tool) {
  const names = [tool.name, tool.title];
  const cut = tool.name.indexOf('__');
  if (cut !== -1) names.push(tool.name.slice(cut + 2));
  return names.filter(Boolean).map((name) => name.toLowerCase());
}

/**
 * The tools `query` names, case-insensitively: those it names exactly, else those it begins.
 * @returns {object[]} one tool when the name is clear
 */
export function matchTools(tools, query) {
  const wanted = query.toLowerCase();
  const exact = tools.filter((tool) => namesOf(tool).includes(wanted));
  if (exact.length > 0) return exact;
  return tools.filter((tool) => namesOf(tool).some((name) => name.startsWith(wanted)));
}

/**
 * The tool a command names and the message to send with it; an ApiError the page shows otherwise.
 * A command without text sends the tool's title, as the message must not be empty.
 */
export function resolveToolCommand(tools, { query, content }) {
  if (!query) {
    const example = 'as in “/tool calculator 2+3*4”, or pick one from Tools';
    throw new ApiError(0, 'tool_not_named', `Name a tool after /tool, ${example}.`);
  }
  const found = matchTools(tools, query);
  if (found.length === 1) return { tool: found[0], content: content || found[0].title || found[0].name };
  if (found.length === 0) {
    const known = tools.length ? ` Its tools: ${tools.map(label).join(', ')}.` : ' This chat has no tools.';
    throw new ApiError(0, 'unknown_tool', `No tool of this chat is called “${query}”.${known}`);
  }
  const choices = found.map(label).join(' or ');
  throw new ApiError(0, 'ambiguous_tool', `“${query}” could be ${choices}. Type more of the name.`);
}

const label = (tool) => (tool.title && tool.title !== tool.name ? `${tool.title} (${tool.name})` : tool.name);

/** The tools menu: a disclosure button and a panel of the chat's tools, each writing `/tool <name> `. */
export class ToolMenu {
  /**
   * @param {object} parts
   * @param {HTMLButtonElement} parts.button
   * @param {HTMLElement} parts.panel
   * @param {HTMLUListElement} parts.list
   * @param {HTMLElement} parts.status
   * @param {HTMLTextAreaElement} parts.input the message box
   * @param {() => Promise<object[]|null>} parts.loadTools the chat's tools, fresh (null: not now)
   * @param {(err: Error) => void} parts.onError
   */
  constructor({ button, panel, list, status, input, loadTools, onError }) {
    Object.assign(this, { button, panel, list, status, input, loadTools, onError });
    this.seq = 0;
    button.addEventListener('click', () => (this.isOpen ? this.close() : this.open()));
    panel.addEventListener('keydown', (event) => this.#key(event));
    document.addEventListener('pointerdown', (event) => {
      if (this.isOpen && !panel.contains(event.target) && !button.contains(event.target)) this.close(false);
    });
  }

  get isOpen() {
    return !this.panel.hidden;
  }

  async open() {
    const seq = ++this.seq;
    this.panel.hidden = false;
    this.button.setAttribute('aria-expanded', 'true');
    this.list.replaceChildren();
    this.status.textContent = 'Loading the tools…';
    let tools;
    try {
      tools = await this.loadTools();
    } catch (err) {
      if (seq !== this.seq) return;
      this.close();
      this.onError(err);
      return;
    }
    if (seq !== this.seq || !this.isOpen) return;
    if (!tools) {
      this.close();
      return;
    }
    this.status.textContent = tools.length
      ? 'Pick a tool to have the model call it with your message.'
      : 'This chat has no tools.';
    this.list.replaceChildren(...tools.map((tool) => this.#item(tool)));
    const first = this.list.querySelector('button');
    (first || this.panel).focus();
  }

  close(returnFocus = true) {
    this.seq++;
    this.panel.hidden = true;
    this.button.setAttribute('aria-expanded', 'false');
    if (returnFocus) this.button.focus();
  }

  #item(tool) {
    const badges = [];
    if (tool.alwaysAllowed) badges.push(el('span', { className: 'badge allowed', textContent: 'Always allowed' }));
    else if (tool.asks) badges.push(el('span', { className: 'badge asks', textContent: 'Asks first' }));
    const button = el(
      'button',
      { type: 'button', className: 'tool-option' },
      el(
        'span',
        { className: 'tool-option-head' },
        el('span', { className: 'tool-title', textContent: tool.title || tool.name }),
        ' ',
        el('code', { className: 'tool-name', textContent: tool.name }),
        ' ',
        ...badges,
      ),
      el('span', { className: 'tool-option-description', textContent: tool.description || '' }),
    );
    button.addEventListener('click', () => this.#choose(tool));
    return el('li', {}, button);
  }

  /** Start the message with `/tool <name> `, keeping what was typed after any earlier command. */
  #choose(tool) {
    const typed = this.input.value;
    const command = parseToolCommand(typed);
    const rest = command ? command.content : typed.trim();
    this.close(false);
    this.input.value = `/tool ${tool.name} ${rest}`;
    this.input.focus();
    this.input.setSelectionRange(this.input.value.length, this.input.value.length);
  }

  #key(event) {
    if (event.key === 'Escape') {
      event.preventDefault(); // the page's own Escape (Stop) is not for this
      this.close();
      return;
    }
    const options = [...this.list.querySelectorAll('button')];
    const at = options.indexOf(document.activeElement);
    const moves = { ArrowDown: at + 1, ArrowUp: at - 1, Home: 0, End: options.length - 1 };
    if (!(event.key in moves) || options.length === 0) return;
    event.preventDefault();
    options[(moves[event.key] + options.length) % options.length].focus();
  }
}

// The few DOM calls the page's Markdown renderer makes, for running it in Node.
//
// Enough for markdown.js and markdown-inline.js: createElement, createDocumentFragment, append
// (strings become text nodes, a fragment gives up its children), remove, lastChild and
// childNodes. `serializeChildren` writes a tree out as HTML-like text, so two renders can be
// compared.
// The discarding document keeps nothing: timing with it measures the renderer's own work, not
// the garbage collector walking a tree of a few hundred thousand kept nodes.

class FakeNode {
  constructor() {
    this.parentNode = null;
  }

  remove() {
    if (!this.parentNode) return;
    const siblings = this.parentNode.childNodes;
    siblings.splice(siblings.lastIndexOf(this), 1);
    this.parentNode = null;
  }
}

class FakeText extends FakeNode {
  constructor(data) {
    super();
    this.data = data;
  }
}

class FakeParent extends FakeNode {
  constructor() {
    super();
    this.childNodes = [];
  }

  append(...items) {
    for (const item of items) {
      if (item instanceof FakeFragment) {
        const children = item.childNodes;
        item.childNodes = [];
        for (const child of children) this.#adopt(child);
      } else {
        this.#adopt(typeof item === 'string' ? new FakeText(item) : item);
      }
    }
  }

  #adopt(child) {
    if (child.parentNode) child.remove();
    child.parentNode = this;
    this.childNodes.push(child);
  }

  get lastChild() {
    return this.childNodes.at(-1) ?? null;
  }

  hasChildNodes() {
    return this.childNodes.length > 0;
  }
}

class FakeFragment extends FakeParent {}

class FakeElement extends FakeParent {
  #dataset = null;

  constructor(tag) {
    super();
    this.tagName = tag.toUpperCase();
  }

  get dataset() {
    this.#dataset ??= {};
    return this.#dataset;
  }
}

const INTERNAL = new Set(['childNodes', 'parentNode', 'tagName']);
const escape = (text) => String(text).replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');

/** A node's children as HTML-like text: tags, the properties and data attributes set on them, and text. */
export function serializeChildren(node) {
  return node.childNodes.map(serialize).join('');
}

function serialize(node) {
  if (node instanceof FakeText) return escape(node.data);
  const inner = serializeChildren(node);
  if (!(node instanceof FakeElement)) return inner;
  const tag = node.tagName.toLowerCase();
  const properties = Object.entries(node).filter(([name]) => !INTERNAL.has(name));
  const data = Object.entries(node.dataset).map(([name, value]) => [`data-${name}`, value]);
  const attributes = [...properties, ...data].map(([name, value]) => ` ${name}="${escape(value)}"`).join('');
  return `<${tag}${attributes}>${inner}</${tag}>`;
}

export function installFakeDom() {
  globalThis.document = {
    createElement: (tag) => new FakeElement(tag),
    createDocumentFragment: () => new FakeFragment(),
  };
}

class DiscardingNode {
  dataset = {};

  append() {}
}

export function installDiscardingDom() {
  globalThis.document = {
    createElement: () => new DiscardingNode(),
    createDocumentFragment: () => new DiscardingNode(),
  };
}

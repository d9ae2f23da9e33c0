// Inline Markdown (code spans, emphasis, strong, strikethrough, links, autolinks and bare
// URLs), built as DOM nodes, and the URL check every link goes through. markdown.js uses it for
// the text of paragraphs, headings, list items and table cells.
//
// The same rules as there apply: elements only from a fixed list, text only in text nodes,
// links only to http:, https: and mailto: URLs, images never loaded.
//
// Imports: nothing.

const SAFE_PROTOCOLS = new Set(['http:', 'https:', 'mailto:']);
const PUNCTUATION = '!"#$%&\'()*+,-./:;<=>?@[\\]^_`{|}~';
export const MAX_DEPTH = 12; // nesting deeper than this renders as text: bounded work on any input
const MAX_LINK_TEXT = 2000;

/**
 * The URL to use for a link, or null when it must not become a link.
 * Only absolute http, https and mailto URLs pass; the URL parser normalises the usual tricks
 * (case, embedded tabs and newlines, leading control characters) before the check.
 */
export function safeHref(raw) {
  if (typeof raw !== 'string') return null;
  const candidate = raw.trim();
  if (!candidate) return null;
  let url;
  try {
    url = new URL(candidate);
  } catch {
    return null; // relative URLs too: a reply has no business linking into this app
  }
  return SAFE_PROTOCOLS.has(url.protocol) ? url.href : null;
}

/** An element with these children (strings become text nodes). */
export function el(tag, ...children) {
  const node = document.createElement(tag);
  for (const child of children) node.append(child); // strings become text nodes
  return node;
}

function isWordChar(ch) {
  return ch !== undefined && /[\p{L}\p{N}]/u.test(ch);
}

function isSpace(ch) {
  return ch === undefined || /\s/.test(ch);
}

/** Length of the run of `ch` starting at `at`. */
export function runLength(text, at, ch) {
  let n = 0;
  while (text[at + n] === ch) n++;
  return n;
}

/** End index (exclusive) of a code span starting at `at`, with its content; or null. */
function codeSpan(text, at) {
  const open = runLength(text, at, '`');
  let k = at + open;
  while (k < text.length) {
    const next = text.indexOf('`', k);
    if (next === -1) return null;
    const run = runLength(text, next, '`');
    if (run === open) {
      let content = text.slice(at + open, next).replace(/\n/g, ' ');
      if (content.length > 2 && content.startsWith(' ') && content.endsWith(' ') && content.trim()) {
        content = content.slice(1, -1);
      }
      return { end: next + run, content };
    }
    k = next + run;
  }
  return null;
}

/** Index of the `]` matching the `[` at `at`, or -1. */
function closingBracket(text, at) {
  let depth = 0;
  const limit = Math.min(text.length, at + MAX_LINK_TEXT);
  for (let k = at; k < limit; k++) {
    const ch = text[k];
    if (ch === '\\') {
      k++;
    } else if (ch === '`') {
      const span = codeSpan(text, k);
      if (span) k = span.end - 1;
    } else if (ch === '[') {
      depth++;
    } else if (ch === ']') {
      depth--;
      if (depth === 0) return k;
    }
  }
  return -1;
}

/** Parse `(destination "title")` at `at`; returns {href, end} or null. */
function linkTarget(text, at) {
  if (text[at] !== '(') return null;
  let k = at + 1;
  while (text[k] === ' ' || text[k] === '\t') k++;
  let href = '';
  if (text[k] === '<') {
    const close = text.indexOf('>', k + 1);
    if (close === -1 || text.slice(k + 1, close).includes('\n')) return null;
    href = text.slice(k + 1, close);
    k = close + 1;
  } else {
    let parens = 0;
    const start = k;
    for (; k < text.length; k++) {
      const ch = text[k];
      if (ch === '\\' && k + 1 < text.length) {
        k++;
      } else if (ch === '(') {
        parens++;
      } else if (ch === ')') {
        if (parens === 0) break;
        parens--;
      } else if (/\s/.test(ch)) {
        break;
      }
    }
    href = text.slice(start, k).replace(/\\([!-/:-@[-`{-~])/g, '$1');
  }
  while (text[k] === ' ' || text[k] === '\t' || text[k] === '\n') k++;
  const quote = text[k];
  if (quote === '"' || quote === "'") {
    const close = text.indexOf(quote, k + 1);
    if (close === -1) return null;
    k = close + 1;
    while (text[k] === ' ' || text[k] === '\t') k++;
  }
  if (text[k] !== ')') return null;
  return { href, end: k + 1 };
}

const TRAILING_URL_PUNCTUATION = /[.,:;!?'"*_~]+$/;

/** A bare http(s) URL starting at `at`, trimmed of trailing punctuation; or null. */
function bareUrl(text, at) {
  if (isWordChar(text[at - 1])) return null;
  const match = /^https?:\/\/[^\s<>]+/.exec(text.slice(at, at + 2048));
  if (!match) return null;
  let url = match[0].replace(TRAILING_URL_PUNCTUATION, '');
  // A closing parenthesis belongs to the URL only when it has an opening one, as in Wikipedia links.
  while (url.endsWith(')') && (url.match(/\(/g) || []).length < (url.match(/\)/g) || []).length) {
    url = url.slice(0, -1).replace(TRAILING_URL_PUNCTUATION, '');
  }
  return url.length > 'https://'.length ? url : null;
}

function makeLink(href, title) {
  const a = el('a');
  a.href = href;
  a.rel = 'noopener noreferrer nofollow';
  a.target = '_blank';
  if (title) a.title = title;
  return a;
}

/** Find the closing delimiter for emphasis opened at `from`; returns its index or -1. */
function closingDelimiter(text, from, ch, size) {
  let k = from;
  while (k < text.length) {
    const next = text.indexOf(ch, k);
    if (next === -1) return -1;
    const run = runLength(text, next, ch);
    // A closer is not preceded by whitespace; `_` additionally not followed by a word character.
    const closes =
      run >= size &&
      !isSpace(text[next - 1]) &&
      !(ch === '_' && isWordChar(text[next + run])) &&
      (size === 1 ? run === 1 || run === 3 : true);
    if (closes) return next + run - size;
    k = next + run;
  }
  return -1;
}

const EMPHASIS_TAGS = { 1: 'em', 2: 'strong' };

/** Append the inline content of `text` to `parent`. */
export function inline(text, parent, depth, inLink = false) {
  if (depth > MAX_DEPTH) {
    parent.append(text);
    return;
  }
  let buffer = '';
  const flush = () => {
    if (buffer) parent.append(buffer); // a string argument becomes a text node
    buffer = '';
  };
  const failed = new Set(); // delimiters with no closer further on: skip re-searching (linear time)
  const lastBracket = text.lastIndexOf(']');
  let i = 0;
  while (i < text.length) {
    const ch = text[i];

    if (ch === '\\' && i + 1 < text.length) {
      if (text[i + 1] === '\n') {
        flush();
        parent.append(el('br'));
        i += 2;
        continue;
      }
      if (PUNCTUATION.includes(text[i + 1])) {
        buffer += text[i + 1];
        i += 2;
        continue;
      }
    }

    if (ch === '\n') {
      flush();
      parent.append(el('br'));
      i++;
      continue;
    }

    if (ch === '`') {
      const span = codeSpan(text, i);
      if (span) {
        flush();
        parent.append(el('code', span.content));
        i = span.end;
      } else {
        const run = runLength(text, i, '`');
        buffer += text.slice(i, i + run);
        i += run;
      }
      continue;
    }

    if ((ch === '[' || (ch === '!' && text[i + 1] === '[')) && !inLink) {
      const open = ch === '!' ? i + 1 : i;
      const close = open < lastBracket ? closingBracket(text, open) : -1;
      const target = close === -1 ? null : linkTarget(text, close + 1);
      if (target) {
        const label = text.slice(open + 1, close);
        const href = safeHref(target.href);
        if (href) {
          flush();
          const a = makeLink(href);
          if (ch === '!') {
            // An image is never fetched: show a link to it with its description.
            a.append(label.trim() ? `${label} (image)` : 'image');
            a.className = 'image-link';
          } else {
            inline(label, a, depth + 1, true);
          }
          parent.append(a);
        } else {
          // Unsafe or relative target: the whole construct stays visible as plain text.
          buffer += text.slice(i, target.end);
        }
        i = target.end;
        continue;
      }
    }

    if (ch === '<' && !inLink) {
      const match = /^<([a-zA-Z][a-zA-Z0-9+.-]{1,31}:[^\s<>]*)>/.exec(text.slice(i, i + 2048));
      const href = match && safeHref(match[1]);
      if (href) {
        flush();
        const a = makeLink(href);
        a.append(match[1].replace(/^mailto:/i, ''));
        parent.append(a);
        i += match[0].length;
        continue;
      }
    }

    if (ch === 'h' && !inLink) {
      const url = bareUrl(text, i);
      const href = url && safeHref(url);
      if (href) {
        flush();
        const a = makeLink(href);
        a.append(url);
        parent.append(a);
        i += url.length;
        continue;
      }
    }

    if (ch === '*' || ch === '_' || ch === '~') {
      const run = runLength(text, i, ch);
      const size = ch === '~' ? 2 : Math.min(run, 2);
      const key = `${ch}${size}`;
      const opens =
        (ch !== '~' || run === 2) &&
        !isSpace(text[i + run]) &&
        !(ch === '_' && isWordChar(text[i - 1])) &&
        !failed.has(key);
      if (opens) {
        const close = closingDelimiter(text, i + run, ch, size);
        if (close !== -1 && close > i + size) {
          flush();
          const node = el(ch === '~' ? 'del' : EMPHASIS_TAGS[size]);
          inline(text.slice(i + size, close), node, depth + 1, inLink);
          parent.append(node);
          i = close + size;
          continue;
        }
        failed.add(key);
      }
      buffer += text.slice(i, i + run);
      i += run;
      continue;
    }

    buffer += ch;
    i++;
  }
  flush();
}

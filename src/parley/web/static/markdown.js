// A small Markdown renderer that builds DOM nodes and never parses HTML.
//
// Model output is untrusted: a reply can contain anything a prompt injection put there. So
// this renderer only ever creates elements from a fixed list with document.createElement and
// puts text in with text nodes; raw HTML in a reply stays visible text, and links are kept
// only for http:, https: and mailto: URLs. Images are never loaded (a Markdown image would
// let a reply send data to any server just by being displayed); they become plain links.
//
// Supported: paragraphs (single newlines are line breaks, as in chat apps), ATX headings,
// fenced code blocks, bullet and ordered lists (nested by indentation), block quotes,
// thematic breaks, pipe tables, and inline code, emphasis, strong, strikethrough, links,
// autolinks and bare URLs. Unterminated constructs (common mid-stream) render as text.

const SAFE_PROTOCOLS = new Set(['http:', 'https:', 'mailto:']);
const PUNCTUATION = '!"#$%&\'()*+,-./:;<=>?@[\\]^_`{|}~';
const MAX_DEPTH = 12; // nesting deeper than this renders as text: bounded work on any input
const MAX_LINK_TEXT = 2000;

const FENCE = /^ {0,3}(`{3,}|~{3,})[ \t]*([^\s`]*)[^`]*$/;
const HEADING = /^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$/;
const RULE = /^ {0,3}(?:(?:-[ \t]*){3,}|(?:\*[ \t]*){3,}|(?:_[ \t]*){3,})$/;
const QUOTE = /^ {0,3}> ?/;
const ITEM = /^( {0,3})([-*+]|\d{1,9}[.)])(?:[ \t]+|$)/;
const TABLE_DELIMITER = /^ {0,3}\|?[ \t]*:?-+:?[ \t]*(?:\|[ \t]*:?-+:?[ \t]*)*\|?[ \t]*$/;

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

/** Render Markdown source to a DocumentFragment. */
export function renderMarkdown(source) {
  const fragment = document.createDocumentFragment();
  const lines = String(source ?? '')
    .replace(/\r\n?/g, '\n')
    .split('\n')
    .map(expandLeadingTabs);
  renderBlocks(lines, fragment, 0, false);
  return fragment;
}

function el(tag, ...children) {
  const node = document.createElement(tag);
  for (const child of children) node.append(child); // strings become text nodes
  return node;
}

function expandLeadingTabs(line) {
  const match = /^[ \t]+/.exec(line);
  if (!match || !match[0].includes('\t')) return line;
  let width = 0;
  for (const ch of match[0]) width = ch === '\t' ? width + 4 - (width % 4) : width + 1;
  return ' '.repeat(width) + line.slice(match[0].length);
}

const isBlank = (line) => line.trim() === '';
const indentOf = (line) => line.length - line.trimStart().length;

function itemInfo(match) {
  const marker = match[2];
  const ordered = /\d/.test(marker);
  return { ordered, kind: ordered ? marker.slice(-1) : marker, start: ordered ? parseInt(marker, 10) : 1 };
}

/** Whether `line` starts a block that ends a paragraph. */
function interruptsParagraph(line) {
  if (FENCE.test(line) || HEADING.test(line) || RULE.test(line) || QUOTE.test(line)) return true;
  const item = ITEM.exec(line);
  if (!item || isBlank(line.slice(item[0].length))) return false;
  // As in CommonMark, only "1." may interrupt a paragraph, so "2024. was a year" stays text.
  const info = itemInfo(item);
  return !info.ordered || info.start === 1;
}

function renderBlocks(lines, parent, depth, tight) {
  if (depth > MAX_DEPTH) {
    parent.append(lines.join('\n'));
    return;
  }
  let i = 0;
  let paragraphs = 0;
  while (i < lines.length) {
    const line = lines[i];
    if (isBlank(line)) {
      i++;
      continue;
    }
    let match;
    if ((match = FENCE.exec(line))) {
      i = codeBlock(lines, i, match, parent);
    } else if ((match = HEADING.exec(line))) {
      const level = Math.min(match[1].length + 2, 6); // the page owns h1 and h2
      const heading = el(`h${level}`);
      inline(match[2] || '', heading, depth);
      parent.append(heading);
      i++;
    } else if (RULE.test(line)) {
      parent.append(el('hr'));
      i++;
    } else if (QUOTE.test(line)) {
      i = blockQuote(lines, i, parent, depth);
    } else if ((match = ITEM.exec(line))) {
      i = list(lines, i, parent, depth);
    } else if (startsTable(lines, i)) {
      i = table(lines, i, parent, depth);
    } else {
      const start = i;
      i++;
      while (i < lines.length && !isBlank(lines[i]) && !interruptsParagraph(lines[i])) i++;
      const text = lines.slice(start, i).map((l) => l.trim()).join('\n');
      if (tight) {
        // Tight list items hold their text directly; a second paragraph still needs a break.
        if (paragraphs > 0) parent.append(el('br'));
        inline(text, parent, depth);
      } else {
        const p = el('p');
        inline(text, p, depth);
        parent.append(p);
      }
      paragraphs++;
    }
  }
}

function codeBlock(lines, i, match, parent) {
  const fence = match[1];
  const language = match[2];
  const indent = indentOf(lines[i]);
  const body = [];
  i++;
  while (i < lines.length) {
    const line = lines[i];
    const close = /^ {0,3}(`{3,}|~{3,})[ \t]*$/.exec(line);
    if (close && close[1][0] === fence[0] && close[1].length >= fence.length) {
      i++;
      break;
    }
    // Content indented like the opening fence loses that indentation, as in CommonMark.
    body.push(line.slice(Math.min(indent, indentOf(line))));
    i++;
  }
  const pre = el('pre');
  if (language) {
    const label = el('span', language);
    label.className = 'code-language';
    pre.dataset.language = language; // an attribute value: never interpreted as markup
    pre.append(label);
  }
  pre.append(el('code', body.join('\n')));
  parent.append(pre);
  return i;
}

function blockQuote(lines, i, parent, depth) {
  const body = [];
  while (i < lines.length) {
    const line = lines[i];
    const match = QUOTE.exec(line);
    if (match) {
      body.push(line.slice(match[0].length));
    } else if (!isBlank(line) && body.length > 0 && !isBlank(body[body.length - 1]) && !interruptsParagraph(line)) {
      body.push(line); // lazy continuation of the quoted paragraph
    } else {
      break;
    }
    i++;
  }
  const quote = el('blockquote');
  renderBlocks(body, quote, depth + 1, false);
  parent.append(quote);
  return i;
}

function list(lines, i, parent, depth) {
  const first = itemInfo(ITEM.exec(lines[i]));
  const node = el(first.ordered ? 'ol' : 'ul');
  if (first.ordered && first.start !== 1) node.start = first.start;
  while (i < lines.length) {
    const match = ITEM.exec(lines[i]);
    if (!match) break;
    const info = itemInfo(match);
    if (info.ordered !== first.ordered || info.kind !== first.kind) break;
    const rest = lines[i].slice(match[0].length);
    // Continuation lines must be indented to the item's text (at least past the marker).
    const contentIndent = isBlank(rest) ? match[1].length + match[2].length + 1 : match[0].length;
    const body = [rest];
    let tight = true;
    i++;
    while (i < lines.length) {
      const line = lines[i];
      if (isBlank(line)) {
        let next = i;
        while (next < lines.length && isBlank(lines[next])) next++;
        if (next < lines.length && indentOf(lines[next]) >= contentIndent) {
          tight = false;
          while (i < next) {
            body.push('');
            i++;
          }
          continue;
        }
        break;
      }
      if (indentOf(line) >= contentIndent) {
        body.push(line.slice(contentIndent));
      } else if (!isBlank(body[body.length - 1]) && !ITEM.test(line) && !interruptsParagraph(line)) {
        body.push(line.trim()); // lazy continuation of the item's paragraph
      } else {
        break;
      }
      i++;
    }
    const item = el('li');
    renderBlocks(body, item, depth + 1, tight);
    node.append(item);
    // Blank lines between items of the same list do not end the list.
    let next = i;
    while (next < lines.length && isBlank(lines[next])) next++;
    if (next > i && next < lines.length) {
      const following = ITEM.exec(lines[next]);
      if (!following || indentOf(lines[next]) > 3) break;
      const followingInfo = itemInfo(following);
      if (followingInfo.ordered !== first.ordered || followingInfo.kind !== first.kind) break;
      i = next;
    }
  }
  parent.append(node);
  return i;
}

/** A pipe table: a header row, then a delimiter row with as many cells (`| --- | :-: |`). */
function startsTable(lines, i) {
  const delimiter = lines[i + 1];
  if (delimiter === undefined || !lines[i].includes('|') || !delimiter.includes('|')) return false;
  return TABLE_DELIMITER.test(delimiter) && splitRow(lines[i]).length === splitRow(delimiter).length;
}

function splitRow(line) {
  let row = line.trim();
  if (row.startsWith('|')) row = row.slice(1);
  if (row.endsWith('|') && !row.endsWith('\\|')) row = row.slice(0, -1);
  const cells = [];
  let cell = '';
  for (let k = 0; k < row.length; k++) {
    if (row[k] === '\\' && row[k + 1] === '|') {
      cell += '|';
      k++;
    } else if (row[k] === '|') {
      cells.push(cell.trim());
      cell = '';
    } else {
      cell += row[k];
    }
  }
  cells.push(cell.trim());
  return cells;
}

function table(lines, i, parent, depth) {
  const header = splitRow(lines[i]);
  const aligns = splitRow(lines[i + 1]).map((spec) => {
    const left = spec.startsWith(':');
    const right = spec.endsWith(':');
    return left && right ? 'center' : right ? 'right' : left ? 'left' : '';
  });
  const row = (cells, tag) => {
    const tr = el('tr');
    header.forEach((_, column) => {
      const cell = el(tag);
      if (aligns[column]) cell.className = `align-${aligns[column]}`; // classes: no inline style under CSP
      inline(cells[column] ?? '', cell, depth + 1);
      tr.append(cell);
    });
    return tr;
  };
  const thead = el('thead', row(header, 'th'));
  const tbody = el('tbody');
  i += 2;
  while (i < lines.length && !isBlank(lines[i]) && lines[i].includes('|')) {
    tbody.append(row(splitRow(lines[i]), 'td'));
    i++;
  }
  // Wide tables scroll inside their own box instead of widening the page on a phone.
  const wrapper = el('div', el('table', thead, tbody));
  wrapper.className = 'table-scroll';
  parent.append(wrapper);
  return i;
}

// ---- inline ---------------------------------------------------------------------------

function isWordChar(ch) {
  return ch !== undefined && /[\p{L}\p{N}]/u.test(ch);
}

function isSpace(ch) {
  return ch === undefined || /\s/.test(ch);
}

/** Length of the run of `ch` starting at `at`. */
function runLength(text, at, ch) {
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
function inline(text, parent, depth, inLink = false) {
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

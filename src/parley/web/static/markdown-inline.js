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
  const url = parseUrl(candidate); // relative URLs fail too: a reply has no business linking into this app
  return url && SAFE_PROTOCOLS.has(url.protocol) ? url.href : null;
}

/** `candidate` parsed as an absolute URL, or null. */
function parseUrl(candidate) {
  // URL.parse answers null where the constructor throws, and a thrown exception costs more than
  // the parsing: a reply holding thousands of URL-like strings that are not URLs adds up.
  if (URL.parse) return URL.parse(candidate);
  try {
    return new URL(candidate);
  } catch {
    return null;
  }
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

const NEWLINE = /\n/g;
const ANGLE_CLOSE = />/g;
const DOUBLE_QUOTE = /"/g;
const SINGLE_QUOTE = /'/g;
const URL_END = /[\s<>]/g;
const URL_TRAILING_PUNCTUATION = '.,:;!?\'"*_~';
const MAX_BARE_URL = 2048;
const UNKNOWN = -2; // in InlineText's tables: not worked out yet

/** The first index of the sorted `list` whose value is at least `value` (list.length if none). */
function lowerBound(list, value) {
  let low = 0;
  let high = list.length;
  while (low < high) {
    const middle = (low + high) >>> 1;
    if (list[middle] < value) low = middle + 1;
    else high = middle;
  }
  return low;
}

/**
 * One inline text with the indexes its searches use, each built in one pass on first use.
 *
 * The parser searches forward from every backtick, `[`, `(` and URL it meets. Searching the
 * text itself would read the same stretch again from each of them (quadratic time on a reply
 * of unclosed brackets or backticks); these answers are binary searches or remembered results.
 */
class InlineText {
  constructor(text) {
    this.text = text;
    this.matches = null; // global pattern → sorted indexes where it matches
    this.backtickRuns = null; // run length → sorted starts of the backtick runs of that length
    this.parenCounts = null; // [opening, closing] parentheses before each index
    this.closingBrackets = null; // index of a `[` → index of its `]`, or -1
    this.destinationEnds = null; // index where a link destination starts → where it ends
    this.linkEnds = null; // index where a link destination ends → where the link ends, or -1
  }

  /** A table with an entry for each index of the text, all UNKNOWN at first. */
  perIndex() {
    return new Int32Array(this.text.length + 1).fill(UNKNOWN);
  }

  /** The first index at or after `from` where the global `pattern` matches, or -1. */
  next(pattern, from) {
    this.matches ??= new Map();
    let found = this.matches.get(pattern);
    if (!found) {
      found = Array.from(this.text.matchAll(pattern), (match) => match.index);
      this.matches.set(pattern, found);
    }
    const at = lowerBound(found, from);
    return at < found.length ? found[at] : -1;
  }

  /** Start of the first run of exactly `length` backticks at or after `from`, or -1. */
  backtickRun(length, from) {
    if (!this.backtickRuns) {
      this.backtickRuns = new Map();
      for (const { index, 0: run } of this.text.matchAll(/`+/g)) {
        if (!this.backtickRuns.has(run.length)) this.backtickRuns.set(run.length, []);
        this.backtickRuns.get(run.length).push(index);
      }
    }
    const starts = this.backtickRuns.get(length) ?? [];
    const at = lowerBound(starts, from);
    return at < starts.length ? starts[at] : -1;
  }

  /** How many `(` and `)` the text has in [start, end). */
  parentheses(start, end) {
    if (!this.parenCounts) {
      const opening = new Int32Array(this.text.length + 1);
      const closing = new Int32Array(this.text.length + 1);
      for (let k = 0; k < this.text.length; k++) {
        opening[k + 1] = opening[k] + (this.text[k] === '(' ? 1 : 0);
        closing[k + 1] = closing[k] + (this.text[k] === ')' ? 1 : 0);
      }
      this.parenCounts = [opening, closing];
    }
    const [opening, closing] = this.parenCounts;
    return [opening[end] - opening[start], closing[end] - closing[start]];
  }
}

/** End index (exclusive) of a code span starting at `at`, or -1. */
function codeSpanEnd(source, at) {
  const open = runLength(source.text, at, '`');
  // The closer is the next run of exactly as many backticks (runs of other lengths are text).
  const close = source.backtickRun(open, at + open);
  return close === -1 ? -1 : close + open;
}

/** End index (exclusive) of a code span starting at `at`, with its content; or null. */
function codeSpan(source, at) {
  const end = codeSpanEnd(source, at);
  if (end === -1) return null;
  const open = runLength(source.text, at, '`');
  let content = source.text.slice(at + open, end - open).replace(/\n/g, ' ');
  if (content.length > 2 && content.startsWith(' ') && content.endsWith(' ') && content.trim()) {
    content = content.slice(1, -1);
  }
  return { end, content };
}

/**
 * Where a scan for `]` goes on after the backtick run at `at`: past the code span it opens; or,
 * when it opens none, past the one opened by the rest of the run from the first later backtick
 * before `limit` that opens one; or past the run.
 */
function afterBackticks(source, at, limit) {
  const runEnd = at + runLength(source.text, at, '`');
  // Each backtick is tried as it comes, but with the run's length known: recounting the rest of
  // a long run from every one of its backticks would take quadratic time.
  for (let k = at; k < Math.min(runEnd, limit); k++) {
    const close = source.backtickRun(runEnd - k, runEnd);
    if (close !== -1) return close + runEnd - k;
  }
  return runEnd;
}

/**
 * `find(source, at, known)` with its answers remembered in the InlineText's per-index table
 * `table` (`known`, which `find` may fill in further): each is worked out once per text, however
 * often it is asked for.
 */
function remembered(table, find) {
  return (source, at) => {
    const known = (source[table] ??= source.perIndex());
    if (known[at] === UNKNOWN) known[at] = find(source, at, known);
    return known[at];
  };
}

/**
 * Index of the `]` matching the `[` at `at`, or -1.
 *
 * Each `[` is scanned once: a nested `[` is settled first, remembered, and skipped as a whole
 * by the brackets around it. A stack stands in for recursion, so deep nesting costs no call stack.
 */
const closingBracket = remembered('closingBrackets', (source, at, known) => {
  const { text } = source;
  const open = [at];
  let k = at + 1;
  while (open.length > 0) {
    const start = open[open.length - 1];
    const limit = Math.min(text.length, start + MAX_LINK_TEXT);
    let close;
    if (k >= limit) {
      close = -1;
    } else if (text[k] === '\\') {
      k += 2;
    } else if (text[k] === '`') {
      k = afterBackticks(source, k, limit);
    } else if (text[k] === ']') {
      close = k;
    } else if (text[k] === '[') {
      const inner = known[k];
      if (inner === UNKNOWN) {
        open.push(k);
        k++;
      } else if (inner === -1) {
        close = -1; // the inner `[` never closes, so neither does this one
      } else {
        k = inner + 1;
      }
    } else {
      k++;
    }
    if (close === undefined) continue;
    known[start] = close;
    open.pop();
    k = start; // the enclosing scan resumes at this `[`, now known
  }
  return known[at];
});

/**
 * Where a link destination starting at `from` ends: at whitespace, at a `)` that closes no `(`
 * of its own, or at the end of the text. Nested parentheses are settled and remembered like
 * brackets in closingBracket, so each is scanned once.
 */
const destinationEnd = remembered('destinationEnds', (source, from, known) => {
  const { text } = source;
  const starts = [from];
  let k = from;
  while (starts.length > 0) {
    const start = starts[starts.length - 1];
    let end;
    const ch = text[k];
    if (k >= text.length || ch === ')' || /\s/.test(ch)) {
      end = k;
    } else if (ch === '\\' && k + 1 < text.length) {
      k += 2;
    } else if (ch === '(') {
      const inner = known[k + 1];
      if (inner === UNKNOWN) {
        starts.push(k + 1);
        k++;
      } else if (text[inner] === ')') {
        k = inner + 1;
      } else {
        end = inner; // whitespace or the end inside the parentheses ends this destination too
      }
    } else {
      k++;
    }
    if (end === undefined) continue;
    known[start] = end;
    starts.pop();
    k = start - 1; // the enclosing scan resumes at the `(`, now known
  }
  return known[from];
});

/** Parse `(destination "title")` at `at`; returns {href, end} or null. */
function linkTarget(source, at) {
  const { text } = source;
  if (text[at] !== '(') return null;
  let k = at + 1;
  while (text[k] === ' ' || text[k] === '\t') k++;
  const angled = text[k] === '<';
  const start = angled ? k + 1 : k;
  let end;
  if (angled) {
    end = source.next(ANGLE_CLOSE, start);
    const newline = source.next(NEWLINE, start);
    if (end === -1 || (newline !== -1 && newline < end)) return null;
  } else {
    end = destinationEnd(source, start);
  }
  const close = linkEnd(source, angled ? end + 1 : end);
  if (close === -1) return null;
  // Only now, for a link that is one, is the destination copied (once per link, not per attempt).
  const href = text.slice(start, end);
  return { href: angled ? href : href.replace(/\\([!-/:-@[-`{-~])/g, '$1'), end: close };
}

/**
 * The index just past the `)` of a link whose destination is followed by `at`, after an
 * optional title in quotes; or -1. Remembered: many destinations can end at the same place,
 * and each would otherwise skip the same run of spaces again.
 */
const linkEnd = remembered('linkEnds', (source, at) => {
  const { text } = source;
  let k = at;
  while (text[k] === ' ' || text[k] === '\t' || text[k] === '\n') k++;
  const quote = text[k];
  if (quote === '"' || quote === "'") {
    const close = source.next(quote === '"' ? DOUBLE_QUOTE : SINGLE_QUOTE, k + 1);
    k = close === -1 ? -1 : close + 1;
    while (k !== -1 && (text[k] === ' ' || text[k] === '\t')) k++;
  }
  return k !== -1 && text[k] === ')' ? k + 1 : -1;
});

/** `end` moved back over any trailing punctuation a sentence puts after a URL. */
function withoutTrailingPunctuation(text, start, end) {
  while (end > start && URL_TRAILING_PUNCTUATION.includes(text[end - 1])) end--;
  return end;
}

/** A bare http(s) URL starting at `at`, trimmed of trailing punctuation; or null. */
function bareUrl(source, at) {
  const { text } = source;
  if (isWordChar(text[at - 1])) return null;
  const scheme = text.startsWith('https://', at) ? 8 : text.startsWith('http://', at) ? 7 : 0;
  if (!scheme) return null;
  const stop = source.next(URL_END, at + scheme);
  let end = Math.min(stop === -1 ? text.length : stop, at + MAX_BARE_URL);
  if (end === at + scheme) return null;
  end = withoutTrailingPunctuation(text, at, end);
  // A closing parenthesis belongs to the URL only when it has an opening one, as in Wikipedia links.
  let [opening, closing] = source.parentheses(at, end);
  while (text[end - 1] === ')' && opening < closing) {
    closing--;
    end = withoutTrailingPunctuation(text, at, end - 1);
  }
  return end - at > 'https://'.length ? text.slice(at, end) : null;
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
const SYNTAX_START = /[\\\n`[!<h*_~]/g; // the characters the loop below acts on

/** Append the inline content of `text` to `parent`. */
export function inline(text, parent, depth, inLink = false) {
  if (!text) return; // empty table cells are common: no parser state for them
  if (depth > MAX_DEPTH) {
    parent.append(text);
    return;
  }
  let buffer = '';
  const flush = () => {
    if (buffer) parent.append(buffer); // a string argument becomes a text node
    buffer = '';
  };
  const source = new InlineText(text);
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
      const span = codeSpan(source, i);
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
      const close = open < lastBracket ? closingBracket(source, open) : -1;
      const target = close === -1 ? null : linkTarget(source, close + 1);
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
      const url = bareUrl(source, i);
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

    // Plain text runs to the next character that can start syntax: copy it in one step.
    SYNTAX_START.lastIndex = i + 1;
    const next = SYNTAX_START.test(text) ? SYNTAX_START.lastIndex - 1 : text.length;
    buffer += text.slice(i, next);
    i = next;
  }
  flush();
}

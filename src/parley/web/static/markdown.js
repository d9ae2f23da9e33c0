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
//
// This module reads the block structure; markdown-inline.js renders the text inside blocks.

import { MAX_DEPTH, el, inline, runLength, safeHref } from './markdown-inline.js';

export { safeHref };

// Each pattern runs in linear time: no two of its quantifiers can take the same characters, so
// a line that does not match is never re-split every possible way before failing (a heading
// pattern ending `(.*?)(?:[ \t]+#+)?[ \t]*$` spent seconds on `# a`, 40,000 spaces and `x!`).
// Fences and headings, whose optional parts would need such overlaps, are read by hand below.
const RULE = /^ {0,3}(?:(?:-[ \t]*){3,}|(?:\*[ \t]*){3,}|(?:_[ \t]*){3,})$/;
const QUOTE = /^ {0,3}> ?/;
const ITEM = /^( {0,3})([-*+]|\d{1,9}[.)])(?:[ \t]+|$)/;
// `| --- | :-: |`: each run of spaces is followed by something fixed (a `|`, a colon or dash,
// the end of the line), never by another run of spaces.
const TABLE_DELIMITER = /^(?: {0,3}\|)?[ \t]*:?-+:?(?:[ \t]*\|[ \t]*:?-+:?)*(?:[ \t]*\|)?[ \t]*$/;

/** Render Markdown source to a DocumentFragment. */
export function renderMarkdown(source) {
  const fragment = document.createDocumentFragment();
  renderBlocks(splitLines(String(source ?? '')), fragment, 0, false);
  return fragment;
}

/**
 * Renders a growing reply into `container`, parsing only its unfinished end each time.
 *
 * A block is finished once the block after it has begun on a complete line (one a line break
 * follows). Text appended later only lengthens the last line or adds lines, and no block looks
 * further ahead than the first non-blank line after its end (a list, to see whether another
 * item follows): so how the text before that complete line parses can no longer change.
 * Finished blocks are rendered once and left alone, and after every render the container holds
 * exactly what renderMarkdown(source) makes.
 */
export class MarkdownStream {
  constructor(container) {
    this.container = container;
    this.finished = ''; // the source of the finished blocks
    this.finishedNodes = 0; // the container's children they rendered to
  }

  render(source) {
    const text = String(source ?? '');
    if (!text.startsWith(this.finished)) {
      this.finished = ''; // not a continuation of the text rendered so far: start over
      this.finishedNodes = 0;
    }
    const open = text.slice(this.finished.length);
    const lines = splitLines(open);
    const fragment = document.createDocumentFragment();
    const blocks = [];
    renderBlocks(lines, fragment, 0, false, blocks);
    const { container } = this;
    while (container.childNodes.length > this.finishedNodes) container.lastChild.remove();
    container.append(fragment);
    const last = blocks.findLast(({ line }) => line > 0 && line < lines.length - 1);
    if (last) {
      this.finished = text.slice(0, this.finished.length + lineStart(open, last.line));
      this.finishedNodes += last.nodes;
    }
  }
}

function splitLines(source) {
  return source.split(/\r\n?|\n/).map(expandLeadingTabs);
}

/** Where line number `line` of `text` starts, with the line breaks splitLines splits at. */
function lineStart(text, line) {
  const breaks = /\r\n?|\n/g;
  for (let n = 0; n < line; n++) breaks.exec(text);
  return breaks.lastIndex;
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
const isSpaceOrTab = (ch) => ch === ' ' || ch === '\t';

/** The run of three or more backticks or tildes after up to three spaces: `{fence, end}`; or null. */
function fenceRun(line) {
  let start = 0;
  while (start < 3 && line[start] === ' ') start++;
  const ch = line[start];
  if (ch !== '`' && ch !== '~') return null;
  const length = runLength(line, start, ch);
  return length >= 3 ? { fence: line.slice(start, start + length), end: start + length } : null;
}

/** The line opening a fenced code block: `{fence, language}`; or null. */
function openingFence(line) {
  const run = fenceRun(line);
  if (!run) return null;
  const info = line.slice(run.end);
  if (info.includes('`')) return null; // ```a``` is inline code, not a fence
  return { fence: run.fence, language: /^[ \t]*(\S*)/.exec(info)[1] };
}

function closesFence(line, fence) {
  const run = fenceRun(line);
  return (
    run !== null &&
    run.fence[0] === fence[0] &&
    run.fence.length >= fence.length &&
    /^[ \t]*$/.test(line.slice(run.end))
  );
}

/** An ATX heading (`## Title ##`): `{level, text}`; or null. */
function atxHeading(line) {
  let start = 0;
  while (start < 3 && line[start] === ' ') start++;
  const level = runLength(line, start, '#');
  if (level < 1 || level > 6) return null;
  start += level;
  if (start < line.length && !isSpaceOrTab(line[start])) return null; // #hashtag
  while (isSpaceOrTab(line[start])) start++;
  let end = line.length;
  while (end > start && isSpaceOrTab(line[end - 1])) end--;
  // A closing run of #s is dropped when a space sets it off: `## a ##` is "a", `## a#` is "a#".
  let hashes = end;
  while (hashes > start && line[hashes - 1] === '#') hashes--;
  if (hashes < end && hashes > start && isSpaceOrTab(line[hashes - 1])) {
    end = hashes;
    while (end > start && isSpaceOrTab(line[end - 1])) end--;
  }
  return { level, text: line.slice(start, end) };
}

function itemInfo(match) {
  const marker = match[2];
  const ordered = /\d/.test(marker);
  return { ordered, kind: ordered ? marker.slice(-1) : marker, start: ordered ? parseInt(marker, 10) : 1 };
}

/** Whether two items (itemInfo) are of one list: the same marker, `-` or `*` or `1.` or `1)`. */
function sameList(a, b) {
  return a.ordered === b.ordered && a.kind === b.kind;
}

/** Whether `line` starts a block that ends a paragraph. */
function interruptsParagraph(line) {
  if (openingFence(line) || atxHeading(line) || RULE.test(line) || QUOTE.test(line)) return true;
  const item = ITEM.exec(line);
  if (!item || isBlank(line.slice(item[0].length))) return false;
  // As in CommonMark, only "1." may interrupt a paragraph, so "2024. was a year" stays text.
  const info = itemInfo(item);
  return !info.ordered || info.start === 1;
}

/**
 * Whether `line`, without its container's marker or indentation, still continues the paragraph
 * that ends `body` (a lazy continuation line, as in CommonMark).
 */
function continuesParagraph(body, line) {
  return !isBlank(line) && body.length > 0 && !isBlank(body[body.length - 1]) && !interruptsParagraph(line);
}

/** Render `body` as the blocks of a new `tag` element (a quote, a list item) at the end of `parent`. */
function appendContainer(parent, tag, body, depth, tight) {
  const node = el(tag);
  renderBlocks(body, node, depth + 1, tight);
  parent.append(node);
}

/** Render `lines` as blocks into `parent`; `blocks` (if given) gets each one's first line and node. */
function renderBlocks(lines, parent, depth, tight, blocks = null) {
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
    blocks?.push({ line: i, nodes: parent.childNodes.length });
    let match;
    if ((match = openingFence(line))) {
      i = codeBlock(lines, i, match, parent);
    } else if ((match = atxHeading(line))) {
      const heading = el(`h${Math.min(match.level + 2, 6)}`); // the page owns h1 and h2
      inline(match.text, heading, depth);
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

function codeBlock(lines, i, { fence, language }, parent) {
  const indent = indentOf(lines[i]);
  const body = [];
  i++;
  while (i < lines.length) {
    const line = lines[i];
    if (closesFence(line, fence)) {
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
    } else if (continuesParagraph(body, line)) {
      body.push(line);
    } else {
      break;
    }
    i++;
  }
  appendContainer(parent, 'blockquote', body, depth, false);
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
    if (!sameList(info, first)) break;
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
      } else if (!ITEM.test(line) && continuesParagraph(body, line)) {
        body.push(line.trim());
      } else {
        break;
      }
      i++;
    }
    appendContainer(node, 'li', body, depth, tight);
    // Blank lines between items of the same list do not end the list.
    let next = i;
    while (next < lines.length && isBlank(lines[next])) next++;
    if (next > i && next < lines.length) {
      const following = ITEM.exec(lines[next]);
      if (!following || indentOf(lines[next]) > 3) break;
      if (!sameList(itemInfo(following), first)) break;
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
  const row = (cells, tag, width) => {
    const tr = el('tr');
    for (let column = 0; column < width; column++) {
      const cell = el(tag);
      if (aligns[column]) cell.className = `align-${aligns[column]}`; // classes: no inline style under CSP
      inline(cells[column] ?? '', cell, depth + 1);
      tr.append(cell);
    }
    return tr;
  };
  const thead = el('thead', row(header, 'th', header.length));
  const tbody = el('tbody');
  // Short rows are padded with empty cells to the header's width, but never with more cells in
  // all than the table has characters: a wide header over many one-character rows would
  // otherwise cost rows × columns elements.
  let padding = lines[i].length + lines[i + 1].length;
  i += 2;
  while (i < lines.length && !isBlank(lines[i]) && lines[i].includes('|')) {
    const cells = splitRow(lines[i]);
    padding += lines[i].length;
    const width = Math.min(header.length, cells.length + padding);
    padding -= Math.max(0, width - cells.length);
    tbody.append(row(cells, 'td', width));
    i++;
  }
  // Wide tables scroll inside their own box instead of widening the page on a phone.
  const wrapper = el('div', el('table', thead, tbody));
  wrapper.className = 'table-scroll';
  parent.append(wrapper);
  return i;
}

// Times the page's Markdown renderer on hostile input, in Node with a document that keeps
// nothing (see fake_dom.mjs).
//
//   node --single-threaded --expose-gc render_timing.mjs <path of markdown.js> <bound in ms>
//
// Prints one JSON line as each input starts ({"started": name}) and one when it is rendered
// ({"name", "length", "ms"}), so that a render that never ends still shows which input it was.
// Times are CPU time of this single-threaded process, so other processes on a busy machine do
// not count; each render starts after a full garbage collection, so it does not pay for the
// garbage of the one before. A render slower than the bound (but not by far) is retried up to
// four times and the fastest reported: a machine can stall one render, but super-linear work is
// slow every time.

import { pathToFileURL } from 'node:url';
import { installDiscardingDom } from './fake_dom.mjs';

installDiscardingDom();
const [markdownPath, boundArgument] = process.argv.slice(2);
const { renderMarkdown } = await import(pathToFileURL(markdownPath).href);
const bound = Number(boundArgument);
const SIZE = 200_000;

const repeat = (piece, length = SIZE) => piece.repeat(Math.ceil(length / piece.length));

/** Named inputs of about SIZE characters, most of them lines with no end. */
function probes() {
  const wideColumns = SIZE / 8;
  return {
    'heading: # a, 20,000 spaces, x!': '# a' + ' '.repeat(20_000) + 'x!',
    'heading: # a, 40,000 spaces, x!': '# a' + ' '.repeat(40_000) + 'x!',
    'heading: # a, 200,000 spaces, x!': '# a' + ' '.repeat(SIZE) + 'x!',
    'heading: ## a, then " #" repeated': '## a' + repeat(' #') + 'x',
    'heading: many lines of # and spaces': repeat('# a' + ' '.repeat(2_000) + 'x!\n'),
    'heading: nothing but empty headings': repeat('#\n'),
    'fence: a run of tildes, then a backtick': repeat('~') + '`',
    'fence: ``` and a long info string, then a backtick': '```' + repeat('a') + '`',
    'fence: ```a and spaced words, then a backtick': '```a' + repeat(' a') + '`',
    'fence: closing lines with long spaces': '```\n' + repeat('```' + ' '.repeat(1_000) + 'x\n'),
    'rule: - and spaces, then x': repeat('- ') + 'x',
    'rule: * and tabs, then x': repeat('*\t') + 'x',
    'rule: _ and spaces, then x': repeat('_ ') + 'x',
    'table: a delimiter cell with long spaces': 'a|b\n|-' + ' '.repeat(SIZE) + 'x',
    'table: a delimiter of many cells, then x': 'a|b\n' + repeat('|-- ') + 'x',
    'table: a wide header over one-character rows':
      '|a'.repeat(wideColumns) + '\n' + '|-'.repeat(wideColumns) + '\n' + '|\n'.repeat(wideColumns * 2),
    'table: nothing but pipes': repeat('|'),
    'list: 1. and long spaces': '1.' + ' '.repeat(SIZE) + 'x',
    'list: - nested without end': repeat('- '),
    'list: digits and dots': repeat('1234567890.'),
    'quote: > nested without end': repeat('> '),
    'quote: nested, then many lazy lines': repeat('>', SIZE / 3) + repeat('a\n', (SIZE * 2) / 3),
    'brackets: [ without end, then ]': repeat('[') + ']',
    'brackets: [` repeated, then ]': repeat('[`') + ']',
    'brackets: ( without end': repeat('('),
    'links: [a]( repeated': repeat('[a]('),
    'links: [a](< repeated': repeat('[a](<'),
    'links: [a](b " repeated': repeat('[a](b "'),
    'links: ]( repeated': repeat(']('),
    'links: destinations ending at one run of spaces': repeat('[a](x', SIZE / 2) + ' '.repeat(SIZE / 2) + 'y',
    'links: <destinations> ending at one run of spaces': repeat('[a](<x', SIZE / 2) + '>' + ' '.repeat(SIZE / 2),
    'links: a title, then a run of tabs': repeat('[a](x', SIZE / 2) + ' "t"' + '\t'.repeat(SIZE / 2) + 'y',
    'code spans: backtick runs of every length': Array.from({ length: 630 }, (_, n) => '`'.repeat(n + 1) + 'a').join(''),
    'code spans: backticks without end': repeat('`'),
    'code spans: ` and spaces': repeat('` '),
    'emphasis: *a repeated': repeat('*a '),
    'emphasis: _a repeated': repeat('_a '),
    'emphasis: **a repeated': repeat('**a '),
    'emphasis: ~~a repeated': repeat('~~a '),
    'emphasis: stars without end': repeat('*'),
    'emphasis: underscores without end': repeat('_'),
    'urls: (https://[ repeated': repeat('(https://['),
    'urls: http://[ and a space, repeated': repeat('http://[ '),
    'urls: closing parentheses after a URL': repeat('https://a' + ')'.repeat(2_000)),
    'urls: punctuation inside a URL': repeat('https://a' + '.'.repeat(2_000) + 'b '),
    'urls: URLs ending at one run of punctuation': repeat('(https://x'.repeat(200) + '.'.repeat(2_000) + ' '),
    'urls: URLs ending at one run of parentheses': repeat('(https://x'.repeat(200) + ')'.repeat(2_000) + ' '),
    'urls: one endless URL': 'https://' + repeat('a'),
    'urls: http:// repeated': repeat('http://'),
    'urls: h after a space, repeated': repeat(' h'),
    'autolinks: <a: repeated': repeat('<a:'),
    'autolinks: < without end': repeat('<'),
    'escapes: backslashes': repeat('\\'),
    'escapes: \\[ repeated': repeat('\\['),
    'spaces: a line of spaces, then x': ' '.repeat(SIZE) + 'x',
    'spaces: a line of tabs, then x': '\t'.repeat(SIZE) + 'x',
  };
}

/** A seeded generator of numbers in [0, 1) (mulberry32), so every run sees the same inputs. */
function randomSource(seed) {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = Math.imul(state ^ (state >>> 15), 1 | state);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const PIECES = [
  ' ', '\t', '#', '*', '_', '`', '[', ']', '(', ')', '|', '>', '-', '~', '<', '\\', '!', ':', '"',
  '1.', '2)', '# ', '- ', '> ', '* ', '[a](', '](', '(https://[', 'http://', '*a ', '`` ', '|-',
  '```', '~~~', ' #', 'a', 'word ', '\n', '\n\n',
];

/** SIZE characters of runs of hostile pieces, each run short or very long. */
function randomInput(seed) {
  const random = randomSource(seed);
  const pick = (list) => list[Math.floor(random() * list.length)];
  const parts = [];
  let length = 0;
  while (length < SIZE) {
    const piece = random() < 0.3 ? pick(PIECES) + pick(PIECES) : pick(PIECES);
    const times = random() < 0.2 ? Math.floor(random() * 50_000) : Math.floor(random() * 20);
    const part = piece.repeat(Math.max(1, Math.min(times, Math.ceil((SIZE - length) / piece.length))));
    parts.push(part);
    length += part.length;
  }
  return parts.join('');
}

function timed(source) {
  globalThis.gc?.();
  const started = process.cpuUsage();
  renderMarkdown(source);
  const { user, system } = process.cpuUsage(started);
  return (user + system) / 1000;
}

// Warm the JIT up on ordinary Markdown, as a page would be after its first replies.
const ordinary = '# Title\n\nSome *text* with `code`, a [link](https://example.com) and **more**.\n\n- a\n- b\n';
for (let n = 0; n < 200; n++) renderMarkdown(ordinary);

const inputs = Object.entries(probes());
for (let seed = 1; seed <= 30; seed++) inputs.push([`random: seed ${seed}`, randomInput(seed)]);
for (const [name, source] of inputs) {
  console.log(JSON.stringify({ started: name }));
  let ms = timed(source);
  for (let retry = 0; retry < 4 && ms >= bound && ms < 4 * bound; retry++) ms = Math.min(ms, timed(source));
  console.log(JSON.stringify({ name, length: source.length, ms: Math.round(ms * 10) / 10 }));
}

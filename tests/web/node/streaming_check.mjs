// Checks MarkdownStream against renderMarkdown, in Node with a fake DOM.
//
//   node streaming_check.mjs <path of markdown.js>
//
// Prints one JSON line per check:
//  - "same as a full render": random Markdown documents are streamed in random pieces (some
//    splitting a \r\n); after every piece the streamed container must serialize exactly as
//    renderMarkdown(text so far), and the nodes of finished blocks must be the very same objects
//    as before the piece (rendered once, never touched again). Then a text that does not
//    continue the document must render as a full render would.
//  - "open text": a long reply of ordinary blocks streamed in small pieces; each render parses
//    only the text after the finished blocks, and that must stay short however long the reply.

import { pathToFileURL } from 'node:url';
import { installFakeDom, serializeChildren } from './fake_dom.mjs';

installFakeDom();
const [markdownPath] = process.argv.slice(2);
const { MarkdownStream, renderMarkdown } = await import(pathToFileURL(markdownPath).href);

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

// Blocks of every kind, including the ones that span blank lines (loose lists, code fences).
const BLOCKS = [
  'A paragraph with *emphasis*, `code` and a [link](https://example.com).',
  'Two lines\nof one paragraph',
  '# A heading',
  '### Closed heading ###',
  '- one\n- two\n  - nested',
  '- loose\n\n- list\n\n  continued',
  '1. first\n2. second',
  '3. starts at three\n\n4. loose',
  '* item\nlazy continuation',
  '```js\nconst a = 1;\n\n\nconst b = 2;\n```',
  '~~~\nfenced with tildes\n~~~',
  '```\nunclosed fence\n\nstill code',
  '> quoted\n> more\nlazy',
  '> quote\n\n> another quote',
  '---',
  '| a | b |\n|:--|--:|\n| 1 | 2 |\n| 3 |',
  'Text\n# Heading right after',
  '\tindented with a tab',
  '    four spaces',
  '**bold across\nlines**',
  'https://example.com/path_(x), then text.',
  '<b>not html</b> & [x](javascript:alert(1))',
  '\\*escaped\\*',
  '- item\n\n\n\nafter three blank lines',
  '1.\n\n   content after an empty item',
  '',
  ' ',
];

function randomDocument(random) {
  const pick = (list) => list[Math.floor(random() * list.length)];
  const parts = [];
  const count = 1 + Math.floor(random() * 12);
  for (let n = 0; n < count; n++) parts.push(pick(BLOCKS));
  let text = parts.map((part) => part + pick(['\n', '\n\n', '\n\n', '\n\n\n', ''])).join('');
  if (random() < 0.3) text = text.replace(/\n/g, '\r\n');
  return text;
}

function pieces(random, text) {
  const result = [];
  for (let at = 0; at < text.length; ) {
    const size = 1 + Math.floor(random() * (random() < 0.2 ? 60 : 8));
    result.push(text.slice(at, at + size));
    at += size;
  }
  return result;
}

function checkSameAsFullRender() {
  const random = randomSource(7);
  const mismatches = [];
  let renders = 0;
  let touched = 0;
  let finishedBlocks = 0;
  for (let n = 0; n < 1500; n++) {
    const text = randomDocument(random);
    const container = document.createElement('div');
    const stream = new MarkdownStream(container);
    const compare = (received) => {
      renders++;
      const expected = serializeChildren(renderMarkdown(received));
      const actual = serializeChildren(container);
      if (actual !== expected && mismatches.length < 5) mismatches.push({ text: received, expected, actual });
    };
    let received = '';
    for (const piece of pieces(random, text)) {
      received += piece;
      const kept = container.childNodes.slice(0, stream.finishedNodes);
      stream.render(received);
      if (kept.some((node, index) => container.childNodes[index] !== node)) touched++;
      compare(received);
    }
    finishedBlocks += stream.finishedNodes;
    // A text that does not continue the last one (a reply shown again after a reload) starts over.
    const other = randomDocument(random);
    stream.render(other);
    compare(other);
  }
  return { check: 'same as a full render', renders, touched, finishedBlocks, mismatches };
}

function checkOpenText() {
  const block = (n) => `Paragraph ${n} with *some* \`code\` and a [link](https://example.com/${n}).\n\n`;
  const text = Array.from({ length: 2000 }, (_, n) => block(n)).join('');
  const stream = new MarkdownStream(document.createElement('div'));
  let renders = 0;
  let longestOpen = 0;
  for (let at = 100; at < text.length + 100; at += 100) {
    const received = text.slice(0, at);
    stream.render(received);
    renders++;
    longestOpen = Math.max(longestOpen, received.length - stream.finished.length);
  }
  return { check: 'open text', length: text.length, renders, longestOpen };
}

console.log(JSON.stringify(checkSameAsFullRender()));
console.log(JSON.stringify(checkOpenText()));

// Server-sent events over fetch().
//
// EventSource cannot send an Authorization header or a POST body, so the page reads the SSE
// body of a fetch() response itself. This follows the WHATWG parsing rules for the parts parley
// uses: `id:`, `event:`, `data:` fields, `:` comments (parley's `: ping` heartbeats), blank
// lines dispatching an event, and CRLF / LF / CR line ends in any split across chunks.

/**
 * Yield `{id, event, data}` for each dispatched event of a text/event-stream body.
 * `id` is the last event id seen so far (ids persist across events, as in EventSource).
 * Comments are passed to `onComment` (without the leading colon).
 * Leaving the loop early cancels the body, which closes the connection.
 *
 * @param {ReadableStream<Uint8Array>} body
 * @param {{onComment?: (text: string) => void}} [options]
 */
export async function* readEvents(body, { onComment } = {}) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let pending = ''; // text after the last complete line
  let lastId = null;
  let type = '';
  let data = [];
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return; // an event without its closing blank line is dropped, per the spec
      let text = pending + value;
      // A CR at the very end may be the first half of a CRLF split across chunks: keep it
      // back, or the LF arriving next would read as an extra, event-dispatching blank line.
      const cut = text.endsWith('\r') ? text.length - 1 : text.length;
      const lines = text.slice(0, cut).split(/\r\n|\r|\n/);
      pending = lines.pop() + text.slice(cut);
      text = '';
      for (const line of lines) {
        if (line === '') {
          if (data.length > 0) {
            yield { id: lastId, event: type || 'message', data: data.join('\n') };
          }
          type = '';
          data = [];
          continue;
        }
        if (line.startsWith(':')) {
          if (onComment) onComment(line.slice(1).trim());
          continue;
        }
        const colon = line.indexOf(':');
        const name = colon === -1 ? line : line.slice(0, colon);
        let field = colon === -1 ? '' : line.slice(colon + 1);
        if (field.startsWith(' ')) field = field.slice(1);
        if (name === 'data') data.push(field);
        else if (name === 'event') type = field;
        else if (name === 'id' && !field.includes('\0')) lastId = field;
        // `retry:` and unknown fields are ignored: the page decides itself when to reconnect.
      }
    }
  } finally {
    // Runs on normal end, on error and when the consumer breaks out of its loop.
    reader.cancel().catch(() => {});
  }
}

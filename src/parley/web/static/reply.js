// A reply as parts, and the blocks it is shown as. Pure: no DOM, no requests.
//
// A reply is model rounds: text, tool calls, their results, more text. The stream's events are
// added to a list of parts of the very shapes `GET /sessions/{id}` stores (`{type: 'text', text}`,
// `{type: 'tool_call', toolUseId, toolName, input, executionId}`, `{type: 'tool_result',
// toolUseId, toolName, output, isError, truncated}`), so a reply streaming now and one read back
// after a reload are shown by the same code. So is the word that the history sent with the reply
// had to be shortened to fit the model's context window (`{type: 'context_trimmed',
// droppedMessages, summarized}`, first among the parts; with a summary of what was dropped, a
// stored reply also holds `{type: 'summary', text, covers}`).

/** The built-in tool through which the model proposes a plan (parley's own, never a server's). */
export const PLAN_TOOL = 'propose_action_plan';

/**
 * Add a stream event to a reply's parts; true when it was one of the reply's own events.
 * A delta extends the last text part, or starts one after a tool call (a new model round).
 */
export function applyReplyEvent(parts, type, data) {
  switch (type) {
    case 'content_delta': {
      const last = parts[parts.length - 1];
      if (last && last.type === 'text') last.text += data.delta;
      else parts.push({ type: 'text', text: data.delta });
      return true;
    }
    case 'tool_use_start':
    case 'approval_required':
      addCall(parts, {
        type: 'tool_call',
        toolUseId: data.toolUseId,
        toolName: data.toolName,
        input: data.input,
        executionId: data.executionId,
      });
      return true;
    case 'plan_approval_required':
      addCall(parts, {
        type: 'tool_call',
        toolUseId: data.toolUseId,
        toolName: PLAN_TOOL,
        input: { title: data.title, steps: data.steps },
        executionId: data.executionId,
      });
      return true;
    case 'context_trimmed': {
      // Said again when a refit drops more: the newest word stands, where the first one was.
      const part = {
        type: 'context_trimmed',
        droppedMessages: Math.max(0, Math.trunc(Number(data.droppedMessages)) || 0),
        summarized: Boolean(data.summarized),
      };
      const at = parts.findIndex((p) => p && p.type === 'context_trimmed');
      if (at === -1) parts.unshift(part);
      else parts[at] = part;
      return true;
    }
    case 'tool_result':
      parts.push({
        type: 'tool_result',
        toolUseId: data.toolUseId,
        toolName: data.toolName,
        output: data.output,
        isError: Boolean(data.isError),
        truncated: Boolean(data.truncated),
      });
      return true;
    default:
      return false;
  }
}

/** A call is listed once: an approved call's tool_use_start follows its approval_required. */
function addCall(parts, call) {
  const same = (p, key) => call[key] && p[key] === call[key];
  const known = parts.find((p) => p.type === 'tool_call' && (same(p, 'executionId') || same(p, 'toolUseId')));
  if (!known) parts.push(call);
}

/**
 * The blocks a reply is shown as, in order: `{kind: 'text', key, text}` (adjacent text parts
 * joined as the stored content joins them), `{kind: 'tool', key, call, result}` (a call with its
 * result, when it came) and `{kind: 'plan', key, call, result}`. Keys stay the same while a reply
 * grows, so a view can keep what it already shows.
 */
export function replyBlocks(parts) {
  const blocks = [];
  const calls = new Map();
  for (const [index, part] of (parts || []).entries()) {
    if (!part || typeof part !== 'object') continue;
    if (part.type === 'text') {
      if (!part.text) continue;
      const last = blocks[blocks.length - 1];
      if (last && last.kind === 'text') last.text += `\n\n${part.text}`;
      else blocks.push({ kind: 'text', key: `text:${index}`, text: part.text });
    } else if (part.type === 'tool_call') {
      const plan = part.toolName === PLAN_TOOL;
      const block = {
        kind: plan ? 'plan' : 'tool',
        key: `${plan ? 'plan' : 'tool'}:${part.executionId || part.toolUseId || index}`,
        call: part,
        result: null,
      };
      blocks.push(block);
      if (part.toolUseId) calls.set(part.toolUseId, block);
    } else if (part.type === 'tool_result') {
      const block = calls.get(part.toolUseId);
      if (block) block.result = part;
      else blocks.push({ kind: 'tool', key: `result:${part.toolUseId || index}`, call: null, result: part });
    }
  }
  return blocks;
}

/**
 * Where the model's view of a conversation begins, from its messages (oldest first, as
 * `GET /sessions/{id}` lists them; a streaming reply's parts may stand for the newest):
 * `{droppedMessages, summarized, summary}`, the model not being sent the first `droppedMessages`
 * messages (a summary of them instead when `summarized`; `summary` is its text when a stored part
 * holds it, else null); null when the model sees them all. The newest reply that says so is
 * believed: what a model does not see only grows as a conversation goes on.
 */
export function contextCut(messages) {
  for (let index = messages.length - 1; index >= 0; index--) {
    const parts = Array.isArray(messages[index]?.parts) ? messages[index].parts : [];
    const cut = parts.find((p) => p && p.type === 'context_trimmed');
    if (!cut) continue;
    const droppedMessages = Math.max(0, Math.trunc(Number(cut.droppedMessages)) || 0);
    if (droppedMessages === 0) return null;
    const summarized = Boolean(cut.summarized);
    return { droppedMessages, summarized, summary: summarized ? newestSummary(messages.slice(0, index + 1)) : null };
  }
  return null;
}

/** The text of the newest stored summary in `messages` (the one a later turn extends), or null. */
function newestSummary(messages) {
  for (let index = messages.length - 1; index >= 0; index--) {
    const parts = Array.isArray(messages[index]?.parts) ? messages[index].parts : [];
    const summary = parts.findLast((p) => p && p.type === 'summary' && typeof p.text === 'string' && p.text);
    if (summary) return summary.text;
  }
  return null;
}

/** The reply's text as stored in `content`: its text parts, joined by blank lines. */
export function replyText(parts) {
  return (parts || [])
    .filter((p) => p && p.type === 'text' && p.text)
    .map((p) => p.text)
    .join('\n\n');
}

/** A tool's arguments as indented JSON text. */
export function formatInput(input) {
  try {
    return JSON.stringify(input ?? {}, null, 2) ?? String(input);
  } catch {
    return String(input);
  }
}

/** A tool's output: indented when it is a JSON object or array, else exactly as given. */
export function formatOutput(output) {
  const text = String(output ?? '');
  const start = text.trimStart()[0];
  if (start === '{' || start === '[') {
    try {
      return JSON.stringify(JSON.parse(text), null, 2);
    } catch {
      // Not JSON after all (or cut short by the output cap): shown as it is.
    }
  }
  return text;
}

// The open chat's tool desk: the calls that wait for a decision, the plans, the tools the chat
// may use and those always allowed in it; the decisions sent to the server; one countdown for
// every deadline; the "Approve all / Deny all" bar; announcements for screen readers.
//
// What waits is rebuilt from `GET /sessions/{id}` (`pendingExecutions`, `plans`, the reply's
// parts), so a reload or another device shows the same cards. A decision that settles the last
// waiting call answers with the continuation's stream, which the page reads into the same reply
// (`onContinuation`); one that leaves others waiting answers JSON and only updates the cards.

import { ApiError } from './api.js';
import { PLAN_TOOL } from './reply.js';
import { PlanView, ToolCallView } from './tool-views.js';
import { el } from './ui.js';

const TICK_MS = 1000;
// Answers that mean this page's picture of the chat is out of date: read it again.
const STALE_CODES = new Set(['already_decided', 'execution_not_found', 'plan_not_found']);

const plural = (count, one, many) => `${count} ${count === 1 ? one : many}`;

/** A call that waits, from an `approval_required` event or a `pendingExecutions` row. */
function approvalFrom(data, executionId) {
  return {
    executionId,
    toolUseId: data.toolUseId,
    toolName: data.toolName,
    input: data.input,
    description: data.description,
    expiresAt: data.expiresAt,
    state: 'pending', // pending | sending | approved | denied | expired
    settled: false, // the reply went on past this call's round
    reason: '',
  };
}

/** A plan, from a `plan_approval_required` event or a `plans` row. */
function planFrom(data, planId) {
  return {
    planId,
    executionId: data.executionId,
    title: data.title,
    steps: (data.steps || []).map(({ toolName, input, reasoning }) => ({ toolName, input, reasoning })),
    status: data.status || 'pending',
    currentStep: data.currentStep || 0,
    expiresAt: data.expiresAt,
    sending: false,
  };
}

export class ToolDesk {
  /**
   * @param {object} hooks
   * @param {HTMLElement} hooks.announcer a polite live region
   * @param {(reply: object, response: Response) => void} hooks.onContinuation read a continuation into its reply
   * @param {() => void} hooks.onResync read the chat again from the server
   * @param {(err: Error) => void} hooks.onError show a failure
   * @param {() => void} hooks.onChange what waits, or what is always allowed, changed
   */
  constructor({ announcer, onContinuation, onResync, onError, onChange }) {
    Object.assign(this, { announcer, onContinuation, onResync, onError, onChange });
    this.generation = 0;
    this.timer = 0;
    this.approveAll = el('button', { type: 'button', className: 'primary', textContent: 'Approve all' });
    this.denyAll = el('button', { type: 'button', className: 'danger', textContent: 'Deny all' });
    this.barText = el('p', { className: 'approval-batch-text' });
    this.bar = el(
      'div',
      { className: 'approval-batch', attrs: { role: 'group', 'aria-label': 'Decide every waiting tool call' } },
      this.barText,
      el('div', { className: 'approval-buttons' }, this.approveAll, this.denyAll),
    );
    this.approveAll.addEventListener('click', () => this.decide(this.#asking(), true));
    this.denyAll.addEventListener('click', () => this.decide(this.#asking(), false));
    this.#clear(null, null);
  }

  /** Another chat (or none): forget the last one's state, and take the stored one's when given. */
  reset(api, sessionId, detail = null) {
    this.#clear(api, sessionId);
    if (detail) {
      for (const row of detail.pendingExecutions || []) {
        if (!row.planId) this.approvals.set(row.id, approvalFrom(row, row.id));
      }
      for (const row of detail.plans || []) this.plans.set(row.executionId, planFrom(row, row.id));
      this.allowed = [...((detail.session && detail.session.allowedTools) || [])];
    }
    this.#changed();
  }

  #clear(api, sessionId) {
    this.generation++;
    this.api = api;
    this.sessionId = sessionId;
    this.approvals = new Map(); // by execution id
    this.plans = new Map(); // by the execution id of the plan's call
    this.allowed = [];
    this.tools = null; // name -> tool, once listed
    this.toolsLoading = null;
    this.views = new Set();
    this.reply = null; // {sessionId, messageId, view, parts, reasoning} of the reply whose calls wait
    this.streaming = false;
    this.bar.remove();
  }

  // ---- what the views read ---------------------------------------------------------------

  now() {
    return Date.now();
  }

  expired(expiresAt) {
    const at = Date.parse(expiresAt);
    return !Number.isNaN(at) && at <= this.now();
  }

  approvalOf(executionId) {
    return this.approvals.get(executionId) || null;
  }

  planOf(executionId) {
    return this.plans.get(executionId) || null;
  }

  /** The tool's title, once the chat's tools are listed (they are, on first use). */
  titleOf(name) {
    if (!this.tools) {
      this.listTools().catch(() => {}); // names stand in for titles until then
      return null;
    }
    const tool = this.tools.get(name);
    return tool ? tool.title : null;
  }

  /** The chat's tools (`GET /sessions/{id}/tools`), listed once, or again when `fresh`. */
  listTools({ fresh = false } = {}) {
    if (!this.sessionId || !this.api) return Promise.resolve([]);
    if (this.toolsLoading && !fresh) return this.toolsLoading;
    const generation = this.generation;
    this.toolsLoading = this.api.listTools(this.sessionId).then((answer) => {
      const list = Array.isArray(answer.data) ? answer.data : [];
      if (generation === this.generation) {
        this.tools = new Map(list.map((tool) => [tool.name, tool]));
        this.#changed();
      }
      return list;
    });
    return this.toolsLoading;
  }

  /** The view of a reply block that is not text. */
  viewFor(block) {
    return block.kind === 'plan' ? new PlanView(this, block) : new ToolCallView(this, block);
  }

  register(view) {
    this.views.add(view);
  }

  /** Calls (and plans) that wait for a decision that can still be made. */
  waiting() {
    let count = this.#asking().length;
    for (const plan of this.plans.values()) {
      if (plan.status === 'pending' && !this.expired(plan.expiresAt)) count++;
    }
    for (const approval of this.approvals.values()) if (approval.state === 'sending') count++;
    return count;
  }

  /** The titles (else names) of the tools always allowed in this chat. */
  allowedTitles() {
    return this.allowed.map((name) => this.titleOf(name) || name);
  }

  // ---- the stream and the reply --------------------------------------------------------------

  /** An event of the chat's stream that concerns tools. */
  onEvent(type, data) {
    switch (type) {
      case 'approval_required':
        this.approvals.set(data.executionId, approvalFrom(data, data.executionId));
        this.#announceAbout(
          data.toolName,
          (tool) => `parley asks before running ${tool}. Approve or deny it in the conversation.`,
        );
        break;
      case 'plan_approval_required':
        this.plans.set(data.executionId, planFrom(data, data.planId));
        this.announce(
          `parley proposes a plan of ${plural(data.steps.length, 'step', 'steps')}: ${data.title}. ` +
            'Approve or reject it in the conversation.',
        );
        break;
      case 'plan_step_start':
      case 'plan_step_complete': {
        const plan = this.#planById(data.planId);
        const step = plan && plan.steps[data.stepIndex];
        if (!step) return;
        plan.status = 'approved';
        if (type === 'plan_step_start') step.state = 'running';
        else {
          step.state = data.isError ? 'error' : 'done';
          plan.currentStep = data.stepIndex + 1;
        }
        break;
      }
      case 'plan_complete': {
        const plan = this.#planById(data.planId);
        if (!plan) return;
        plan.status = data.status;
        this.announce(`The plan ${data.status === 'completed' ? 'is complete' : `was ${data.status}`}.`);
        break;
      }
      default:
        return;
    }
    this.#changed();
  }

  /** The chat's stream opened or ended: decisions wait for it to end. */
  setStreaming(streaming) {
    this.streaming = streaming;
    this.#changed();
  }

  /** The reply whose calls wait; its view holds the "Approve all" bar. */
  setReply(reply) {
    this.reply = reply;
    this.#changed();
  }

  /** Calls of the waiting reply decided elsewhere while no card was shown: say how. */
  async fillDecided(parts) {
    const answered = new Set(parts.filter((p) => p.type === 'tool_result').map((p) => p.toolUseId));
    const unknown = parts.filter(
      (p) =>
        p.type === 'tool_call' &&
        p.toolName !== PLAN_TOOL &&
        !answered.has(p.toolUseId) &&
        !this.approvals.has(p.executionId),
    );
    if (unknown.length === 0) return;
    const generation = this.generation;
    let rows;
    try {
      rows = (await this.api.toolExecutions(this.sessionId)).data;
    } catch (err) {
      if (generation === this.generation) this.onError(err);
      return;
    }
    if (generation !== this.generation) return;
    for (const part of unknown) {
      const row = rows.find((r) => r.id === part.executionId);
      if (!row || !['approved', 'denied', 'expired'].includes(row.status)) continue;
      this.approvals.set(row.id, { ...approvalFrom(row, row.id), state: row.status });
    }
    this.#changed();
  }

  /** Move the focus to the first card that asks. */
  focusFirst() {
    const target = [...this.views].map((view) => view.focusTarget).find((node) => node && node.isConnected);
    if (target) target.focus();
  }

  /** Announce, naming the tool by its title once the chat's tools are listed. */
  #announceAbout(name, words) {
    const generation = this.generation;
    this.listTools()
      .catch(() => {})
      .then(() => {
        if (generation === this.generation) this.announce(words(this.titleOf(name) || name));
      });
  }

  announce(text) {
    // Emptied first, so the same words said twice are announced twice.
    this.announcer.textContent = '';
    requestAnimationFrame(() => {
      this.announcer.textContent = text;
    });
  }

  // ---- decisions -----------------------------------------------------------------------------

  /** Approve or deny calls: one through `approve/{id}`, several at once through `tool-decisions`. */
  async decide(approvals, approved, { always = false } = {}) {
    const chosen = approvals.filter((a) => a.state === 'pending' && !this.expired(a.expiresAt));
    if (chosen.length === 0 || this.streaming) return;
    const decisions = chosen.map((a) => {
      const decision = { executionId: a.executionId, approved };
      const reason = (a.reason || '').trim();
      if (!approved && reason) decision.reason = reason;
      if (always) decision.always = true;
      return decision;
    });
    for (const approval of chosen) approval.state = 'sending';
    this.#changed();
    await this.#send(
      () => {
        if (decisions.length > 1) return this.api.decideMany(this.sessionId, decisions);
        const { executionId, ...decision } = decisions[0];
        return this.api.decide(this.sessionId, executionId, decision);
      },
      () => {
        for (const approval of chosen) approval.state = approved ? 'approved' : 'denied';
        if (always && approved) {
          for (const { toolName } of chosen) if (!this.allowed.includes(toolName)) this.allowed.push(toolName);
        }
      },
      (err) => {
        for (const approval of chosen) {
          const expired = err instanceof ApiError && err.details && err.details.status === 'expired';
          approval.state = expired ? 'expired' : 'pending';
        }
      },
    );
  }

  /** Approve or reject the plan that waits. */
  async decidePlan(plan, approved) {
    if (plan.status !== 'pending' || plan.sending || this.expired(plan.expiresAt) || this.streaming) return;
    plan.sending = true;
    this.#changed();
    await this.#send(
      () => this.api.decidePlan(this.sessionId, approved),
      () => {
        plan.sending = false;
        plan.status = approved ? 'approved' : 'rejected';
      },
      () => {
        plan.sending = false;
      },
    );
  }

  async #send(request, decided, failed) {
    const generation = this.generation;
    const reply = this.reply;
    let answer;
    try {
      answer = await request();
    } catch (err) {
      if (generation !== this.generation) return;
      failed(err);
      this.#changed();
      this.onError(err);
      if (err instanceof ApiError && STALE_CODES.has(err.code)) this.onResync();
      return;
    }
    if (generation !== this.generation) {
      if (answer.stream) answer.stream.body?.cancel().catch(() => {});
      return;
    }
    decided();
    if (answer.stream) {
      // The round is settled: the reply goes on, in the same message.
      for (const approval of this.approvals.values()) approval.settled = true;
      this.#changed();
      this.onContinuation(reply, answer.stream);
      return;
    }
    this.#changed();
    const pending = Number(answer.result && answer.result.pending) || 0;
    this.announce(
      pending
        ? `Decision saved. ${plural(pending, 'more call waits', 'more calls wait')} for your decision.`
        : 'Decision saved.',
    );
  }

  // ---- keeping the views current ------------------------------------------------------------------

  #asking() {
    return [...this.approvals.values()].filter((a) => a.state === 'pending' && !this.expired(a.expiresAt));
  }

  #planById(planId) {
    return [...this.plans.values()].find((plan) => plan.planId === planId) || null;
  }

  /** Redraw the views, the bar and the countdown after any change; tell the page. */
  #changed() {
    for (const view of this.views) {
      if (view.el.isConnected) view.refresh();
      else this.views.delete(view); // its chat was left or re-read
    }
    this.#placeBar();
    this.#schedule();
    this.onChange();
  }

  #placeBar() {
    const asking = this.#asking();
    if (asking.length < 2 || !this.reply) {
      this.bar.remove();
      return;
    }
    this.barText.textContent = `${plural(asking.length, 'tool call waits', 'tool calls wait')} for your decision.`;
    this.approveAll.disabled = this.denyAll.disabled = this.streaming;
    if (this.bar.parentElement !== this.reply.view.actions) this.reply.view.actions.append(this.bar);
  }

  /** One timer for every deadline, running only while something can still expire. */
  #schedule() {
    const ticking = this.waiting() > 0;
    if (ticking && !this.timer) this.timer = setInterval(() => this.#changed(), TICK_MS);
    else if (!ticking && this.timer) {
      clearInterval(this.timer);
      this.timer = 0;
    }
  }
}

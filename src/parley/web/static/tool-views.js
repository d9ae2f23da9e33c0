// The views of a reply's tool calls and plans: what ran, with what, and what it gave back; the
// card that asks before a call runs; a proposed plan and its progress.
//
// Everything a tool or the model wrote (names, arguments, output, descriptions, reasons) goes in
// with textContent: it is data, never markup. The views read the open chat's decisions, plans
// and tool titles from the desk (approvals.js) and hand the person's choices back to it; the desk
// refreshes them when that state changes or a deadline passes.

import { formatInput, formatOutput } from './reply.js';
import { el, formatTimeLeft } from './ui.js';

let lastId = 0;
const nextId = (prefix) => `${prefix}-${++lastId}`;

const STATE_LABELS = {
  asking: 'Waits for your approval',
  sending: 'Sending your decision…',
  expired: 'Expired: not approved in time',
  approved: 'Approved, waits for the other calls',
  denied: 'Denied',
  running: 'Running…',
  done: 'Done',
  error: 'Error',
  unfinished: 'No result',
};

/** "Expires in 4 min 10 s", or that it expired; and whether it did. */
function deadline(expiresAt, now) {
  const at = Date.parse(expiresAt);
  if (Number.isNaN(at)) return { expired: false, text: '' };
  const left = at - now;
  return left <= 0
    ? { expired: true, text: 'Expired: this was not approved in time.' }
    : { expired: false, text: `Expires in ${formatTimeLeft(left)}` };
}

// Views are redrawn on every change of the desk (each second while something waits); only what
// changed is written, as the conversation is a live region.
function setText(node, text) {
  if (node.textContent !== text) node.textContent = text;
}

function setData(node, name, value) {
  if (node.dataset[name] !== value) node.dataset[name] = value;
}

function setBusy(node, busy) {
  if (node.getAttribute('aria-busy') !== String(busy)) node.setAttribute('aria-busy', String(busy));
}

function setClass(node, className) {
  if (node.className !== className) node.className = className;
}

// A box of a tool's text: it wraps and scrolls inside itself (browsers let keyboards scroll it).
function textBox(className) {
  return el('pre', { className: `tool-text ${className}` });
}

/** One tool call of the reply: a collapsible view of its input and output, and its card while it asks. */
export class ToolCallView {
  constructor(desk, block) {
    this.desk = desk;
    this.key = block.key;
    this.block = block;
    this.streaming = false;
    this.card = null;
    this.title = el('span', { className: 'tool-title' });
    this.name = el('code', { className: 'tool-name' });
    this.state = el('span', { className: 'tool-state' });
    this.truncated = el('span', { className: 'badge warning', textContent: 'Output truncated', hidden: true });
    this.input = textBox('tool-input');
    this.outputLabel = el('p', { className: 'tool-label', textContent: 'Output', hidden: true });
    this.output = textBox('tool-output');
    this.output.hidden = true;
    this.details = el(
      'details',
      { className: 'tool-details' },
      el('summary', {}, this.title, ' ', this.name, ' ', this.state, ' ', this.truncated),
      el('p', { className: 'tool-label', textContent: 'Input' }),
      this.input,
      this.outputLabel,
      this.output,
    );
    this.el = el('div', { className: 'tool-call' }, this.details);
    this.shownInput = undefined;
    this.shownOutput = undefined;
    desk.register(this);
  }

  update(block) {
    this.block = block;
    this.refresh();
  }

  setStreaming(streaming) {
    this.streaming = streaming;
    this.refresh();
  }

  /** Draw from the block and the desk's state; touches only what changed. */
  refresh() {
    const { call, result } = this.block;
    const name = (call && call.toolName) || (result && result.toolName) || 'tool';
    const title = this.desk.titleOf(name);
    setText(this.title, title || name);
    setText(this.name, name);
    this.name.hidden = !title || title === name;
    const input = call ? call.input : undefined;
    if (input !== this.shownInput) {
      this.shownInput = input;
      this.input.textContent = call ? formatInput(input) : '(not known)';
    }
    const output = result ? result.output : undefined;
    if (output !== this.shownOutput) {
      this.shownOutput = output;
      this.output.textContent = result ? formatOutput(output) : '';
      this.output.hidden = this.outputLabel.hidden = !result;
    }
    this.truncated.hidden = !(result && result.truncated);
    this.output.classList.toggle('error', Boolean(result && result.isError));

    const approval = call && call.executionId ? this.desk.approvalOf(call.executionId) : null;
    const state = this.#state(approval);
    setData(this.el, 'state', state);
    setText(this.state, STATE_LABELS[state]);
    setClass(this.state, `tool-state badge ${state}`);
    const asking = approval && ['asking', 'sending', 'expired'].includes(state);
    if (asking && !this.card) {
      this.card = new ApprovalCard(this.desk, approval);
      this.el.append(this.card.el);
    } else if (!asking && this.card) {
      this.card.el.remove();
      this.card = null;
    }
    this.details.hidden = Boolean(this.card); // the card shows the arguments in full
    if (this.card) this.card.refresh(approval, name, title);
  }

  #state(approval) {
    const { result } = this.block;
    if (approval && approval.state === 'denied') return 'denied';
    if (result) return result.isError ? 'error' : 'done';
    if (approval) {
      if (approval.state === 'pending') return this.desk.expired(approval.expiresAt) ? 'expired' : 'asking';
      if (approval.state !== 'approved' || !approval.settled) return approval.state;
    }
    return this.streaming ? 'running' : 'unfinished';
  }

  /** The card, for moving the focus to it while it asks. */
  get focusTarget() {
    return this.card && this.el.dataset.state === 'asking' ? this.card.el : null;
  }
}

/** What a person is asked before a call runs: the tool, its description, the arguments in full, the time left. */
class ApprovalCard {
  constructor(desk, approval) {
    this.desk = desk;
    this.approval = approval;
    const titleId = nextId('approval-title');
    const reasonId = nextId('deny-reason');
    this.heading = el('h3', { className: 'approval-title', id: titleId });
    this.name = el('code', { className: 'tool-name' });
    this.description = el('p', { className: 'approval-description' });
    // The countdown changes every second: read when reached, never announced.
    this.time = el('p', { className: 'approval-time', attrs: { 'aria-live': 'off' } });
    this.approve = el('button', { type: 'button', className: 'primary', textContent: 'Approve' });
    this.always = el('button', { type: 'button', textContent: 'Always allow this tool in this chat' });
    this.reason = el('input', { type: 'text', id: reasonId, maxLength: 1000, autocomplete: 'off' });
    this.deny = el('button', { type: 'button', className: 'danger', textContent: 'Deny' });
    this.input = textBox('approval-input');
    this.input.textContent = formatInput(approval.input);
    this.el = el(
      'section',
      { className: 'approval-card', tabIndex: -1, attrs: { 'aria-labelledby': titleId } },
      this.heading,
      el('p', { className: 'approval-tool' }, 'Tool ', this.name),
      this.description,
      el('p', { className: 'tool-label', textContent: 'Arguments' }),
      this.input,
      this.time,
      el('div', { className: 'approval-buttons' }, this.approve, this.always),
      el(
        'div',
        { className: 'approval-deny' },
        el('label', { htmlFor: reasonId, textContent: 'Reason for denying (optional)' }),
        el('div', { className: 'approval-deny-row' }, this.reason, this.deny),
      ),
    );
    this.reason.value = approval.reason || '';
    // The reason lives on the call's record, where "Deny all" finds it too.
    this.reason.addEventListener('input', () => {
      this.approval.reason = this.reason.value;
    });
    this.approve.addEventListener('click', () => desk.decide([this.approval], true));
    this.always.addEventListener('click', () => desk.decide([this.approval], true, { always: true }));
    this.deny.addEventListener('click', () => desk.decide([this.approval], false));
    this.reason.addEventListener('keydown', (event) => {
      if (event.key === 'Enter') {
        event.preventDefault();
        this.deny.click();
      }
    });
  }

  refresh(approval, name, title) {
    this.approval = approval;
    setText(this.heading, `Allow ${title || name} to run?`);
    setText(this.name, name);
    setText(this.description, this.approval.description || '');
    this.description.hidden = !this.approval.description;
    const { expired, text } = deadline(this.approval.expiresAt, this.desk.now());
    const sending = this.approval.state === 'sending';
    const over = expired || this.approval.state === 'expired';
    setText(this.time, over && !expired ? 'Expired: this was not approved in time.' : text);
    this.el.classList.toggle('expired', over);
    setBusy(this.el, sending);
    const locked = over || sending || this.desk.streaming;
    for (const control of [this.approve, this.always, this.deny, this.reason]) control.disabled = locked;
  }
}

const STEP_LABELS = { pending: 'To do', running: 'Running…', done: 'Done', error: 'Failed', skipped: 'Not run' };
const PLAN_LABELS = {
  pending: 'Waits for your approval',
  sending: 'Sending your decision…',
  approved: 'Approved: its steps run without asking',
  rejected: 'Rejected',
  completed: 'Completed',
  aborted: 'Aborted',
  expired: 'Expired: not approved in time',
};

/** A plan the model proposed: its steps in order, one Approve/Reject for all, then their progress. */
export class PlanView {
  constructor(desk, block) {
    this.desk = desk;
    this.key = block.key;
    this.block = block;
    const titleId = nextId('plan-title');
    this.heading = el('h3', { className: 'plan-title', id: titleId });
    this.state = el('p', { className: 'plan-state', attrs: { role: 'status' } });
    this.steps = el('ol', { className: 'plan-steps' });
    this.time = el('p', { className: 'approval-time', attrs: { 'aria-live': 'off' } });
    this.approve = el('button', { type: 'button', className: 'primary', textContent: 'Approve plan' });
    this.reject = el('button', { type: 'button', className: 'danger', textContent: 'Reject plan' });
    this.buttons = el('div', { className: 'approval-buttons' }, this.approve, this.reject);
    this.el = el(
      'section',
      { className: 'plan-card', tabIndex: -1, attrs: { 'aria-labelledby': titleId } },
      this.heading,
      this.state,
      this.steps,
      this.time,
      this.buttons,
    );
    this.stepViews = [];
    this.approve.addEventListener('click', () => this.#decide(true));
    this.reject.addEventListener('click', () => this.#decide(false));
    desk.register(this);
  }

  #decide(approved) {
    const plan = this.#plan();
    if (plan) this.desk.decidePlan(plan, approved);
  }

  #plan() {
    return this.desk.planOf(this.block.call.executionId);
  }

  update(block) {
    this.block = block;
    this.refresh();
  }

  refresh() {
    const plan = this.#plan();
    const proposed = this.block.call.input || {};
    const steps = (plan && plan.steps) || proposed.steps || [];
    setText(this.heading, `Plan: ${(plan && plan.title) || proposed.title || 'untitled'}`);
    while (this.stepViews.length < steps.length) this.#addStep();
    steps.forEach((step, index) => this.#drawStep(this.stepViews[index], step, plan, index));

    let status = plan ? plan.status : this.block.result ? 'decided' : 'pending';
    const { expired, text } = plan ? deadline(plan.expiresAt, this.desk.now()) : { expired: false, text: '' };
    if (status === 'pending' && expired) status = 'expired';
    if (plan && plan.sending) status = 'sending';
    const asking = status === 'pending' || status === 'sending';
    this.asking = asking;
    setData(this.el, 'status', status);
    setText(this.state, PLAN_LABELS[status] || 'Decided');
    setText(this.time, status === 'expired' ? 'Expired: this was not approved in time.' : asking ? text : '');
    this.time.hidden = !this.time.textContent;
    this.buttons.hidden = !asking && status !== 'expired';
    const locked = !asking || status === 'sending' || this.desk.streaming || !plan;
    this.approve.disabled = this.reject.disabled = locked;
    setBusy(this.el, status === 'sending');
  }

  #addStep() {
    const view = {
      title: el('span', { className: 'step-title' }),
      state: el('span', { className: 'step-state badge' }),
      reason: el('p', { className: 'step-reason' }),
      input: textBox('step-input'),
      drawn: null,
    };
    view.el = el('li', { className: 'plan-step' }, view.title, ' ', view.state, view.reason, view.input);
    this.stepViews.push(view);
    this.steps.append(view.el);
  }

  #drawStep(view, step, plan, index) {
    setText(view.title, this.desk.titleOf(step.toolName) || step.toolName || 'tool');
    if (view.drawn !== step) {
      view.drawn = step;
      view.reason.textContent = step.reasoning || '';
      view.reason.hidden = !step.reasoning;
      view.input.textContent = formatInput(step.input);
    }
    const state = stepState(step, plan, index);
    setData(view.el, 'state', state);
    setText(view.state, STEP_LABELS[state]);
    setClass(view.state, `step-state badge ${state}`);
  }

  /** The plan, for moving the focus to it while it asks. */
  get focusTarget() {
    return this.asking ? this.el : null;
  }
}

/** A step's progress: from the stream's step events, else from how far the stored plan got. */
function stepState(step, plan, index) {
  if (step.state) return step.state;
  if (!plan) return 'pending';
  if (index < plan.currentStep) return 'done';
  if (['aborted', 'rejected', 'expired'].includes(plan.status)) return 'skipped';
  return 'pending';
}

// The sign-in form of both pages (the chat and the review page): the bearer token, kept only for
// this tab in sessionStorage, and which parts of the page show only while signed in.
//
// Both pages have the same form (ids sign-in, sign-in-form, token-input, sign-in-button,
// sign-in-error) and a sign-out button (sign-out). A page says how a token is checked and what a
// refusal of it means; a token that is refused is forgotten, one that could not be checked (the
// server unreachable, say) is kept, so that "Sign in" with an empty field tries it again.

import { describeError, onSubmit } from './ui.js';

const TOKEN_KEY = 'parley.token';

const $ = (id) => document.getElementById(id);

export class SignIn {
  /**
   * @param {object} page
   * @param {HTMLElement[]} page.parts what shows only while signed in, besides the sign-out button
   * @param {string} page.emptyMessage what to say when there is no token to try
   * @param {(token: string) => Promise<*>} page.check resolves when the token works; rejects with
   *   the ApiError that says why not
   * @param {(err: Error) => string|null} page.refusal what to say when `err` means the token is
   *   refused; null when it means something else
   * @param {(checked: *) => *} [page.onSignedIn] the page goes on with what `check` resolved to
   * @param {() => void} [page.onSignOut] the page forgets what it showed for the token
   */
  constructor({ parts, emptyMessage, check, refusal, onSignedIn = () => {}, onSignOut = () => {} }) {
    this.view = $('sign-in'); // the form and its heading
    this.input = $('token-input');
    this.button = $('sign-in-button');
    this.error = $('sign-in-error');
    this.signOutButton = $('sign-out');
    this.parts = [...parts, this.signOutButton];
    Object.assign(this, { emptyMessage, check, refusal, onSignedIn, onSignOut });
    onSubmit($('sign-in-form'), () => {
      // An empty field tries the token kept from before again (after a failed restore).
      const token = this.input.value.trim() || sessionStorage.getItem(TOKEN_KEY);
      if (token) this.signIn(token);
      else this.show(this.emptyMessage);
    });
    this.signOutButton.addEventListener('click', () => this.signOut());
  }

  /** Sign in with the token kept for this tab, if there is one; otherwise show the form. */
  start() {
    const saved = sessionStorage.getItem(TOKEN_KEY);
    if (saved) this.signIn(saved);
    else this.show();
  }

  /** Show the form (with `message` under it) instead of the page. */
  show(message = '') {
    for (const part of this.parts) part.hidden = true;
    this.view.hidden = false;
    this.error.textContent = message;
    this.input.focus();
  }

  async signIn(token) {
    this.button.disabled = true;
    let checked;
    try {
      checked = await this.check(token);
    } catch (err) {
      const refused = this.refusal(err);
      if (refused !== null) {
        sessionStorage.removeItem(TOKEN_KEY);
        this.show(refused);
      } else {
        const { code, message } = describeError(err);
        const retry = sessionStorage.getItem(TOKEN_KEY) === token ? ' Press Sign in to try again.' : '';
        this.show(`${message} (${code})${retry}`);
      }
      return;
    } finally {
      this.button.disabled = false;
    }
    sessionStorage.setItem(TOKEN_KEY, token);
    this.input.value = '';
    this.error.textContent = '';
    this.view.hidden = true;
    for (const part of this.parts) part.hidden = false;
    await this.onSignedIn(checked);
  }

  /** Forget the token and what the page showed for it; show the form (with `message`). */
  signOut(message = '') {
    sessionStorage.removeItem(TOKEN_KEY);
    this.onSignOut();
    this.show(message);
  }
}

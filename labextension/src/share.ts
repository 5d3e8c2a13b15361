/**
 * "Share this server": a share link (a JupyterHub share code) with its expiry, sharing
 * with a named user or group, the list of who has access and the open links, and
 * revoking any of them or all (GET/POST/DELETE cloudhop/api/shares, the owner only).
 * Whoever the server is shared with runs code as its owner: the section says so.
 */
import { PageConfig } from '@jupyterlab/coreutils';

import { api, IShare, IShareCode, IShares } from './api';
import { fill, h } from './dom';

const WARNING = 'Anyone you share with uses this server as you do: their code runs as you and sees your files.';

function when(iso: string | null): string {
  return iso ? new Date(iso).toLocaleString() : 'never';
}

function count(n: number, one: string, many: string): string {
  return `${n} ${n === 1 ? one : many}`;
}

/**
 * One line on who has access now: the users and groups the server is shared with and
 * the share links still open (a link lets in whoever has it, so an open link is never
 * "shared with no one").
 */
export function shareSummary(shares: IShares): string {
  const users = shares.shares.filter(s => s.kind !== 'group').length;
  const groups = shares.shares.length - users;
  const links = shares.codes.length;
  const whom = [users ? count(users, 'user', 'users') : '', groups ? count(groups, 'group', 'groups') : '']
    .filter(Boolean)
    .join(' and ');
  const open = links
    ? `${count(links, 'share link is', 'share links are')} open: whoever has one can join until it expires or you revoke it.`
    : 'no share link is open.';
  if (whom) {
    return `Shared with ${whom}; ${open}`;
  }
  return links ? `Shared with no one by name yet; ${open}` : 'Shared with no one, and no share link is open.';
}

export class ShareSection {
  readonly node = h('section', { class: 'ch-section ch-share' });

  constructor() {
    const make = h('button', { class: 'jp-mod-styled ch-share-link' }, 'Make a share link');
    make.addEventListener('click', () => void this.act(() => this.makeLink()));
    const who = h('input', { type: 'text', class: 'ch-share-name', placeholder: 'user or group:name' });
    const add = h('button', { class: 'jp-mod-styled ch-share-add' }, 'Share');
    add.addEventListener('click', () => void this.act(() => this.shareWith(who.value)));
    const stop = h('button', { class: 'jp-mod-styled jp-mod-warn ch-share-stop' }, 'Stop sharing with everyone');
    stop.addEventListener('click', () => void this.act(() => api.unshare({})));
    this._stopRow.append(stop);
    this.node.append(
      h('h3', {}, 'Share this server'),
      h('p', { class: 'ch-note' }, WARNING),
      h('div', { class: 'ch-share-row' }, make, h('label', {}, ' valid for ', this._hours, ' h')),
      this._link,
      h('div', { class: 'ch-share-row' }, who, add),
      this._list,
      this._stopRow,
      this._message
    );
  }

  async refresh(): Promise<void> {
    let shares: IShares;
    try {
      shares = await api.shares();
    } catch (error) {
      fill(this._list, h('p', { class: 'ch-note' }, `Shares unavailable: ${(error as Error).message}`));
      this._stopRow.hidden = true;
      return;
    }
    // the red "stop all" only while there is something to stop
    this._stopRow.hidden = shares.shares.length === 0 && shares.codes.length === 0;
    const people = shares.shares.map((s: IShare) => {
      const remove = h('button', { class: 'jp-mod-styled ch-share-remove' }, 'Remove');
      remove.addEventListener('click', () => void this.act(() => api.unshare({ [s.kind]: s.name })));
      return h('li', { class: 'ch-share-person' }, `${s.kind === 'group' ? 'group ' : ''}${s.name} `, remove);
    });
    const links = shares.codes.map((c: IShareCode) => {
      const revoke = h('button', { class: 'jp-mod-styled ch-share-revoke' }, 'Revoke link');
      revoke.addEventListener('click', () => void this.act(() => api.unshare({ code: c.id })));
      return h('li', { class: 'ch-share-code' }, `link ${c.id}: expires ${when(c.expires_at)}, used ${c.exchange_count} time(s) `, revoke);
    });
    fill(
      this._list,
      h('p', { class: 'ch-note ch-share-summary' }, shareSummary(shares)),
      people.length ? h('ul', { class: 'ch-share-people' }, people) : null,
      links.length ? h('ul', { class: 'ch-share-codes' }, links) : null
    );
  }

  private async makeLink(): Promise<void> {
    const hours = Number(this._hours.value) || 24;
    const made = await api.share({ code: true, expires_in: Math.round(hours * 3600) });
    const url = made.full_accept_url || new URL(made.accept_url, PageConfig.getOption('hubHost') || window.location.origin).href;
    fill(
      this._link,
      h('p', { class: 'ch-share-made' }, 'Share link (shown once): ', h('a', { class: 'ch-share-url', href: url, target: '_blank', rel: 'noopener' }, url)),
      h('p', { class: 'ch-note ch-share-expiry' }, `Expires ${when(made.expires_at)}`)
    );
  }

  private async shareWith(value: string): Promise<void> {
    const name = value.trim();
    if (!name) {
      throw new Error('Name a user, or a group as group:name');
    }
    await api.share(name.startsWith('group:') ? { group: name.slice(6) } : { user: name });
  }

  private async act(action: () => Promise<unknown>): Promise<void> {
    fill(this._message);
    try {
      await action();
    } catch (error) {
      fill(this._message, h('p', { class: 'ch-error' }, (error as Error).message));
    }
    await this.refresh();
  }

  private _hours = h('input', { type: 'number', min: '1', max: '8760', value: '24', class: 'ch-share-hours' });
  private _link = h('div');
  private _list = h('div', {}, h('p', { class: 'ch-note' }, 'reading…'));
  private _message = h('div');
  private _stopRow = h('div', { class: 'ch-share-row ch-share-stop-row', hidden: '' });
}

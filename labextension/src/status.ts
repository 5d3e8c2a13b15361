/** The status bar item: provider · region · GPU × count · $/h (· spend so far). */
import { Notification } from '@jupyterlab/apputils';
import { Widget } from '@lumino/widgets';

import { fill, h } from './dom';
import { placeText } from './format';
import { cloudhopIcon } from './icon';
import { InfoModel } from './model';

export class CloudhopStatus extends Widget {
  constructor(
    private readonly model: InfoModel,
    onClick: () => void
  ) {
    super();
    this.id = 'cloudhop-status';
    this.addClass('ch-status');
    this.addClass('jp-StatusBar-GroupItem');
    this.node.append(cloudhopIcon.element({ tag: 'span', className: 'ch-status-icon' }), this._text);
    this.node.addEventListener('click', onClick);
    model.changed.connect(this.render, this);
    this.render();
  }

  /** The item shows on a server a Cloudhop hub started, or when the API failed. */
  get active(): boolean {
    return this.model.error !== null || !!this.model.info?.provider;
  }

  private render(): void {
    const { info, error } = this.model;
    if (error !== null) {
      fill(this._text, 'Cloudhop: unavailable');
      this.node.title = `Cloudhop's server extension did not answer: ${error}`;
      return;
    }
    if (!info) {
      fill(this._text, 'Cloudhop…');
      return;
    }
    const moving = info.migrations.find(m => !['done', 'failed'].includes(m.state));
    fill(this._text, placeText(info), moving ? ` · moving: ${moving.state}` : null);
    const lines = [`Cloudhop: this server runs on ${info.provider} in ${info.region}`];
    if (info.instance_type) {
      lines.push(`machine: ${info.instance_type}`);
    }
    if (info.price_note) {
      lines.push(`price: ${info.price_note}`);
    }
    if (typeof info.spend === 'number') {
      lines.push(
        info.spend_source === 'ledger'
          ? "spend so far: as the hub's spend ledger counts it"
          : 'spend so far: an estimate from the price and the time since the server started'
      );
    }
    this.warnBudget(info.budget?.warning ? info.budget.message : null);
    lines.push('Click to open the Cloudhop sidebar.');
    this.node.title = lines.join('\n');
  }

  /** The budget warning as a JupyterLab notification, once per message. */
  private warnBudget(message: string | null): void {
    if (message && message !== this._warned) {
      Notification.warning(`Cloudhop: ${message}`, { autoClose: false });
    }
    this._warned = message;
  }

  private _text = h('span', { class: 'ch-status-text' });
  private _warned: string | null = null;
}

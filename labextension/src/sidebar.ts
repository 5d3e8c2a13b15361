/**
 * The Cloudhop sidebar: this server (place, price, spend), its GPUs, moving it, its Ray
 * cluster, its snapshots and sharing it. GPU readings refresh every 2 s, the Ray cluster
 * and the shares every 10 s, only while the sidebar is shown.
 */
import { Message } from '@lumino/messaging';
import { Widget } from '@lumino/widgets';

import { fill, h } from './dom';
import { gpuText, spendText, usd } from './format';
import { GPUSection } from './gpus';
import { cloudhopIcon } from './icon';
import { InfoModel } from './model';
import { MoveSection } from './move';
import { RaySection } from './ray';
import { ShareSection } from './share';
import { SnapshotSection } from './snapshots';

export class CloudhopSidebar extends Widget {
  readonly move: MoveSection;

  constructor(
    private readonly model: InfoModel,
    saveAll: () => Promise<unknown>,
    documentPath: () => string | null
  ) {
    super();
    this.id = 'cloudhop-sidebar';
    this.addClass('ch-sidebar');
    this.title.icon = cloudhopIcon;
    this.title.caption = 'Cloudhop';
    this.move = new MoveSection(saveAll, documentPath);
    this.node.append(
      h('h2', {}, 'Cloudhop'),
      this._here,
      this._gpus.node,
      this.move.node,
      this._ray.node,
      this._snapshots.node,
      this._share.node
    );
    model.changed.connect(this.render, this);
    this.render();
  }

  protected onAfterShow(msg: Message): void {
    void this._gpus.refresh();
    void this.model.refresh().then(() => {
      const info = this.model.info;
      void this._ray.refresh(info?.ray ?? true);
      void this._snapshots.refresh(info?.restored ?? true);
    });
    void this._share.refresh();
    this._timers.push(
      window.setInterval(() => void this._gpus.refresh(), 2000),
      window.setInterval(() => void this._ray.refresh(this.model.info?.ray ?? true), 10000),
      window.setInterval(() => void this._share.refresh(), 10000)
    );
  }

  protected onAfterHide(msg: Message): void {
    this._timers.forEach(t => window.clearInterval(t));
    this._timers = [];
  }

  private render(): void {
    const { info, error } = this.model;
    if (error !== null) {
      fill(this._here, h('p', { class: 'ch-error' }, `Cloudhop's server extension did not answer: ${error}`));
      return;
    }
    if (!info) {
      return;
    }
    const rows: [string, string][] = [
      ['Provider', info.provider || 'not started by a Cloudhop hub'],
      ['Region', info.region || '?'],
      ['Machine', info.instance_type || '?'],
      ['GPU', gpuText(info.gpu, info.gpu_count)]
    ];
    if (typeof info.price_hour === 'number') {
      rows.push(['Price', `${usd(info.price_hour)}/h${info.spot ? ' (spot)' : ''}`]);
    } else {
      rows.push(['Price', `unknown${info.price_note ? `: ${info.price_note}` : ''}`]);
    }
    if (typeof info.spend === 'number' && info.spend > 0) {
      rows.push(['Spent', `${info.spend < 0.01 ? spendText(info.spend) : `about ${usd(info.spend)}`} since this server started`]);
    }
    fill(this._here, h('table', { class: 'ch-here' }, rows.map(([k, v]) => h('tr', {}, h('th', {}, k), h('td', {}, v)))));
    this._snapshots.showMoves(info);
    this.move.resume(info.migrations);
  }

  private _here = h('section', { class: 'ch-section ch-here-section' });
  private _gpus = new GPUSection();
  private _ray = new RaySection();
  private _snapshots = new SnapshotSection();
  private _share = new ShareSection();
  private _timers: number[] = [];
}

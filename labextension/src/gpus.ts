/** Live GPU utilisation and memory per device (GET cloudhop/api/gpus, NVML on the server). */
import { api, IGPUs } from './api';
import { fill, h } from './dom';
import { bytes } from './format';

function bar(percent: number | null, label: string): HTMLElement {
  const value = percent === null ? 0 : Math.max(0, Math.min(100, percent));
  return h(
    'div',
    { class: 'ch-bar', title: label },
    h('div', { class: 'ch-bar-fill', style: `width: ${value.toFixed(0)}%` }),
    h('span', { class: 'ch-bar-label' }, label)
  );
}

export class GPUSection {
  readonly node = h('section', { class: 'ch-section ch-gpus' });

  constructor() {
    this.node.append(h('h3', {}, 'GPUs'), this._body);
  }

  async refresh(): Promise<void> {
    let data: IGPUs;
    try {
      data = await api.gpus();
    } catch (error) {
      fill(this._body, h('p', { class: 'ch-error' }, `GPU readings unavailable: ${(error as Error).message}`));
      return;
    }
    if (!data.gpus.length) {
      fill(this._body, h('p', { class: 'ch-note ch-no-gpu' }, data.reason || 'no GPU on this server'));
      return;
    }
    fill(
      this._body,
      data.gpus.map(g => {
        const util = g.utilization;
        const mem = g.memory_total ? (100 * (g.memory_used || 0)) / g.memory_total : null;
        return h(
          'div',
          { class: 'ch-gpu', 'data-uuid': g.uuid },
          h('div', { class: 'ch-gpu-name' }, `${g.index}: ${g.name}`, g.temperature !== null ? ` · ${g.temperature} °C` : null),
          bar(util, util === null ? 'utilisation: not reported' : `utilisation ${util}%`),
          bar(mem, mem === null ? 'memory: not reported' : `memory ${bytes(g.memory_used)} of ${bytes(g.memory_total)}`)
        );
      })
    );
  }

  private _body = h('div', { class: 'ch-gpu-list' }, h('p', { class: 'ch-note' }, 'reading…'));
}

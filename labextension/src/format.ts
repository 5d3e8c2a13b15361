/** How the sidebar and the status bar write places, prices and sizes. */
import { IInfo } from './api';

export function gpuText(gpu: string | null | undefined, count: number): string {
  if (!gpu || gpu === 'none' || !count) {
    return 'no GPU';
  }
  return `${gpu} × ${count}`;
}

export function usd(value: number): string {
  return `$${value.toFixed(2)}`;
}

/** "$1.23", or "under $0.01" for a spend that would read "$0.00". */
export function spendText(value: number): string {
  return value > 0 && value < 0.01 ? 'under $0.01' : usd(value);
}

/** "local · site-a · T4 × 2 · $0.70/h · $1.23 so far" (the parts that are known). */
export function placeText(info: IInfo): string {
  const parts = [info.provider || '?', info.region || '?', gpuText(info.gpu, info.gpu_count)];
  if (typeof info.price_hour === 'number') {
    parts.push(`${usd(info.price_hour)}/h${info.spot ? ' spot' : ''}`);
    if (typeof info.spend === 'number' && info.spend > 0) {
      parts.push(`${spendText(info.spend)} so far`);
    }
  }
  return parts.join(' · ');
}

/** Bytes in words as the server writes them: "700 bytes", "1 MiB", "1.5 GiB". */
export function bytes(n: number | null | undefined): string {
  if (typeof n !== 'number') {
    return '?';
  }
  for (const [unit, shift] of [
    ['TiB', 40],
    ['GiB', 30],
    ['MiB', 20],
    ['KiB', 10]
  ] as [string, number][]) {
    const size = 2 ** shift;
    if (n >= size) {
      const value = n / size;
      return `${Number.isInteger(value) ? value : value.toFixed(1)} ${unit}`;
    }
  }
  return `${n} bytes`;
}

/**
 * The Cloudhop REST API of this server (the server extension, extensions/server.py and
 * extensions/ray_api.py): the same routes `cloudhop.panel()` uses in a notebook. All the
 * logic lives on the server; this module only calls it and types its answers.
 */
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

/** GET cloudhop/api/info: where this server runs, its price and its moves. */
export interface IInfo {
  user: string | null;
  server: string;
  provider: string | null;
  region: string | null;
  instance_type: string | null;
  gpu: string | null;
  gpu_count: number;
  price_hour?: number | null;
  spot?: boolean;
  started?: number | null;
  spend?: number | null;
  /** "ledger": the hub's spend ledger counted it; "estimate": price × time since start */
  spend_source?: string | null;
  price_note?: string | null;
  /** from 80% of the user's budget: what to tell them (a notification) */
  budget?: { fraction: number; warning: boolean; message: string } | null;
  /** started from a snapshot: GET cloudhop/api/restore has its report */
  restored?: boolean;
  /** beside a Ray head: GET cloudhop/ray answers */
  ray?: boolean;
  migrations: IMigration[];
}

/**
 * What a move left out: a workspace path (`kind`, `size`, `reason`, `cache`: a cache its
 * tool rebuilds) or a kernel variable (`name`, `reason`, `path`: its notebook).
 */
export interface ISkipped {
  path?: string;
  kind?: string;
  size?: number | null;
  reason?: string;
  cache?: boolean;
  name?: string;
}

/** GET cloudhop/api/migrations/{id}: a move's state (extensions/migrate.py). */
export interface IMigration {
  id: string;
  state: string;
  target_server: string | null;
  target_url: string | null;
  bytes_total: number;
  bytes_sent: number;
  variables: { [path: string]: string[] };
  skipped: ISkipped[];
  /** what of the user's was left out, in words ("2 files (1.2 GiB)"); "" for nothing */
  left_out?: string;
  /** when each phase began (seconds since the epoch) */
  timeline?: { [phase: string]: number };
  error: string | null;
  snapshot: string | null;
  options: { [key: string]: unknown };
  started: number;
  finished: number | null;
  [key: string]: unknown;
}

/** GET cloudhop/api/gpus: this server's GPUs now, or why it has none. */
export interface IGPUs {
  gpus: {
    index: string;
    uuid: string;
    name: string;
    utilization: number | null;
    memory_used: number | null;
    memory_total: number | null;
    temperature: number | null;
  }[];
  reason: string | null;
}

/** One place to move to, as the server lists it (cheapest first). */
export interface ITarget {
  label: string;
  options: { [key: string]: unknown };
}

/** GET cloudhop/api/offers: a move's targets and what a move leaves out. */
export interface IOffers {
  targets: ITarget[];
  left_out: { patterns: string[]; max_file_bytes: number };
}

/** GET cloudhop/ray: the Ray cluster beside this server. */
export interface IRay {
  address: string | null;
  dashboard_url: string;
  nodes: { node_id: string; ip: string; head: boolean; state: string; resources: { [k: string]: number } }[];
  usage: { [resource: string]: { used: number; total: number } };
  hub: {
    requested: number;
    alive: number;
    workers: { index: number; state: string; provider: string; region: string; gpu: string; gpu_count: number; detail?: string }[];
  } | null;
  errors: string[];
  alive: number;
}

/** GET cloudhop/api/restore: the restore report of a server started from a snapshot. */
export interface IRestoreReport {
  snapshot: string;
  state: string;
  files: { [path: string]: string };
  kernels: { [path: string]: unknown };
  error?: string | null;
  [key: string]: unknown;
}

/** GET cloudhop/api/shares: who this server is shared with, and its open share links. */
export interface IShare {
  kind: 'user' | 'group';
  name: string;
  created_at: string | null;
}
export interface IShareCode {
  id: string;
  created_at: string | null;
  expires_at: string | null;
  exchange_count: number;
}
export interface IShares {
  shares: IShare[];
  codes: IShareCode[];
}
/** POST cloudhop/api/shares {"code": true}: a new share link (its code is shown once). */
export interface IShareLink {
  id: string;
  code: string;
  accept_url: string;
  full_accept_url: string | null;
  expires_at: string | null;
}

/** A refusal from the API: its HTTP status and the server's own message. */
export class APIError extends Error {
  constructor(
    readonly status: number,
    message: string
  ) {
    super(message);
  }
}

/**
 * Call `path` under the server's base URL (e.g. `cloudhop/api/info`) and return its JSON.
 * A refusal becomes an APIError carrying the server's message (which names the field).
 */
export async function request<T>(path: string, init: RequestInit = {}): Promise<T> {
  const settings = ServerConnection.makeSettings();
  const url = URLExt.join(settings.baseUrl, path);
  let response: Response;
  try {
    response = await ServerConnection.makeRequest(url, init, settings);
  } catch (error) {
    throw new APIError(0, `this server did not answer (${(error as Error).message})`);
  }
  const text = await response.text();
  let data: any = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!response.ok) {
    const message = (data && data.message) || `${response.status} ${response.statusText}`;
    throw new APIError(response.status, message);
  }
  return data as T;
}

export const api = {
  info: () => request<IInfo>('cloudhop/api/info'),
  gpus: () => request<IGPUs>('cloudhop/api/gpus'),
  offers: () => request<IOffers>('cloudhop/api/offers'),
  restore: () => request<IRestoreReport>('cloudhop/api/restore'),
  migration: (id: string) => request<IMigration>(`cloudhop/api/migrations/${encodeURIComponent(id)}`),
  move: (options: { [key: string]: unknown }) =>
    request<IMigration>('cloudhop/api/migrations', { method: 'POST', body: JSON.stringify(options) }),
  accept: (id: string) =>
    request<IMigration>(`cloudhop/api/migrations/${encodeURIComponent(id)}/accept`, { method: 'POST' }),
  shares: () => request<IShares>('cloudhop/api/shares'),
  share: (body: { code?: boolean; expires_in?: number; user?: string; group?: string }) =>
    request<IShareLink>('cloudhop/api/shares', { method: 'POST', body: JSON.stringify(body) }),
  unshare: (which: { code?: string; user?: string; group?: string }) =>
    request<unknown>(`cloudhop/api/shares?${new URLSearchParams(which as Record<string, string>)}`, { method: 'DELETE' }),
  ray: () => request<IRay>('cloudhop/ray'),
  resizeRay: (workers: number) =>
    request<unknown>('cloudhop/ray/workers', { method: 'POST', body: JSON.stringify({ workers }) })
};

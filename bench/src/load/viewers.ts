/**
 * One viewer of one run over a network, as a person opening a run page would be: the
 * ProgressService, or a bare socket.io-client, or a bare EventSource. Each records when its first
 * snapshot came, every (re)connection and loss, and the log seqs and final status it received.
 */
import { EventSource } from 'eventsource';
import { io as ioClient, type Socket } from 'socket.io-client';

/** Who views the run. */
export type ViewerSubject =
  /** `@runcast/client`'s ProgressService with default options, loaded from `clientModule`. */
  | 'progress-service'
  /** socket.io-client with `transports: ['websocket']`, otherwise its defaults, subscribing itself. */
  | 'socketio'
  /** socket.io-client with all its defaults (polling first, then the upgrade). */
  | 'socketio-defaults'
  /** The `eventsource` package on the run's SSE endpoint, with a bearer token. */
  | 'eventsource';

export interface ViewerTarget {
  subject: ViewerSubject;
  /** What to import the ProgressService from (a package name or a file URL). */
  clientModule?: string;
  url: string;
  token: string;
  runId: string;
}

/** What a viewer saw, in ms since it subscribed. */
export interface ViewerReport {
  firstSnapshotMs: number | undefined;
  firstSnapshotSeq: number | undefined;
  /** When the connection in use at the end was reached, if it then stayed up for the quiet period. */
  settledMs: number | undefined;
  /** The method in use at the end, when connected. */
  method: string | undefined;
  /** Connections reached, a switch of method included. */
  connections: number;
  /** Connections lost (cut, closed, failed after being up). */
  losses: number;
  /** The ProgressService's own count of fallbacks. */
  fallbacks: number | undefined;
  /** Log seqs in order of delivery, repeats included. */
  logSeqs: number[];
  finalStatus: string | undefined;
  /** What happened, one line per change, for reading a surprising figure. */
  timeline: string[];
}

interface WireEvent {
  type?: string;
  seq?: number;
  snapshot?: { status?: string };
  error?: { code?: string; message?: string };
}

const TERMINAL = new Set(['COMPLETED', 'FAILED', 'CANCELLED']);
const TIMELINE_LIMIT = 60;

/** The part of a ProgressService the bench uses; the 01e9b10 client has it too. */
interface ServiceLike {
  subscribeToRun(runId: string, callback: (event: WireEvent) => void): () => void;
  onConnectionChange(
    listener: (change: { method: string | null; state: string; reason: string | null }) => void,
  ): () => void;
  getStats(): { fallbacks: number };
  close(): void;
}
interface ClientModule {
  ProgressService: new (options: { baseUrl: string; token: string }) => ServiceLike;
}

export abstract class Viewer {
  private startedAt = 0;
  private firstSnapshot: { atMs: number; seq: number } | undefined;
  private connectedAt: number | undefined;
  private method: string | undefined;
  private connections = 0;
  private losses = 0;
  private finalStatus: string | undefined;
  private readonly logSeqs: number[] = [];
  private readonly timeline: string[] = [];

  constructor(protected readonly target: ViewerTarget) {}

  /** Subscribes; the clock starts just before. */
  async start(): Promise<void> {
    await this.prepare();
    this.startedAt = performance.now();
    this.open();
  }

  /** Connected on the same method, with its first snapshot, for at least `quietMs`. */
  stableFor(quietMs: number): boolean {
    return (
      this.firstSnapshot !== undefined &&
      this.connectedAt !== undefined &&
      performance.now() - this.connectedAt >= quietMs
    );
  }

  get hasSnapshot(): boolean {
    return this.firstSnapshot !== undefined;
  }

  get terminal(): boolean {
    return this.finalStatus !== undefined && TERMINAL.has(this.finalStatus);
  }

  /** Everything seen so far; `quietMs` decides whether the connection counts as settled. */
  report(quietMs: number): ViewerReport {
    const settled = this.stableFor(quietMs) && this.connectedAt !== undefined;
    return {
      firstSnapshotMs: this.firstSnapshot && this.firstSnapshot.atMs - this.startedAt,
      firstSnapshotSeq: this.firstSnapshot?.seq,
      settledMs: settled ? (this.connectedAt ?? 0) - this.startedAt : undefined,
      method: this.connectedAt === undefined ? undefined : this.method,
      connections: this.connections,
      losses: this.losses,
      fallbacks: this.fallbacks(),
      logSeqs: [...this.logSeqs],
      finalStatus: this.finalStatus,
      timeline: [...this.timeline],
    };
  }

  abstract close(): void;

  /** Loads what the viewer needs before the clock starts. */
  protected async prepare(): Promise<void> {}
  protected abstract open(): void;
  protected fallbacks(): number | undefined {
    return undefined;
  }

  protected onEvent(event: WireEvent): void {
    if (typeof event.seq !== 'number') {
      if (event.type === 'error') this.note(`run error ${event.error?.code ?? ''}`);
      return;
    }
    if (event.type === 'snapshot' && this.firstSnapshot === undefined) {
      this.firstSnapshot = { atMs: performance.now(), seq: event.seq };
      this.note(`first snapshot seq ${event.seq}`);
    }
    if (event.type === 'log') this.logSeqs.push(event.seq);
    const status = event.snapshot?.status;
    if (status) this.finalStatus = status;
  }

  /** The viewer can receive events on `method` from now on (a switch of method is a new connection). */
  protected connected(method: string): void {
    if (this.connectedAt !== undefined && this.method === method) return;
    this.connectedAt = performance.now();
    this.method = method;
    this.connections += 1;
    this.note(`connected ${method}`);
  }

  protected lost(why: string): void {
    if (this.connectedAt !== undefined) this.losses += 1;
    this.connectedAt = undefined;
    this.note(why);
  }

  protected note(line: string): void {
    if (this.timeline.length >= TIMELINE_LIMIT) return;
    this.timeline.push(`+${Math.round(performance.now() - this.startedAt)} ms ${line}`);
  }
}

/** `@runcast/client`'s ProgressService, default options, the token as its credentials. */
class ProgressServiceViewer extends Viewer {
  private service: ServiceLike | undefined;
  private module: ClientModule | undefined;

  protected override async prepare(): Promise<void> {
    this.module = (await import(this.target.clientModule ?? '@runcast/client')) as ClientModule;
  }

  protected open(): void {
    if (!this.module) throw new Error('the client module is not loaded');
    const service = new this.module.ProgressService({ baseUrl: this.target.url, token: this.target.token });
    this.service = service;
    service.onConnectionChange((change) => {
      if (change.state === 'connected' && change.method) this.connected(change.method);
      else this.lost(`${change.state} ${change.method ?? ''} ${change.reason ?? ''}`.trim());
    });
    service.subscribeToRun(this.target.runId, (event) => this.onEvent(event));
  }

  protected override fallbacks(): number | undefined {
    return this.service?.getStats().fallbacks;
  }

  close(): void {
    this.service?.close();
  }
}

/**
 * socket.io-client as an application would use it on its own: connect, subscribe on every
 * (re)connection from the last seq seen, take the acknowledgement's snapshot as the first data.
 */
class SocketIoViewer extends Viewer {
  private socket: Socket | undefined;
  private lastSeq: number | undefined;

  protected open(): void {
    const socket = ioClient(this.target.url, {
      auth: { token: this.target.token },
      forceNew: true,
      ...(this.target.subject === 'socketio' ? { transports: ['websocket'] } : {}),
    });
    this.socket = socket;
    socket.on('connect', () => {
      const since = this.lastSeq === undefined ? {} : { since: this.lastSeq };
      socket.emit(
        'subscribe',
        { run_id: this.target.runId, ...since },
        (ack: { ok: boolean; snapshot?: WireEvent; error?: { message?: string } }) => {
          if (!ack.ok || !ack.snapshot) {
            this.note(`subscribe refused: ${ack.error?.message ?? 'no snapshot'}`);
            return;
          }
          this.connected(socket.io.engine.transport.name);
          this.onEvent(ack.snapshot);
        },
      );
    });
    socket.on('run_event', (event: WireEvent) => this.onEvent(event));
    socket.on('connect_error', (err) => this.note(`connect_error ${err.message}`));
    socket.on('disconnect', (reason) => this.lost(`disconnect ${reason}`));
  }

  protected override onEvent(event: WireEvent): void {
    if (typeof event.seq === 'number') this.lastSeq = Math.max(this.lastSeq ?? 0, event.seq);
    super.onEvent(event);
  }

  close(): void {
    this.socket?.disconnect();
  }
}

/**
 * A bare EventSource on `/runs/{id}/stream`: it reconnects by itself with `Last-Event-ID`; a
 * connection counts once its snapshot arrived, since headers alone carry no data.
 */
class EventSourceViewer extends Viewer {
  private source: EventSource | undefined;

  protected open(): void {
    const { token } = this.target;
    const source = new EventSource(`${this.target.url}/api/v1/runs/${this.target.runId}/stream`, {
      fetch: (input, init) =>
        fetch(input, { ...init, headers: { ...init.headers, Authorization: `Bearer ${token}` } }),
    });
    this.source = source;
    const on = (type: string) =>
      source.addEventListener(type, (message: MessageEvent) => {
        const event = JSON.parse(String(message.data)) as WireEvent;
        if (type === 'snapshot') this.connected('sse');
        this.onEvent({ ...event, type });
      });
    for (const type of ['snapshot', 'update', 'log']) on(type);
    source.addEventListener('open', () => this.note('open'));
    source.addEventListener('error', (event) => this.lost(`error ${event.message ?? ''}`.trim()));
  }

  close(): void {
    this.source?.close();
  }
}

export function createViewer(target: ViewerTarget): Viewer {
  switch (target.subject) {
    case 'progress-service':
      return new ProgressServiceViewer(target);
    case 'socketio':
    case 'socketio-defaults':
      return new SocketIoViewer(target);
    case 'eventsource':
      return new EventSourceViewer(target);
  }
}

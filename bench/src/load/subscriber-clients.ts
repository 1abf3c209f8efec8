import { connect, type Socket } from 'node:net';
import { io as ioClient } from 'socket.io-client';
import WebSocket from 'ws';
import { requestText } from '../raw-http.js';
import { nowMs } from '../time.js';
import { type Inflated, inflateShared, SharedGunzip } from './shared-inflate.js';
import { type ClientState, scanEvent } from './tracker.js';

/** Which server and protocol the subscribers speak. */
export type SubscriberTransport =
  | 'runcast-sse'
  | 'runcast-socketio'
  | 'bare-sse'
  | 'bare-socketio'
  | 'bare-ws';

export interface SubscriberTarget {
  transport: SubscriberTransport;
  host: string;
  port: number;
  /** Runcast's access token; the baselines take none. */
  token?: string;
  /** Reconnect and resume from the last seq when the server drops the connection (as the client library does). */
  resume: boolean;
  /** Socket.IO client: the `socket.io-client` package, or the lean protocol client over `ws`. */
  socketIoClient: 'official' | 'lean';
  /** Runcast: ask for delta updates (`?delta=1`, `subscribe {delta: true}`). */
  delta?: boolean;
  /** SSE: accept a gzip stream (`Accept-Encoding: gzip`), inflated as it comes. */
  gzip?: boolean;
  /** Lean Socket.IO: offer permessage-deflate. */
  deflate?: boolean;
}

/** One subscriber connection. `open` resolves once the opening snapshot arrived. */
export interface Subscriber {
  open(): Promise<void>;
  close(): void;
}

const MAX_RECONNECTS = 50;
const OPEN_TIMEOUT_MS = 30_000;

/**
 * What every transport shares: the open promise, the resume-or-drop decision on a lost connection,
 * and closing for good.
 */
abstract class BaseSubscriber implements Subscriber {
  protected closedByUs = false;
  private opened = false;
  /** Counts connections, so that the second of `error` and `close` is not a second loss. */
  private generation = 0;
  private lostGeneration = 0;
  private settleOpen: ((err?: Error) => void) | undefined;

  constructor(
    protected readonly target: SubscriberTarget,
    protected readonly state: ClientState,
  ) {}

  open(): Promise<void> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(
        () => this.openFailed(new Error('no opening snapshot in time')),
        OPEN_TIMEOUT_MS,
      );
      this.settleOpen = (err) => {
        clearTimeout(timer);
        this.settleOpen = undefined;
        if (err) reject(err);
        else resolve();
      };
      this.reconnect();
    });
  }

  private reconnect(): void {
    this.generation++;
    this.connect(this.generation);
  }

  close(): void {
    this.closedByUs = true;
    this.state.finished = true;
    this.disconnect();
  }

  /**
   * Opens the transport, resuming from `state.lastSeq` when it is not the first connection; its
   * handlers report a loss with `lost(generation, …)`.
   */
  protected abstract connect(generation: number): void;
  protected abstract disconnect(): void;

  protected get resuming(): boolean {
    return this.opened;
  }

  /** The opening snapshot arrived. */
  protected openDone(): void {
    this.opened = true;
    this.settleOpen?.();
  }

  protected openFailed(err: Error): void {
    this.state.lastError = err.message;
    if (this.settleOpen) {
      this.closedByUs = true;
      this.disconnect();
      this.state.finished = true;
      this.settleOpen(err);
    }
  }

  /** The connection ended: fine after the terminal update; otherwise resume or count a drop. */
  protected lost(generation: number, reason: string): void {
    if (generation !== this.generation || generation === this.lostGeneration) return;
    this.lostGeneration = generation;
    if (this.closedByUs || this.settleOpen) {
      if (this.settleOpen) this.openFailed(new Error(reason));
      return;
    }
    if (this.state.terminalSeq !== undefined) {
      this.state.finished = true;
      return;
    }
    this.state.lastError = reason;
    if (!this.target.resume || this.state.reconnects >= MAX_RECONNECTS) {
      this.state.drops++;
      this.state.finished = true;
      return;
    }
    this.state.reconnects++;
    setTimeout(
      () => {
        if (!this.closedByUs) this.reconnect();
      },
      100 + Math.random() * 400,
    );
  }
}

/**
 * SSE over a raw TCP socket: Runcast's `/runs/{id}/stream` (resuming with Last-Event-ID) or the
 * bare `/stream`. It reads the status line and decodes the chunked body itself: `node:http`'s
 * response stream costs the load CPU about twice as much per event. The bench's payloads are
 * ASCII, so the body is read as latin1 and chunk sizes are character counts.
 */
class SseSubscriber extends BaseSubscriber {
  private socket: Socket | undefined;
  private head: string | undefined = '';
  private chunked = false;
  /** Characters left in the current chunk; -1 while reading a size line. */
  private chunkLeft = -1;
  /** Line ends still to skip after a chunk's data. */
  private skipCrlf = 0;
  private sizeLine = '';
  private partial = '';
  /** Inflates a gzip stream's body, chunk by chunk, before it is read as frames. */
  private gunzip: SharedGunzip | undefined;
  /** The gzip stream's current chunk, until it is whole. */
  private piece = '';

  protected connect(generation: number): void {
    const { target, state } = this;
    const runcast = target.transport === 'runcast-sse';
    const headers: Record<string, string> = { accept: 'text/event-stream' };
    if (runcast && target.token) headers.authorization = `Bearer ${target.token}`;
    if (runcast && this.resuming) headers['last-event-id'] = String(state.lastSeq);
    if (target.gzip) headers['accept-encoding'] = 'gzip';
    const path = runcast
      ? `/api/v1/runs/${state.runId}/stream${target.delta ? '?delta=1' : ''}`
      : `/stream?run=${state.runId}`;
    this.gunzip = undefined;
    this.piece = '';
    this.head = '';
    this.chunked = false;
    this.chunkLeft = -1;
    this.skipCrlf = 0;
    this.sizeLine = '';
    this.partial = '';
    const socket = connect({ host: target.host, port: target.port });
    this.socket = socket;
    socket.setEncoding('latin1');
    socket.on('connect', () => socket.write(requestText('GET', path, headers)));
    socket.on('data', (data: string) => this.onData(generation, data));
    socket.on('error', (err) => this.lost(generation, `sse: ${err.message}`));
    socket.on('close', () => this.lost(generation, 'sse: stream ended'));
  }

  protected disconnect(): void {
    this.socket?.destroy();
  }

  private onData(generation: number, data: string): void {
    if (this.head !== undefined) {
      this.head += data;
      const end = this.head.indexOf('\r\n\r\n');
      if (end < 0) return;
      const status = Number(this.head.slice(9, 12));
      const rest = this.head.slice(end + 4);
      this.chunked = /\r\ntransfer-encoding:\s*chunked/i.test(this.head.slice(0, end));
      if (/\r\ncontent-encoding:\s*gzip/i.test(this.head.slice(0, end))) {
        if (!this.chunked) {
          this.socket?.destroy();
          this.lost(generation, 'sse: a gzip stream not chunked');
          return;
        }
        this.gunzip = new SharedGunzip();
      }
      this.head = undefined;
      if (status === 204) {
        // The run is over and we have its final seq: nothing more to receive.
        this.state.finished = true;
        this.socket?.destroy();
        return;
      }
      if (status !== 200) {
        this.socket?.destroy();
        this.lost(generation, `sse: status ${status}`);
        return;
      }
      if (rest.length === 0) return;
      data = rest;
    }
    if (!this.chunked) {
      this.onBody(data);
      return;
    }
    let text = '';
    let at = 0;
    while (at < data.length) {
      if (this.chunkLeft > 0) {
        const take = Math.min(this.chunkLeft, data.length - at);
        if (this.gunzip) this.piece += data.slice(at, at + take);
        else text += data.slice(at, at + take);
        at += take;
        this.chunkLeft -= take;
        if (this.chunkLeft === 0) {
          this.skipCrlf = 2;
          if (this.gunzip && !this.onPiece(generation)) return;
        }
      } else if (this.skipCrlf > 0) {
        at++;
        this.skipCrlf--;
        if (this.skipCrlf === 0) this.chunkLeft = -1;
      } else {
        const eol = data.indexOf('\r\n', at);
        if (eol < 0) {
          this.sizeLine += data.slice(at);
          break;
        }
        const size = Number.parseInt(this.sizeLine + data.slice(at, eol), 16);
        this.sizeLine = '';
        at = eol + 2;
        if (size === 0) {
          // The last chunk: the server ended the stream (after the terminal update).
          if (text) this.onBody(text);
          this.socket?.destroy();
          return;
        }
        this.chunkLeft = size;
      }
    }
    if (text) this.onBody(text);
  }

  /** Body bytes as they came, from a stream that is not gzip. */
  private onBody(text: string): void {
    this.onText(text);
  }

  /**
   * A whole chunk of a gzip stream: one server write, ending on a sync flush. False when it does
   * not inflate (the stream is then lost, unless it had already given the run's end).
   */
  private onPiece(generation: number): boolean {
    const piece = this.piece;
    this.piece = '';
    let inflated: Inflated;
    try {
      inflated = (this.gunzip as SharedGunzip).inflate(piece);
    } catch (err) {
      this.socket?.destroy();
      if (!this.state.finished) this.lost(generation, `sse: gzip: ${(err as Error).message}`);
      return false;
    }
    this.onText(inflated.text);
    return true;
  }

  private onText(chunk: string): void {
    const receivedAt = nowMs();
    const text = this.partial.length > 0 ? this.partial + chunk : chunk;
    let start = 0;
    for (let end = text.indexOf('\n\n'); end >= 0; end = text.indexOf('\n\n', start)) {
      this.onFrame(text, start, end, receivedAt);
      start = end + 2;
    }
    this.partial = start < text.length ? text.slice(start) : '';
  }

  private onFrame(text: string, start: number, end: number, receivedAt: number): void {
    const dataAt = text.indexOf('data: ', start);
    if (dataAt < 0 || dataAt >= end) return; // `retry:` alone
    const eventAt = text.indexOf('event: ', start);
    if (eventAt >= 0 && eventAt < dataAt) {
      const code = text.charCodeAt(eventAt + 7);
      if (code === 107) return; // keepalive
      if (code === 114) return; // reconnect: the stream ends next and we resume
    }
    const scanned = scanEvent(text, dataAt + 6, end);
    if (!scanned) return;
    this.state.onEvent(scanned, receivedAt, () => JSON.parse(text.slice(dataAt + 6, end)));
    if (scanned.kind === 'snapshot') this.openDone();
  }
}

/**
 * The Socket.IO protocol (Engine.IO v4, WebSocket transport) spoken directly over `ws`: open,
 * CONNECT with the token, `subscribe` with an ack, `run_event` events, ping/pong. It decodes
 * only what it counts, where `socket.io-client` parses every packet.
 */
class LeanSocketIoSubscriber extends BaseSubscriber {
  private socket: WebSocket | undefined;

  protected connect(generation: number): void {
    const { target } = this;
    const socket = new WebSocket(`ws://${target.host}:${target.port}/socket.io/?EIO=4&transport=websocket`, {
      perMessageDeflate: target.deflate === true,
      skipUTF8Validation: true,
    });
    this.socket = socket;
    if (target.deflate === true) socket.once('open', () => inflateShared(socket));
    socket.on('message', (data: Buffer) => this.onPacket(socket, data.toString()));
    socket.on('error', (err) => this.lost(generation, `socket.io: ${err.message}`));
    socket.on('close', () => this.lost(generation, 'socket.io: closed'));
  }

  protected disconnect(): void {
    this.socket?.terminate();
  }

  private onPacket(socket: WebSocket, packet: string): void {
    const receivedAt = nowMs();
    const engineType = packet.charCodeAt(0);
    if (engineType === 50) {
      socket.send('3'); // ping -> pong
      return;
    }
    if (engineType === 48) {
      // Engine.IO open: CONNECT to the main namespace with the credentials.
      socket.send(`40${JSON.stringify(this.target.token ? { token: this.target.token } : {})}`);
      return;
    }
    if (engineType !== 52) return;
    const type = packet.charCodeAt(1);
    if (type === 50) {
      const scanned = scanEvent(packet, 2);
      if (scanned)
        this.state.onEvent(scanned, receivedAt, () => (JSON.parse(packet.slice(2)) as unknown[])[1]);
    } else if (type === 48) {
      const since = this.resuming ? { since: this.state.lastSeq } : {};
      const delta = this.target.delta ? { delta: true } : {};
      socket.send(`421${JSON.stringify(['subscribe', { run_id: this.state.runId, ...since, ...delta }])}`);
    } else if (type === 51) {
      const [ack] = JSON.parse(packet.slice(packet.indexOf('['))) as [
        {
          ok: boolean;
          snapshot?: { seq: number; snapshot: { status: string } };
          error?: { message: string };
        },
      ];
      if (!ack.ok || !ack.snapshot) {
        this.openFailed(new Error(`subscribe refused: ${ack.error?.message ?? 'no snapshot'}`));
        return;
      }
      this.state.onSnapshot(ack.snapshot.seq, isTerminalStatus(ack.snapshot.snapshot.status));
      this.openDone();
    } else if (type === 52) {
      this.openFailed(new Error(`connect_error ${packet.slice(2)}`));
    } else if (type === 49) {
      socket.close();
    }
  }
}

function isTerminalStatus(status: string): boolean {
  return status === 'COMPLETED' || status === 'FAILED' || status === 'CANCELED';
}

interface EventObject {
  seq: number;
  type: string;
  snapshot?: { status: string };
  /** A delta update's changes. */
  patch?: { status?: string };
}

/** `socket.io-client` itself, one Manager per subscriber. */
class OfficialSocketIoSubscriber extends BaseSubscriber {
  private socket: ReturnType<typeof ioClient> | undefined;

  protected connect(generation: number): void {
    const { target, state } = this;
    const socket = ioClient(`http://${target.host}:${target.port}`, {
      transports: ['websocket'],
      auth: target.token ? { token: target.token } : {},
      reconnection: false,
      forceNew: true,
      timeout: OPEN_TIMEOUT_MS,
    });
    this.socket = socket;
    socket.on('connect', () => {
      const since = this.resuming ? { since: state.lastSeq } : {};
      socket.emit(
        'subscribe',
        { run_id: state.runId, ...since, ...(target.delta ? { delta: true } : {}) },
        (ack: { ok: boolean; snapshot?: EventObject; error?: { message: string } }) => {
          if (!ack.ok || !ack.snapshot) {
            this.openFailed(new Error(`subscribe refused: ${ack.error?.message ?? 'no snapshot'}`));
            return;
          }
          state.onSnapshot(ack.snapshot.seq, isTerminalStatus(ack.snapshot.snapshot?.status ?? ''));
          this.openDone();
        },
      );
    });
    socket.on('run_event', (event: EventObject) => {
      const kind =
        event.type === 'update' || event.type === 'log' || event.type === 'snapshot' ? event.type : 'other';
      state.onEvent(
        {
          seq: event.seq,
          kind,
          terminal: isTerminalStatus(event.snapshot?.status ?? event.patch?.status ?? ''),
        },
        nowMs(),
        () => event,
      );
    });
    socket.on('connect_error', (err) => this.lost(generation, `socket.io-client: ${err.message}`));
    socket.on('disconnect', (reason) => this.lost(generation, `socket.io-client: ${reason}`));
  }

  protected disconnect(): void {
    this.socket?.disconnect();
  }
}

/** A bare `ws` client of the ws baseline: the first message is the opening snapshot. */
class WsSubscriber extends BaseSubscriber {
  private socket: WebSocket | undefined;

  protected connect(generation: number): void {
    const { target, state } = this;
    const socket = new WebSocket(`ws://${target.host}:${target.port}/?run=${state.runId}`, {
      perMessageDeflate: false,
      skipUTF8Validation: true,
    });
    this.socket = socket;
    socket.on('message', (data: Buffer) => {
      const receivedAt = nowMs();
      const text = data.toString();
      const scanned = scanEvent(text);
      if (!scanned) return;
      state.onEvent(scanned, receivedAt, () => JSON.parse(text));
      if (scanned.kind === 'snapshot') this.openDone();
    });
    socket.on('error', (err) => this.lost(generation, `ws: ${err.message}`));
    socket.on('close', () => this.lost(generation, 'ws: closed'));
  }

  protected disconnect(): void {
    this.socket?.terminate();
  }
}

export function createSubscriber(target: SubscriberTarget, state: ClientState): Subscriber {
  switch (target.transport) {
    case 'runcast-sse':
    case 'bare-sse':
      return new SseSubscriber(target, state);
    case 'runcast-socketio':
    case 'bare-socketio':
      return target.socketIoClient === 'official'
        ? new OfficialSocketIoSubscriber(target, state)
        : new LeanSocketIoSubscriber(target, state);
    case 'bare-ws':
      return new WsSubscriber(target, state);
  }
}

import type { SubscribeAck, SubscribeRequest } from '@runcast/protocol';
import type { Socket } from 'socket.io-client';
import { RUN_ERROR_CODES, RuncastError, wireCode } from '../errors.js';
import { HeldStates, type ReceivedEvent } from '../held-states.js';
import {
  asksDelta,
  currentToken,
  refusedDelta,
  type Transport,
  type TransportContext,
  type TransportHandlers,
  takeFallback,
} from '../transport.js';

const ACK_TIMEOUT_MS = 15_000;

/**
 * Socket.IO over the WebSocket transport only: the ProgressService's own fallback replaces
 * Socket.IO's long-polling, and the service, not Socket.IO, decides when to reconnect.
 */
export class WebSocketTransport implements Transport {
  readonly method = 'websocket' as const;
  private socket: Socket | undefined;
  private handlers: TransportHandlers | undefined;
  private readonly runs = new Set<string>();
  /** Each run's state on this socket, which its delta updates apply to. */
  private readonly states = new HeldStates();
  private closed = false;
  private opened = false;
  /** A delta that did not apply: the run is opened again, for a snapshot. */
  private readonly resubscribe = (runId: string): void => this.resume(runId);

  constructor(private readonly context: TransportContext) {}

  /** Hands an event on, a delta made whole; one that does not apply asks for a snapshot instead. */
  private deliver(event: ReceivedEvent): void {
    const whole = this.states.take(event, this.resubscribe);
    if (whole) this.handlers?.onEvent(whole);
  }

  async connect(runIds: readonly string[], handlers: TransportHandlers): Promise<void> {
    this.handlers = handlers;
    for (const runId of runIds) this.runs.add(runId);
    const token = await currentToken(this.context.token);
    const auth: Record<string, string> = { transport: 'websocket' };
    if (token) auth.token = token;
    const fallback = takeFallback(this.context);
    if (fallback) {
      auth.fallback_from = fallback.from;
      auth.fallback_reason = fallback.reason;
    }
    if (this.closed) throw new RuncastError('CLOSED', 'transport closed');
    const socket = this.context.env.createSocket(this.context.wsUrl, {
      path: this.context.socketPath,
      transports: ['websocket'],
      reconnection: false,
      forceNew: true,
      withCredentials: true,
      auth,
    });
    this.socket = socket;
    return new Promise<void>((resolve, reject) => {
      let settled = false;
      const settle = (error?: RuncastError) => {
        if (settled) return;
        settled = true;
        if (error) reject(error);
        else {
          this.opened = true;
          resolve();
        }
      };
      socket.on('connect_error', (err: Error & { data?: { code?: string } }) => {
        const error = new RuncastError(wireCode(err.data?.code), err.message);
        this.shutdown();
        settle(error);
      });
      socket.on('disconnect', (reason: string) => {
        const error = new RuncastError('DISCONNECTED', `socket disconnected: ${reason}`);
        const wasOpen = this.opened;
        this.shutdown();
        if (!settled) settle(error);
        else if (wasOpen) this.handlers?.onClose(error);
      });
      socket.on('run_event', (event: ReceivedEvent) => this.deliver(event));
      socket.on('connect', () => {
        if (this.runs.size === 0) settle();
        for (const runId of this.runs) this.sendSubscribe(runId, settle);
      });
    });
  }

  private sendSubscribe(runId: string, settle?: (error?: RuncastError) => void): void {
    const socket = this.socket;
    if (!socket) return;
    const since = this.context.cursor(runId);
    const payload: SubscribeRequest = { run_id: runId };
    if (since !== undefined) payload.since = since;
    if (asksDelta(this.context)) payload.delta = true;
    socket
      .timeout(ACK_TIMEOUT_MS)
      .emitWithAck('subscribe', payload)
      .then((ack: SubscribeAck) => {
        if (!this.runs.has(runId) || this.closed) return;
        if (ack.ok) {
          this.deliver(ack.snapshot);
          settle?.();
        } else if (refusedDelta(this.context, payload.delta === true, ack.error.code)) {
          // A server older than deltas: subscribe again, for whole updates.
          this.sendSubscribe(runId, settle);
        } else if (RUN_ERROR_CODES.has(ack.error.code)) {
          this.runs.delete(runId);
          this.handlers?.onEvent({ run_id: runId, type: 'error', error: ack.error });
          settle?.();
        } else {
          this.fail(new RuncastError(wireCode(ack.error.code), ack.error.message), settle);
        }
      })
      .catch(() => this.fail(new RuncastError('TIMEOUT', `no answer to subscribe ${runId}`), settle));
  }

  private fail(error: RuncastError, settle?: (error?: RuncastError) => void): void {
    const wasOpen = this.opened;
    this.shutdown();
    if (settle && !wasOpen) settle(error);
    else if (wasOpen) this.handlers?.onClose(error);
  }

  subscribe(runId: string): void {
    if (this.runs.has(runId)) return;
    this.runs.add(runId);
    if (this.socket?.connected) this.sendSubscribe(runId);
  }

  resume(runId: string): void {
    // The server opens a run it already follows again from the new cursor.
    if (this.runs.has(runId) && this.socket?.connected) this.sendSubscribe(runId);
  }

  unsubscribe(runId: string): void {
    if (!this.runs.delete(runId)) return;
    this.states.forget(runId);
    if (this.socket?.connected) this.socket.emit('unsubscribe', { run_id: runId });
  }

  private shutdown(): void {
    if (this.closed) return;
    this.closed = true;
    this.opened = false;
    const socket = this.socket;
    this.socket = undefined;
    if (socket) {
      socket.removeAllListeners();
      socket.disconnect();
    }
  }

  close(): void {
    this.shutdown();
  }
}

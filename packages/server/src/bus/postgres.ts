import { randomBytes } from 'node:crypto';
import type { RunEvent } from '@runcast/protocol';
import pg from 'pg';
import { changeEvents } from '../runs/snapshot.js';
import type { RunChange } from '../store/store.js';
import type { Bus, BusMessage, BusMessageType, CommitNotifier, MessageOf } from './bus.js';
import { MemoryBus } from './memory.js';

/** PostgreSQL's limit on a NOTIFY payload is 8,000 bytes; what does not fit travels as a pointer. */
const MAX_PAYLOAD_BYTES = 7900;
const CHANNEL = 'runcast';
/** How a payload's line starts: one run event, or another message. */
const EVENT_LINE = 'e';
const MESSAGE_LINE = 'm';

export interface PostgresBusOptions {
  connectionString: string;
  /** How often the listener proves it is alive by hearing its own heartbeat. */
  heartbeatMs?: number;
  /** A listener that has not heard its own heartbeat for this long is replaced. */
  deadAfterMs?: number;
  /** Where connection failures are reported (they are retried). */
  onError?: (err: unknown) => void;
  /**
   * The store writes to the same database and sends each commit's run events inside the commit
   * (`commitNotifier`): they reach the other nodes in commit order, with no round trip of their
   * own, and `publish` tells only this node's listeners of them.
   */
  eventsInCommits?: boolean;
}

/**
 * The Bus between nodes, on PostgreSQL `LISTEN/NOTIFY` — no engine beside the database. A
 * message reaches this node's listeners at once and the other nodes through one notification
 * channel; events too large for a notification travel as `run-reached` (the receivers read them
 * from the store). Nothing is lost for good: the listener hears its own heartbeat, and one that
 * stops hearing it, or whose connection drops, is replaced, and this node's listeners are told to
 * `resync` (catch up from the store). A sender that reconnects asks every node to resync.
 */
export class PostgresBus implements Bus {
  /** This node's id: its own notifications are not delivered twice. */
  readonly nodeId = randomBytes(6).toString('hex');
  private readonly local: MemoryBus;
  private listener: pg.Client | undefined;
  private sender: pg.Client | undefined;
  private senderReady: Promise<pg.Client> | undefined;
  /** Messages waiting for the sender, sent in order, several per notification. */
  private outbox: BusMessage[] = [];
  private sending = false;
  private heartbeat: NodeJS.Timeout | undefined;
  private lastHeardMs = Date.now();
  private closed = false;
  private reconnecting = false;
  /** Times the listener was replaced (tests and metrics). */
  listenerRestarts = 0;
  /** The PostgreSQL backend PID of the listening session (what an operator would terminate). */
  listenerPid: number | undefined;
  private senderConnections = 0;

  constructor(private readonly options: PostgresBusOptions) {
    this.local = new MemoryBus(options.onError);
    this.commitNotifier = options.eventsInCommits
      ? {
          channel: CHANNEL,
          payloads: (changes: readonly RunChange[]) =>
            envelopes(
              this.nodeId,
              changes.map((change) => ({ type: 'run-events', events: changeEvents(change) })),
            ),
        }
      : undefined;
  }

  /** Connects the listener and starts the heartbeat; resolves once LISTEN is in place. */
  async start(): Promise<void> {
    await this.listen();
    const heartbeatMs = this.options.heartbeatMs ?? 1000;
    const deadAfterMs = this.options.deadAfterMs ?? 3 * heartbeatMs;
    this.heartbeat = setInterval(() => {
      // An empty notification: this node's listener hears it when both connections work.
      void this.notify(envelope(this.nodeId, []));
      if (Date.now() - this.lastHeardMs > deadAfterMs) void this.replaceListener('no heartbeat heard');
    }, heartbeatMs);
    this.heartbeat.unref();
  }

  readonly commitNotifier: CommitNotifier | undefined;

  publish(message: BusMessage): void {
    this.local.publish(message);
    if (message.type === 'run-events' && this.commitNotifier) return;
    this.outbox.push(message);
    if (!this.sending) void this.flush();
  }

  subscribe<T extends BusMessageType>(type: T, listener: (message: MessageOf<T>) => void): () => void {
    return this.local.subscribe(type, listener);
  }

  async close(): Promise<void> {
    this.closed = true;
    clearInterval(this.heartbeat);
    await Promise.allSettled([this.listener?.end(), this.sender?.end()]);
    await this.local.close();
  }

  /** Opens the listening connection: every notification of the channel, from every node. */
  private async listen(): Promise<void> {
    const client = new pg.Client({ connectionString: this.options.connectionString });
    client.on('error', (err) => {
      this.options.onError?.(err);
      void this.replaceListener('connection failed');
    });
    client.on('notification', (notification) => {
      this.lastHeardMs = Date.now();
      if (notification.channel === CHANNEL && notification.payload) this.received(notification.payload);
    });
    await client.connect();
    await client.query(`LISTEN ${CHANNEL}`);
    const { rows } = await client.query<{ pid: number }>('SELECT pg_backend_pid() AS pid');
    this.listenerPid = rows[0]?.pid;
    this.listener = client;
    this.lastHeardMs = Date.now();
  }

  /** Replaces a listener that died or went deaf, then tells this node to catch up. */
  private async replaceListener(why: string): Promise<void> {
    if (this.closed || this.reconnecting) return;
    this.reconnecting = true;
    this.listenerRestarts++;
    const old = this.listener;
    this.listener = undefined;
    old?.removeAllListeners('notification');
    void old?.end().catch(() => {});
    try {
      for (let attempt = 0; !this.closed; attempt++) {
        try {
          await this.listen();
          break;
        } catch (err) {
          this.options.onError?.(
            Object.assign(new Error(`bus listener (${why}): ${String(err)}`), { cause: err }),
          );
          await new Promise((resolve) => setTimeout(resolve, Math.min(5000, 100 * 2 ** attempt)));
        }
      }
    } finally {
      this.reconnecting = false;
    }
    // Whatever was notified while no one listened is in the store.
    if (!this.closed) this.local.publish({ type: 'resync' });
  }

  private received(payload: string): void {
    // This node's own messages went to its listeners when they were published: not even parsed.
    if (payload.startsWith(this.nodeId)) return;
    for (const message of messagesOf(payload)) this.local.publish(message);
  }

  /** Sends the outbox in order, as many messages per notification as fit. */
  private async flush(): Promise<void> {
    this.sending = true;
    try {
      while (this.outbox.length > 0 && !this.closed) {
        for (const payload of envelopes(this.nodeId, this.outbox.splice(0))) await this.notify(payload);
      }
    } finally {
      this.sending = false;
    }
  }

  /** One notification (an envelope of this node's messages; with none, a heartbeat). */
  private async notify(payload: string): Promise<void> {
    try {
      const sender = await this.connectedSender();
      await sender.query('SELECT pg_notify($1, $2)', [CHANNEL, payload]);
    } catch (err) {
      // Lost with the connection; the next sender asks every node to resync.
      this.options.onError?.(err);
      this.dropSender();
    }
  }

  private dropSender(): void {
    const sender = this.sender;
    this.sender = undefined;
    this.senderReady = undefined;
    void sender?.end().catch(() => {});
  }

  /** The sending connection; a replacement first asks every node to resync (messages may be lost). */
  private connectedSender(): Promise<pg.Client> {
    if (this.sender) return Promise.resolve(this.sender);
    this.senderReady ??= (async () => {
      const client = new pg.Client({ connectionString: this.options.connectionString });
      client.on('error', (err) => {
        this.options.onError?.(err);
        if (this.sender === client) this.dropSender();
      });
      await client.connect();
      // A notification is not data: the tables are the truth, and a lost one is caught up from
      // them. Its transaction need not wait for the WAL to reach the disk.
      await client.query('SET synchronous_commit = off');
      if (this.senderConnections++ > 0) {
        await client.query('SELECT pg_notify($1, $2)', [
          CHANNEL,
          envelope(this.nodeId, linesOf({ type: 'resync' })),
        ]);
      }
      this.sender = client;
      return client;
    })().catch((err: unknown) => {
      this.senderReady = undefined;
      throw err;
    });
    return this.senderReady;
  }
}

/**
 * The payload of one notification: the sending node's id, then one line per message. A line is
 * `e` and one run event's JSON (consecutive lines of one run's consecutive seqs are read as one
 * `run-events` message), or `m` and any other message's JSON. JSON never holds a raw line break.
 */
function envelope(nodeId: string, lines: readonly string[]): string {
  return lines.length === 0 ? nodeId : `${nodeId}\n${lines.join('\n')}`;
}

/** A message's lines; events that would not fit a notification alone travel as a `run-reached` pointer. */
function linesOf(message: BusMessage): string[] {
  if (message.type !== 'run-events') return [`${MESSAGE_LINE}${JSON.stringify(message)}`];
  const lines = message.events.map((event) => `${EVENT_LINE}${JSON.stringify(event)}`);
  let size = 0;
  for (const line of lines) size += Buffer.byteLength(line) + 1;
  const last = message.events[message.events.length - 1];
  if (size <= MAX_PAYLOAD_BYTES || !last) return lines;
  return [`${MESSAGE_LINE}${JSON.stringify({ type: 'run-reached', run_id: last.run_id, seq: last.seq })}`];
}

/** `messages` in order, as few notification payloads as fit PostgreSQL's limit. */
function envelopes(nodeId: string, messages: readonly BusMessage[]): string[] {
  const payloads: string[] = [];
  let batch: string[] = [];
  let bytes = 0;
  for (const message of messages) {
    const lines = linesOf(message);
    let size = 0;
    for (const line of lines) size += Buffer.byteLength(line) + 1;
    if (batch.length > 0 && bytes + size > MAX_PAYLOAD_BYTES) {
      payloads.push(envelope(nodeId, batch));
      batch = [];
      bytes = 0;
    }
    batch.push(...lines);
    bytes += size;
  }
  if (batch.length > 0) payloads.push(envelope(nodeId, batch));
  return payloads;
}

/**
 * The messages of a payload from another node, in order; a line that does not parse is left
 * out (what it carried is read from the store when the gap shows).
 */
export function messagesOf(payload: string): BusMessage[] {
  const messages: BusMessage[] = [];
  let events: RunEvent[] = [];
  let json: string[] = [];
  const endEvents = () => {
    if (events.length === 0) return;
    messages.push({ type: 'run-events', events, json });
    events = [];
    json = [];
  };
  const lines = payload.split('\n');
  for (let i = 1; i < lines.length; i++) {
    const line = lines[i] as string;
    try {
      if (line.startsWith(EVENT_LINE)) {
        const text = line.slice(EVENT_LINE.length);
        const event = JSON.parse(text) as RunEvent;
        const before = events[events.length - 1];
        if (before && (before.run_id !== event.run_id || before.seq + 1 !== event.seq)) endEvents();
        events.push(event);
        json.push(text);
      } else if (line.startsWith(MESSAGE_LINE)) {
        endEvents();
        messages.push(JSON.parse(line.slice(MESSAGE_LINE.length)) as BusMessage);
      }
    } catch {
      // Left out; the events after it are a message of their own (a message is gapless).
      endEvents();
    }
  }
  endEvents();
  return messages;
}

/**
 * The control channel between the harness and the processes it starts: Node's IPC channel
 * (`process.send`). It needs no port of its own and adds nothing to the measured HTTP traffic.
 */

/** A request from the harness: `cmd` names the handler, the rest are its arguments. */
export interface CommandMessage {
  id: number;
  cmd: string;
  args?: unknown;
}

/** The answer to one request. */
export type ReplyMessage =
  | { id: number; ok: true; result: unknown }
  | { id: number; ok: false; error: string };

/** Sent once by a child when it is ready for commands. */
export interface ReadyMessage {
  type: 'ready';
  info?: unknown;
}

export type Handler = (args: unknown) => unknown;

function isCommand(message: unknown): message is CommandMessage {
  return (
    typeof message === 'object' &&
    message !== null &&
    typeof (message as CommandMessage).id === 'number' &&
    typeof (message as CommandMessage).cmd === 'string'
  );
}

/**
 * Answers the harness's commands with `handlers`. When the harness goes away (its channel
 * closes), `onOrphaned` runs — by default the process exits — so that no child outlives a run.
 */
export function serveCommands(
  handlers: Record<string, Handler>,
  options: { info?: unknown; onOrphaned?: () => void; announce?: boolean } = {},
): void {
  const send = process.send?.bind(process);
  if (!send) throw new Error('this process must be started by the bench harness (no IPC channel)');
  process.on('message', (message: unknown) => {
    if (!isCommand(message)) return;
    const handler = handlers[message.cmd];
    if (!handler) {
      send({ id: message.id, ok: false, error: `unknown command ${message.cmd}` } satisfies ReplyMessage);
      return;
    }
    Promise.resolve()
      .then(() => handler(message.args))
      .then(
        (result) => send({ id: message.id, ok: true, result: result ?? null } satisfies ReplyMessage),
        (err: unknown) =>
          send({
            id: message.id,
            ok: false,
            error: err instanceof Error ? (err.stack ?? err.message) : String(err),
          } satisfies ReplyMessage),
      );
  });
  process.on('disconnect', options.onOrphaned ?? (() => process.exit(0)));
  if (options.announce !== false) send({ type: 'ready', info: options.info } satisfies ReadyMessage);
}

/** Memory of the process after a full collection when `--expose-gc` is on. */
export function memoryAfterGc(): NodeJS.MemoryUsage & { gc: boolean } {
  const gc = (globalThis as { gc?: () => void }).gc;
  if (gc) {
    gc();
    gc();
  }
  return { ...process.memoryUsage(), gc: gc !== undefined };
}

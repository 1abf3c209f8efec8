import { basename, join } from 'node:path';
import {
  type GitMirrorConfig as Config,
  GIT_MIRROR_STAGES,
  GitMirrorConfig,
  type Stats,
} from '@runcast/protocol';
import { Compile } from 'typebox/compile';
import { AppError } from '../../errors.js';
import { type ExecutionContext, ExecutionError, type Executor } from '../executor.js';
import { type GitAuth, git, parseRefs } from '../git.js';
import { GitProgressSplitter, parseGitProgress, stageFraction } from '../git-progress.js';
import { repositoryAddressProblem } from '../repository-url.js';
import { isSealed, type SecretBox } from '../secrets.js';

type Stage = (typeof GIT_MIRROR_STAGES)[number];

/** Share of the whole run each stage stands for, in percent. */
const WEIGHTS: Record<Stage, number> = {
  DISCOVERY: 5,
  EXPORT: 40,
  TRANSFORM: 5,
  PLAN: 5,
  APPLY: 40,
  VERIFY: 5,
};

/** GitLab-only refs that have no meaning on another host. */
const HOST_ONLY_REFS = ['refs/merge-requests/', 'refs/pipelines/', 'refs/keep-around/', 'refs/environments/'];

/** Test seams: a hook runs between APPLY and VERIFY. */
export interface GitMirrorHooks {
  beforeVerify?(repository: { source: string; target: string }): Promise<void>;
}

export interface GitMirrorOptions {
  /** Local paths and `file://` URLs are accepted as repositories (RUNCAST_GIT_ALLOW_LOCAL). */
  allowLocal?: boolean;
  hooks?: GitMirrorHooks;
}

interface Planned {
  /** Ref in the local mirror → ref on the target. */
  sourceRef: string;
  targetRef: string;
  sha: string;
  action: 'create' | 'update' | 'unchanged';
  fastForward: boolean;
}

interface Repository {
  index: number;
  name: string;
  source: string;
  target: string;
  sourceAuth: GitAuth;
  targetAuth: GitAuth;
  mirror: string;
  desired: Map<string, { sourceRef: string; sha: string }>;
  plan: Planned[];
  failed: boolean;
}

const validate = Compile(GitMirrorConfig);
const SECRET_KEYS = ['source_token', 'target_token'] as const;

/** `https://user:secret@host/x` → `https://***@host/x`, for anything written to a log. */
export function redactUrl(url: string): string {
  return url.replace(/^([a-z][a-z0-9+.-]*:\/\/)[^/@]+@/i, '$1***@');
}

/** A ref glob (`refs/heads/tmp/*`, `?`) as a regular expression; `*` crosses `/`. */
export function globToRegExp(glob: string): RegExp {
  const body = glob
    .replace(/[.+^${}()|[\]\\]/g, '\\$&')
    .replace(/\*/g, '.*')
    .replace(/\?/g, '.');
  return new RegExp(`^${body}$`);
}

/**
 * Migrates repositories stage by stage: DISCOVERY (`git ls-remote`), EXPORT (`git clone
 * --mirror`), TRANSFORM (drop host-only refs, exclude, rename), PLAN (diff with the target,
 * refuse non-fast-forward unless forced), APPLY (`git push`), VERIFY (the target has the plan).
 */
export class GitMirrorExecutor implements Executor {
  readonly kind = 'git-mirror' as const;

  constructor(
    private readonly box: SecretBox,
    private readonly options: GitMirrorOptions = {},
  ) {}

  prepareConfig(config: Record<string, unknown> | undefined): Record<string, unknown> {
    if (!validate.Check(config)) {
      const first = [...validate.Errors(config)][0];
      const where = first?.instancePath ? `config${first.instancePath.replaceAll('/', '.')}` : 'config';
      throw new AppError('INVALID_INPUT', `${where} ${first?.message ?? 'is not a git-mirror config'}`);
    }
    // Before anything is stored: a refused address never reaches the database or its WAL.
    for (const [index, repository] of config.repositories.entries()) {
      for (const end of ['source', 'target'] as const) {
        const problem = repositoryAddressProblem(repository[end], {
          allowLocal: this.options.allowLocal ?? false,
          tokenKey: `${end}_token`,
        });
        if (problem) throw new AppError('INVALID_INPUT', `config.repositories[${index}].${end} ${problem}`);
      }
    }
    return this.mapSecrets(config, (secret) => this.box.seal(secret));
  }

  openConfig(config: Record<string, unknown>): Record<string, unknown> {
    return this.mapSecrets(config as Config, (secret) => (isSealed(secret) ? this.box.open(secret) : secret));
  }

  private mapSecrets(config: Config, map: (secret: string) => string): Record<string, unknown> {
    const out: Record<string, unknown> = { ...config };
    for (const key of SECRET_KEYS) if (config[key]) out[key] = map(config[key]);
    out.repositories = config.repositories.map((repository) => {
      const copy: Record<string, unknown> = { ...repository };
      for (const key of SECRET_KEYS) if (repository[key]) copy[key] = map(repository[key]);
      return copy;
    });
    return out;
  }

  async execute(context: ExecutionContext): Promise<void> {
    const config = context.config as Config;
    const repositories: Repository[] = config.repositories.map((repository, index) => ({
      index,
      name: basename(repository.source).replace(/\.git$/, '') || `repository ${index + 1}`,
      source: repository.source,
      target: repository.target,
      sourceAuth: { token: repository.source_token ?? config.source_token, url: repository.source },
      targetAuth: { token: repository.target_token ?? config.target_token, url: repository.target },
      mirror: join(context.workDir, `${index}.git`),
      desired: new Map(),
      plan: [],
      failed: false,
    }));
    const secrets = [
      config.source_token,
      config.target_token,
      ...config.repositories.flatMap((r) => [r.source_token, r.target_token]),
    ].filter((secret): secret is string => typeof secret === 'string' && secret.length > 0);
    const run = new MirrorRun(context, config, repositories, secrets, this.options);
    await run.execute();
  }
}

/** One execution: the state of every repository and the run's counters. */
class MirrorRun {
  private readonly stats: Required<Stats>;
  private stage: Stage = 'DISCOVERY';
  /** The current stage's fraction so far: progress never goes down within a stage. */
  private floor = 0;
  /** Which repository of the stage is being worked on. */
  private position = { index: 0, of: 1 };

  constructor(
    private readonly context: ExecutionContext,
    private readonly config: Config,
    private readonly repositories: Repository[],
    private readonly secrets: string[],
    private readonly options: GitMirrorOptions,
  ) {
    this.stats = {
      repositories: repositories.length,
      repositories_done: 0,
      refs: 0,
      objects: 0,
      bytes: 0,
      errors: 0,
    };
  }

  async execute(): Promise<void> {
    const steps: [Stage, (repository: Repository) => Promise<void>][] = [
      ['DISCOVERY', (r) => this.discover(r)],
      ['EXPORT', (r) => this.export(r)],
      ['TRANSFORM', (r) => this.transform(r)],
      ['PLAN', (r) => this.planRepository(r)],
      ['APPLY', (r) => this.apply(r)],
      ['VERIFY', (r) => this.verify(r)],
    ];
    for (const [stage, step] of steps) {
      this.stage = stage;
      this.floor = 0;
      const live = this.repositories.filter((r) => !r.failed);
      this.log('info', `${stage}: ${live.length} ${live.length === 1 ? 'repository' : 'repositories'}`);
      for (const [position, repository] of live.entries()) {
        this.position = { index: position, of: live.length };
        this.report(position / live.length, `${stage} ${repository.name} (${position + 1}/${live.length})`);
        try {
          await step(repository);
        } catch (err) {
          if (this.context.signal.aborted) throw err;
          this.fail(repository, err);
        }
        this.report(
          (position + 1) / live.length,
          `${stage} ${repository.name} (${position + 1}/${live.length})`,
        );
      }
    }
    const failed = this.repositories.filter((r) => r.failed);
    this.stats.repositories_done = this.repositories.length - failed.length;
    this.context.progress({ stats: { ...this.stats } });
    this.log(
      failed.length ? 'warn' : 'info',
      `done: ${this.stats.repositories_done} of ${this.repositories.length} repositories migrated` +
        (failed.length ? `; failed: ${failed.map((r) => r.name).join(', ')}` : ''),
    );
  }

  // Stages

  private async discover(repository: Repository): Promise<void> {
    const output = await this.git(['ls-remote', '--symref'], [repository.source], {
      auth: repository.sourceAuth,
    });
    const refs = parseRefs(output);
    const head = /^ref: (refs\/\S+)\s+HEAD$/m.exec(output)?.[1];
    this.log(
      'info',
      `${repository.name}: ${refs.size} refs${head ? `, default branch ${head.replace('refs/heads/', '')}` : ''}`,
    );
  }

  private async export(repository: Repository): Promise<void> {
    await this.git(['clone', '--mirror', '--progress'], [repository.source, repository.mirror], {
      auth: repository.sourceAuth,
      progress: 'fetch',
    });
    this.log('info', `${repository.name}: cloned ${redactUrl(repository.source)}`);
  }

  private async transform(repository: Repository): Promise<void> {
    const refs = parseRefs(
      await this.git(['for-each-ref', '--format=%(objectname) %(refname)'], [], { cwd: repository.mirror }),
    );
    const excluded = (this.config.exclude_refs ?? []).map(globToRegExp);
    const renames = this.config.rename_refs ?? {};
    let dropped = 0;
    for (const [ref, sha] of refs) {
      if (
        HOST_ONLY_REFS.some((prefix) => ref.startsWith(prefix)) ||
        excluded.some((pattern) => pattern.test(ref))
      ) {
        dropped++;
        continue;
      }
      const targetRef = renames[ref] ?? ref;
      if (repository.desired.has(targetRef)) {
        throw new ExecutionError(
          'REF_CONFLICT',
          `${repository.name}: two refs would be pushed to ${targetRef}`,
        );
      }
      repository.desired.set(targetRef, { sourceRef: ref, sha });
    }
    this.stats.refs += repository.desired.size;
    const renamed = Object.keys(renames).filter((ref) => refs.has(ref));
    this.log(
      'info',
      `${repository.name}: ${repository.desired.size} refs to migrate, ${dropped} dropped` +
        (renamed.length ? `, renamed ${renamed.map((ref) => `${ref} → ${renames[ref]}`).join(', ')}` : ''),
    );
  }

  private async planRepository(repository: Repository): Promise<void> {
    const existing = parseRefs(
      await this.git(['ls-remote'], [repository.target], { auth: repository.targetAuth }),
    );
    const refused: string[] = [];
    for (const [targetRef, { sourceRef, sha }] of repository.desired) {
      const current = existing.get(targetRef);
      let action: Planned['action'] = 'create';
      let fastForward = true;
      if (current === sha) action = 'unchanged';
      else if (current !== undefined) {
        action = 'update';
        fastForward = await this.isAncestor(repository, current, sha);
        if (!fastForward && !this.config.force) refused.push(targetRef);
      }
      repository.plan.push({ sourceRef, targetRef, sha, action, fastForward });
    }
    if (refused.length > 0) {
      throw new ExecutionError(
        'NON_FAST_FORWARD',
        `${repository.name}: ${refused.length} refs would not fast-forward on the target (set force to overwrite): ${refused.slice(0, 10).join(', ')}`,
        { refs: refused },
      );
    }
    const count = (action: Planned['action']) => repository.plan.filter((p) => p.action === action).length;
    this.log(
      'info',
      `${repository.name}: plan ${count('create')} to create, ${count('update')} to update, ${count('unchanged')} unchanged`,
    );
  }

  private async apply(repository: Repository): Promise<void> {
    const refspecs = repository.plan
      .filter((p) => p.action !== 'unchanged')
      .map((p) => `${p.fastForward ? '' : '+'}${p.sourceRef}:${p.targetRef}`);
    if (refspecs.length === 0) {
      this.log('info', `${repository.name}: target already up to date`);
      return;
    }
    // Batches keep the command line short for repositories with many refs.
    for (let i = 0; i < refspecs.length; i += 500) {
      await this.git(['push', '--progress'], [repository.target, ...refspecs.slice(i, i + 500)], {
        auth: repository.targetAuth,
        progress: 'push',
        cwd: repository.mirror,
      });
    }
    this.log('info', `${repository.name}: pushed ${refspecs.length} refs to ${redactUrl(repository.target)}`);
  }

  private async verify(repository: Repository): Promise<void> {
    await this.options.hooks?.beforeVerify?.({ source: repository.source, target: repository.target });
    const actual = parseRefs(
      await this.git(['ls-remote'], [repository.target], { auth: repository.targetAuth }),
    );
    const mismatches = repository.plan
      .filter((p) => actual.get(p.targetRef) !== p.sha)
      .map((p) => ({ ref: p.targetRef, expected: p.sha, actual: actual.get(p.targetRef) ?? null }));
    if (mismatches.length > 0) {
      throw new ExecutionError(
        'VERIFY_MISMATCH',
        `${repository.name}: ${mismatches.length} refs differ on the target: ${mismatches
          .slice(0, 10)
          .map((m) => m.ref)
          .join(', ')}`,
        { mismatches },
      );
    }
    this.stats.repositories_done += 1;
    this.log('info', `${repository.name}: verified ${repository.plan.length} refs`);
  }

  // Helpers

  private async isAncestor(repository: Repository, ancestor: string, descendant: string): Promise<boolean> {
    try {
      await this.git(['merge-base', '--is-ancestor'], [ancestor, descendant], { cwd: repository.mirror });
      return true;
    } catch (err) {
      if (this.context.signal.aborted) throw err;
      // Not an ancestor, or the target's commit is unknown here: either way not a fast-forward.
      return false;
    }
  }

  /** Runs git with `operands` after `--`; `progress` names the kind of git progress to report. */
  private git(
    args: string[],
    operands: string[],
    { auth, progress, cwd }: { auth?: GitAuth; progress?: 'fetch' | 'push'; cwd?: string } = {},
  ): Promise<string> {
    const splitter = progress ? new GitProgressSplitter() : undefined;
    const position = this.position;
    let phase = { name: '', startedMs: Date.now() };
    return git({
      args,
      operands,
      cwd,
      auth,
      allowLocal: this.options.allowLocal ?? false,
      signal: this.context.signal,
      onStderr: splitter
        ? (chunk) => {
            for (const line of splitter.push(chunk)) {
              const parsed = parseGitProgress(line);
              if (!parsed || !progress) continue;
              const fraction = stageFraction(parsed, progress);
              if (parsed.phase === 'receiving' || parsed.phase === 'writing') {
                this.stats.objects = Math.max(this.stats.objects, parsed.done);
                if (parsed.bytes !== undefined) this.stats.bytes = Math.max(this.stats.bytes, parsed.bytes);
              }
              // Objects per second over the phase so far; git's own rate is in bytes.
              if (parsed.phase !== phase.name) phase = { name: parsed.phase, startedMs: Date.now() };
              const seconds = Math.max(0.001, (Date.now() - phase.startedMs) / 1000);
              const rate = parsed.done / seconds;
              this.report((position.index + fraction) / position.of, undefined, {
                message: line.replace(/^remote:\s*/, '').split(':')[0] ?? null,
                done: parsed.done,
                total: parsed.total ?? null,
                unit: 'objects',
                rate_per_s: Math.round(rate * 10) / 10,
                eta_s:
                  parsed.total !== undefined && rate > 0
                    ? Math.ceil((parsed.total - parsed.done) / rate)
                    : null,
              });
            }
          }
        : undefined,
    }).catch((err: unknown) => {
      if (err instanceof ExecutionError)
        throw new ExecutionError(err.code, this.redact(err.message), err.details);
      throw err;
    });
  }

  /** Reports progress: `fraction` of the current stage, never less than before within it. */
  private report(
    fraction: number,
    currentStage?: string,
    detail?: {
      message: string | null;
      done: number;
      total: number | null;
      unit: string;
      rate_per_s: number | null;
      eta_s: number | null;
    },
  ): void {
    const stages = GIT_MIRROR_STAGES as readonly Stage[];
    const before = stages.slice(0, stages.indexOf(this.stage)).reduce((sum, s) => sum + WEIGHTS[s], 0);
    this.floor = Math.max(this.floor, Math.min(1, fraction));
    const percentage = Math.round((before + WEIGHTS[this.stage] * this.floor) * 10) / 10;
    this.context.progress({
      stage: this.stage,
      ...(currentStage ? { current_stage: currentStage } : {}),
      progress: {
        percentage: Math.min(100, percentage),
        message: detail?.message ?? currentStage ?? this.stage,
        ...(detail
          ? {
              done: detail.done,
              total: detail.total,
              unit: detail.unit,
              rate_per_s: detail.rate_per_s,
              eta_s: detail.eta_s,
            }
          : {}),
      },
      stats: { ...this.stats },
    });
  }

  private fail(repository: Repository, err: unknown): void {
    repository.failed = true;
    this.stats.errors += 1;
    const message = this.redact(err instanceof Error ? err.message : String(err));
    this.log('error', `${repository.name}: ${message}`);
    if (!this.config.continue_on_error) {
      const code = err instanceof ExecutionError ? err.code : 'REPOSITORY_FAILED';
      const details = err instanceof ExecutionError ? err.details : undefined;
      throw new ExecutionError(code, `${this.stage} failed for ${repository.name}: ${message}`, details);
    }
  }

  private log(level: 'info' | 'warn' | 'error', message: string): void {
    this.context.log(level, this.redact(message), this.stage);
  }

  /** A last line of defence: no secret reaches a log or an error, whatever git printed. */
  private redact(text: string): string {
    let out = text;
    for (const secret of this.secrets) out = out.split(secret).join('***');
    return out.replace(/([a-z][a-z0-9+.-]*:\/\/)[^/@\s]+@/gi, '$1***@');
  }
}

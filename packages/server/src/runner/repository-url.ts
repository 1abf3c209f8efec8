import { isAbsolute } from 'node:path';

/** Transports a git-mirror run may use; `file` (local repositories) only behind a setting. */
export const REMOTE_PROTOCOLS = ['https', 'http', 'ssh', 'git'] as const;

/** How git itself reads an address: `scheme://…`, `helper::address`, scp-like `[user@]host:path`, or a path. */
const SCHEME = /^([A-Za-z][A-Za-z0-9+.-]*):\/\//;
const REMOTE_HELPER = /^[A-Za-z0-9][A-Za-z0-9+.-]*::/;
/** `user:password@` at the start of an scp-like address: git would read `user` as the host. */
const SCP_PASSWORD = /^[^@/]*:[^@/]*@/;

export interface RepositoryAddressRules {
  /** Local paths and `file://` URLs are accepted (RUNCAST_GIT_ALLOW_LOCAL). */
  allowLocal: boolean;
  /** The config key that carries this address's token, named when credentials are refused. */
  tokenKey: string;
}

/**
 * Why git must not be given `address`, or undefined when it may. Credentials never travel in
 * an address (they would reach git's argv and the database): an http(s) or git URL takes no
 * user info at all (`https://<token>@host` is a credential too), an ssh one a user name only
 * (`ssh://git@host/…`, `git@host:path`), never a password.
 */
export function repositoryAddressProblem(address: string, rules: RepositoryAddressRules): string | undefined {
  if (/\p{Cc}/u.test(address)) return 'must not contain control characters';
  if (address.startsWith('-')) return "must not start with '-'";
  const credentials = `must not carry credentials; give the token as ${rules.tokenKey}`;
  const scheme = SCHEME.exec(address)?.[1]?.toLowerCase();
  if (scheme !== undefined) return urlProblem(address, scheme, rules, credentials);
  if (REMOTE_HELPER.test(address)) return 'names a git remote helper (`<helper>::`), which is not allowed';
  const colon = address.indexOf(':');
  const slash = address.indexOf('/');
  if (colon !== -1 && (slash === -1 || colon < slash)) {
    // git reads a colon before any slash as ssh's scp-like syntax, `[user@]host:path`.
    if (SCP_PASSWORD.test(address)) return credentials;
    const userAndHost = address.slice(0, colon);
    const host = userAndHost.slice(userAndHost.lastIndexOf('@') + 1);
    if (host === '' || host.startsWith('-')) return 'has no valid host';
    return undefined;
  }
  if (!rules.allowLocal) return 'is a local path; local repositories are not allowed on this server';
  if (!isAbsolute(address)) return 'must be an absolute path';
  return undefined;
}

function urlProblem(
  address: string,
  scheme: string,
  rules: RepositoryAddressRules,
  credentials: string,
): string | undefined {
  const allowed = [...REMOTE_PROTOCOLS, ...(rules.allowLocal ? ['file'] : [])];
  if (!allowed.includes(scheme)) {
    return `uses ${scheme}://; allowed are ${allowed.map((name) => `${name}://`).join(', ')}`;
  }
  let url: URL;
  try {
    url = new URL(address);
  } catch {
    return 'is not a valid URL';
  }
  if (url.password !== '' || (url.username !== '' && scheme !== 'ssh')) return credentials;
  if (url.username.startsWith('-')) return "must not have a user name starting with '-'";
  if (scheme === 'file') return url.host === '' ? undefined : 'must be a file:// URL without a host';
  if (url.hostname === '' || url.hostname.startsWith('-')) return 'has no valid host';
  return undefined;
}

/** `scheme://host[:port]` of an http(s) address, the only place its token may go; else undefined. */
export function httpOrigin(address: string): string | undefined {
  const scheme = SCHEME.exec(address)?.[1]?.toLowerCase();
  if (scheme !== 'https' && scheme !== 'http') return undefined;
  try {
    return new URL(address).origin;
  } catch {
    return undefined;
  }
}

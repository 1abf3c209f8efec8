import { describe, expect, it } from 'vitest';
import { gitEnvironment } from './git.js';

/** The GIT_CONFIG_* entries of an environment, as `key=value` lines. */
function configOf(env: NodeJS.ProcessEnv): string[] {
  return Array.from(
    { length: Number(env.GIT_CONFIG_COUNT ?? 0) },
    (_, i) => `${env[`GIT_CONFIG_KEY_${i}`]}=${env[`GIT_CONFIG_VALUE_${i}`]}`,
  );
}

describe('the environment of git', () => {
  it('allows the remote transports only, follows no redirect', () => {
    const config = configOf(gitEnvironment(undefined));
    expect(config).toEqual([
      'protocol.allow=never',
      'protocol.https.allow=always',
      'protocol.http.allow=always',
      'protocol.ssh.allow=always',
      'protocol.git.allow=always',
      'http.followRedirects=false',
    ]);
  });

  it('allows the file transport where local repositories are allowed', () => {
    expect(configOf(gitEnvironment(undefined, true))).toContain('protocol.file.allow=always');
  });

  it("scopes the token's header to the repository's origin", () => {
    const env = gitEnvironment({ token: 'T0KEN', url: 'https://gitlab.example:8443/group/api.git' });
    const basic = Buffer.from('x-access-token:T0KEN').toString('base64');
    expect(configOf(env)).toContain(
      `http.https://gitlab.example:8443/.extraHeader=Authorization: Basic ${basic}`,
    );
    expect(configOf(env).filter((entry) => entry.includes('extraHeader'))).toHaveLength(1);
  });

  it('sends a token over http(s) only', () => {
    const env = gitEnvironment({ token: 'T0KEN', url: 'ssh://git@gitlab.example/group/api.git' });
    expect(configOf(env).filter((entry) => entry.includes('extraHeader'))).toEqual([]);
  });
});

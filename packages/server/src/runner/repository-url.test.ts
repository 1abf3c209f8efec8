import { describe, expect, it } from 'vitest';
import { httpOrigin, repositoryAddressProblem } from './repository-url.js';

const remoteOnly = { allowLocal: false, tokenKey: 'source_token' };
const withLocal = { allowLocal: true, tokenKey: 'source_token' };

describe('repository addresses', () => {
  it.each([
    'https://gitlab.example/group/api.git',
    'http://127.0.0.1:8080/api.git',
    'git://127.0.0.1:9418/api.git',
    'ssh://git@gitlab.example:2222/group/api.git',
    'ssh://gitlab.example/group/api.git',
    'git@github.com:org/api.git',
    'github.com:org/api.git',
  ])('accepts %s', (address) => {
    expect(repositoryAddressProblem(address, remoteOnly)).toBeUndefined();
  });

  it.each([
    ['http://user:SECRET@host/repo.git', 'must not carry credentials; give the token as source_token'],
    ['https://SECRET@host/repo.git', 'must not carry credentials'],
    ['git://user@host/repo.git', 'must not carry credentials'],
    ['ssh://git:SECRET@host/repo.git', 'must not carry credentials'],
    ['git:SECRET@host:org/repo.git', 'must not carry credentials'],
    ['-upload-pack=touch /tmp/pwned', "must not start with '-'"],
    ['--upload-pack=touch /tmp/pwned', "must not start with '-'"],
    ['ssh://-oProxyCommand=touch%20x/repo.git', 'has no valid host'],
    ['ssh://-oProxyCommand=x@host/repo.git', "must not have a user name starting with '-'"],
    [':org/repo.git', 'has no valid host'],
    ['ext::sh -c touch% /tmp/pwned', 'remote helper'],
    ['ftp://host/repo.git', 'uses ftp://; allowed are https://, http://, ssh://, git://'],
    ['https://host/repo.git\n', 'control characters'],
    ['/srv/git/repo.git', 'is a local path'],
    ['repo.git', 'is a local path'],
    ['file:///srv/git/repo.git', 'uses file://'],
  ])('refuses %j: %s', (address, problem) => {
    expect(repositoryAddressProblem(address, remoteOnly)).toContain(problem);
  });

  it('accepts absolute local paths and file:// URLs only where local repositories are allowed', () => {
    expect(repositoryAddressProblem('/srv/git/repo.git', withLocal)).toBeUndefined();
    expect(repositoryAddressProblem('file:///srv/git/repo.git', withLocal)).toBeUndefined();
    expect(repositoryAddressProblem('repo.git', withLocal)).toBe('must be an absolute path');
    expect(repositoryAddressProblem('file://server/srv/repo.git', withLocal)).toContain('without a host');
    expect(repositoryAddressProblem('-/srv/repo.git', withLocal)).toBe("must not start with '-'");
  });

  it('names the origin of http(s) addresses only', () => {
    expect(httpOrigin('https://Gitlab.Example:443/group/api.git')).toBe('https://gitlab.example');
    expect(httpOrigin('http://127.0.0.1:8080/api.git')).toBe('http://127.0.0.1:8080');
    expect(httpOrigin('ssh://git@gitlab.example/group/api.git')).toBeUndefined();
    expect(httpOrigin('git@github.com:org/api.git')).toBeUndefined();
  });
});

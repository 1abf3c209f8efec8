import { type AnchorHTMLAttributes, type MouseEvent, useSyncExternalStore } from 'react';

import { BASE_PATH } from './config.js';

const CHANGE = 'runcast:navigate';

/** The address of an app path (`/runs/…`) under the path the server is mounted at. */
const href = (to: string) => `${BASE_PATH}${to}`;

function subscribe(onChange: () => void): () => void {
  window.addEventListener('popstate', onChange);
  window.addEventListener(CHANGE, onChange);
  return () => {
    window.removeEventListener('popstate', onChange);
    window.removeEventListener(CHANGE, onChange);
  };
}

/** The current app path, without the base path (client-side routing over the History API). */
export function usePath(): string {
  return useSyncExternalStore(
    subscribe,
    () => {
      const path = window.location.pathname;
      const app = path.startsWith(BASE_PATH) ? path.slice(BASE_PATH.length) : path;
      return (app || '/') + window.location.search;
    },
    () => '/',
  );
}

export function navigate(to: string, replace = false): void {
  if (replace) window.history.replaceState(null, '', href(to));
  else window.history.pushState(null, '', href(to));
  window.dispatchEvent(new Event(CHANGE));
}

/** Parameters of `path` when it matches `pattern` (`/runs/:run_id`), else undefined. */
export function match(pattern: string, path: string): Record<string, string> | undefined {
  const pathname = path.split('?')[0] ?? '';
  const want = pattern.split('/');
  const have = pathname.replace(/\/$/, '').split('/');
  if (want.length !== have.length) return undefined;
  const params: Record<string, string> = {};
  for (let i = 0; i < want.length; i++) {
    const w = want[i] ?? '';
    const h = have[i] ?? '';
    if (w.startsWith(':')) params[w.slice(1)] = decodeURIComponent(h);
    else if (w !== h) return undefined;
  }
  return params;
}

/** An anchor that navigates without reloading the page. */
export function Link({
  href: to,
  onClick,
  ...rest
}: AnchorHTMLAttributes<HTMLAnchorElement> & { href: string }) {
  const handle = (event: MouseEvent<HTMLAnchorElement>) => {
    onClick?.(event);
    if (event.defaultPrevented || event.metaKey || event.ctrlKey || event.shiftKey || event.button !== 0)
      return;
    event.preventDefault();
    navigate(to);
  };
  return <a href={href(to)} onClick={handle} {...rest} />;
}

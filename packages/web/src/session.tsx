import type { LoginResponse, Me, User } from '@runcast/protocol';
import { createContext, type ReactNode, useCallback, useContext, useEffect, useState } from 'react';
import { api, setToken } from './api.js';

interface Session {
  /** undefined while loading, null when logged out. */
  user: User | null | undefined;
  login(username: string, password: string): Promise<void>;
  logout(): Promise<void>;
  /** The server refused the session (expired, logged out elsewhere): back to the login page. */
  signedOut(): void;
}

const SessionContext = createContext<Session | undefined>(undefined);

/** Holds who is logged in: asks `/auth/me` once (the cookie may already carry a session). */
export function SessionProvider({ children }: { children: ReactNode }) {
  const [user, setUser] = useState<User | null | undefined>(undefined);
  useEffect(() => {
    api<Me>('GET', '/auth/me').then(
      (me) => setUser(me.user),
      () => setUser(null),
    );
  }, []);
  const login = useCallback(async (username: string, password: string) => {
    const answer = await api<LoginResponse>('POST', '/auth/login', { username, password });
    setToken(answer.token);
    setUser(answer.user);
  }, []);
  const logout = useCallback(async () => {
    await api('POST', '/auth/logout').catch(() => undefined);
    setToken(undefined);
    setUser(null);
  }, []);
  const signedOut = useCallback(() => {
    setToken(undefined);
    setUser(null);
  }, []);
  return (
    <SessionContext.Provider value={{ user, login, logout, signedOut }}>{children}</SessionContext.Provider>
  );
}

export function useSession(): Session {
  const session = useContext(SessionContext);
  if (!session) throw new Error('useSession outside SessionProvider');
  return session;
}

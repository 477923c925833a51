import { StrictMode } from 'react';
import { createRoot } from 'react-dom/client';
import { QueryClient, QueryClientProvider } from '@tanstack/react-query';
import { PgsseProvider } from 'pgsse-client/react';
import { notificationsApi, signIn } from './api';
import { Bell } from './Bell';
import { List } from './List';
import { Status } from './Status';

const queryClient = new QueryClient({ defaultOptions: { queries: { retry: 1 } } });
const api = notificationsApi(new URLSearchParams(window.location.search).get('live') === 'refetch' ? 'refetch' : 'patch');

function App() {
  return (
    <>
      <header>
        <strong>pgsse + React</strong>
        <Bell />
        <Status />
      </header>
      <main>
        <List />
      </main>
    </>
  );
}

const root = document.getElementById('root');
if (!root) throw new Error('no #root');
void signIn().then(() =>
  createRoot(root).render(
  <StrictMode>
    <QueryClientProvider client={queryClient}>
      <PgsseProvider api={api}>
        <App />
      </PgsseProvider>
    </QueryClientProvider>
    </StrictMode>,
  ),
);

// The demo page of `pgsse demo`, as a newcomer uses it: every kind of change shows up live.
// Env: DEMO_URL (the URL the demo printed). Steps: `insert` (the test inserts a row for alice by SQL,
// titled "Inserted with SQL").
import { main, waitFor, check, step, watchConsole, log } from './lib.mjs';

const url = process.env.DEMO_URL;
if (!url) throw new Error('DEMO_URL is not set');

const row = (title) => `[...document.querySelectorAll('#list li')].find((li) => li.querySelector('.title').textContent === ${JSON.stringify(title)})`;
const logHas = (type, text) =>
  `[...document.querySelectorAll('#log li[data-type="${type}"]')].some((li) => li.textContent.includes(${JSON.stringify(text)}))`;
const unread = () => `Number(document.querySelector('#unread').textContent)`;

async function clickIn(page, title, action) {
  await page.locator('#list li', { has: page.locator('.title', { hasText: title }) }).locator(`button[data-action="${action}"]`).click();
}

await main('demo-page', async (context, notes) => {
  const page = await context.newPage();
  watchConsole(page, notes);
  await page.goto(url);
  await waitFor(page, 'the stream is open', () => document.querySelector('#status').dataset.status === 'open');
  await waitFor(page, 'signed in as alice', () => document.querySelector('#user').textContent === 'alice');
  await waitFor(page, 'the first list fetch', () => [...document.querySelectorAll('#log li')].some((li) => li.dataset.type === 'refetch'));

  // A second tab of the same user sees the same changes.
  const other = await context.newPage();
  watchConsole(other, notes);
  await other.goto(url);
  await waitFor(other, 'second tab open', () => document.querySelector('#status').dataset.status === 'open');

  const before = await page.evaluate(unread());
  // created
  await page.fill('#title', 'Made in the browser');
  await page.fill('#message', 'by the test');
  await page.click('#create');
  await waitFor(page, 'the created row in the list', `!!${row('Made in the browser')}`);
  await waitFor(page, 'a created entry in the log', logHas('created', 'Made in the browser'));
  await waitFor(page, 'unread count +1', `${unread()} === ${before + 1}`);
  await waitFor(other, 'the created row in the second tab', `!!${row('Made in the browser')}`);
  log('created: ok');

  // created, by someone else (the psql line)
  await step('insert');
  await waitFor(page, 'the row inserted with SQL', `!!${row('Inserted with SQL')}`);
  await waitFor(page, 'unread count +2', `${unread()} === ${before + 2}`);
  log('inserted by SQL: ok');

  // updated
  page.once('dialog', (d) => d.accept('Edited in the browser'));
  await clickIn(page, 'Made in the browser', 'edit');
  await waitFor(page, 'the new title', `!!${row('Edited in the browser')} && !${row('Made in the browser')}`);
  await waitFor(page, 'an updated entry in the log', logHas('updated', 'Edited in the browser'));
  await waitFor(other, 'the new title in the second tab', `!!${row('Edited in the browser')}`);
  log('updated: ok');

  // read
  await clickIn(page, 'Edited in the browser', 'read');
  await waitFor(page, 'the row marked read', `${row('Edited in the browser')}?.classList.contains('read')`);
  await waitFor(page, 'a read entry in the log', `[...document.querySelectorAll('#log li[data-type="read"]')].length >= 1`);
  await waitFor(page, 'unread count -1', `${unread()} === ${before + 1}`);
  await waitFor(other, 'read in the second tab', `${row('Edited in the browser')}?.classList.contains('read')`);
  log('read: ok');

  // deleted
  await clickIn(page, 'Edited in the browser', 'delete');
  await waitFor(page, 'the row gone', `!${row('Edited in the browser')}`);
  await waitFor(page, 'a deleted entry in the log', `[...document.querySelectorAll('#log li[data-type="deleted"]')].length >= 1`);
  await waitFor(other, 'gone in the second tab', `!${row('Edited in the browser')}`);
  log('deleted: ok');

  // read-all: one statement, one read event per row
  await page.click('#read-all');
  await waitFor(page, 'nothing unread', `${unread()} === 0`);
  await waitFor(page, 'the SQL row marked read', `${row('Inserted with SQL')}?.classList.contains('read')`);
  log('read all: ok');

  // A notification for bob does not reach alice's tabs, and bob sees it after switching.
  await page.fill('#title', 'For bob only');
  await page.selectOption('#to', 'bob');
  await page.click('#create');
  await page.click('#users button[data-user="bob"]');
  await waitFor(page, 'signed in as bob', () => document.querySelector('#user').textContent === 'bob');
  await waitFor(page, "bob's row after the refetch", `!!${row('For bob only')}`);
  await waitFor(page, 'open as bob', () => document.querySelector('#status').dataset.status === 'open');
  check(!(await other.evaluate(`!!${row('For bob only')}`)), "alice's other tab must not get bob's row");
  log('per-user: ok');

  // Signing out: the stream answers 401 and the page says so and polls.
  await page.click('#logout');
  await waitFor(page, 'degraded status', () => document.querySelector('#status').dataset.degraded === 'true');
  const reason = await page.textContent('#status-reason');
  check(/401/.test(reason), `the status explains the 401, got: ${reason}`);
  log(`signed out: ok (${reason})`);
});

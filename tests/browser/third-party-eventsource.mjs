// The stream read by a third-party client: the `eventsource` npm package (a WHATWG-conformant
// EventSource for node). Every event must be a named one whose data is JSON; an unnamed
// `message` event (e.g. from a block holding only `retry:`) is a failure.
// Env: GATEWAY_URL, TOKEN. Prints one JSON line {counts, problems}; exit 0 once it saw
// connected, 2 notifications and a heartbeat.
import { EventSource } from 'eventsource';

const url = `${process.env.GATEWAY_URL}/api/notifications/stream?access_token=${process.env.TOKEN}`;
const counts = {};
const problems = [];
const es = new EventSource(url);
const finish = (code) => {
  es.close();
  process.stdout.write(`${JSON.stringify({ counts, problems })}\n`);
  process.exit(code);
};
setTimeout(() => finish(1), 30000);
es.onmessage = (e) => problems.push(`an unnamed message event: ${JSON.stringify(e.data)}`);
es.onerror = (e) => problems.push(`error: ${e.message ?? e.type}`);
for (const name of ['connected', 'notification', 'heartbeat', 'reset']) {
  es.addEventListener(name, (e) => {
    counts[name] = (counts[name] ?? 0) + 1;
    try {
      JSON.parse(e.data);
    } catch {
      problems.push(`${name}: data is not JSON: ${JSON.stringify(e.data)}`);
    }
    if (!e.lastEventId) problems.push(`${name}: no id`);
    if (counts.connected >= 1 && counts.notification >= 2 && counts.heartbeat >= 1) finish(0);
  });
}
